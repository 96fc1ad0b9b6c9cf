"""What every CLI command needs: where the bus is, the state directory, output helpers."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from services.common import roles
from services.common.bus import Bus, Delivery
from services.common.busconfig import BusConfig
from services.common.errors import CiliaError
from services.common.paths import state_root
from services.common.tracing import setup_tracing, shutdown_tracing

T = TypeVar("T")


class CliContext(BusConfig):
    """The bus and state directory of one ``cilia`` invocation (see :class:`BusConfig`)."""

    def run(self, fn: Callable[[Bus], Awaitable[T]], service: str = "cilia-cli",
            role: str = roles.CLI) -> T:
        """Connect as ``role`` (default: the read-only ``cli``), run ``fn(bus)``, close; bus
        errors become a clean CLI error."""

        async def main() -> T:
            url, creds = self.endpoint(role)
            bus = await Bus.connect(url, service, timeout=3.0, creds=creds)
            try:
                return await fn(bus)
            finally:
                await bus.close()

        return run_async(main())


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    setup_tracing("cilia-cli")
    try:
        return asyncio.run(coro)
    except CiliaError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        shutdown_tracing()


async def read_history(bus: Bus, filters: list[str]) -> list[Delivery]:
    """Every stored event matching ``filters``, in stream order (bad ones skipped silently)."""
    events: list[Delivery] = []

    async def keep(d: Delivery) -> None:
        events.append(d)

    sub = await bus.consume(filters, keep, name="history", report=False)
    try:
        await sub.caught_up.wait()
    finally:
        await sub.stop()
    return events


pass_ctx = click.make_pass_decorator(CliContext)

output_option = click.option("-o", "--output", type=click.Choice(["table", "json"]),
                             default="table", show_default=True, help="output format")


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def default_state_dir() -> Path:
    return state_root()
