"""What every CLI command needs: where the bus is, the state directory, output helpers."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from services.common.bus import NATS_URL_ENV, Bus, nats_url
from services.common.errors import CiliaError
from services.common.tracing import setup_tracing, shutdown_tracing

STATE_DIR_ENV = "CILIA_STATE_DIR"
DEFAULT_STATE_DIR = "/var/lib/cilia"
CONTROL_PLANE_FILE = "up.json"

T = TypeVar("T")


@dataclass
class CliContext:
    explicit_url: str | None
    state_dir: Path

    @property
    def control_plane_file(self) -> Path:
        return self.state_dir / CONTROL_PLANE_FILE

    def url(self) -> str:
        """``--nats-url``/``$CILIA_NATS_URL``, else the one ``cilia up`` recorded, else default."""
        if self.explicit_url or os.environ.get(NATS_URL_ENV):
            return nats_url(self.explicit_url)
        try:
            recorded = json.loads(self.control_plane_file.read_text()).get("nats_url")
        except (OSError, ValueError):
            recorded = None
        return nats_url(recorded)

    def run(self, fn: Callable[[Bus], Awaitable[T]], service: str = "cilia-cli") -> T:
        """Connect, run ``fn(bus)``, close; bus errors become a clean CLI error."""

        async def main() -> T:
            bus = await Bus.connect(self.url(), service, timeout=3.0)
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


pass_ctx = click.make_pass_decorator(CliContext)

output_option = click.option("-o", "--output", type=click.Choice(["table", "json"]),
                             default="table", show_default=True, help="output format")


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV, DEFAULT_STATE_DIR))
