"""What every CLI command needs: where the bus is, the state directory, output helpers."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import click

from services.common import roles
from services.common.bus import NATS_URL_ENV, Bus, nats_url
from services.common.buscreds import BusAccess, Credentials
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
    explicit_access: BusAccess | None = None    # --creds/--tlsca/--tlscert/--tlskey

    @property
    def control_plane_file(self) -> Path:
        return self.state_dir / CONTROL_PLANE_FILE

    def _recorded(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.control_plane_file.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def url(self) -> str:
        """``--nats-url``/``$CILIA_NATS_URL``, else the one ``cilia up`` recorded, else default."""
        if self.explicit_url or os.environ.get(NATS_URL_ENV):
            return nats_url(self.explicit_url)
        return nats_url(self._recorded().get("nats_url"))

    def access(self) -> BusAccess | None:
        """The bus's credentials and TLS files: what ``cilia up`` recorded for the bus in use,
        each overridden by the options (or ``$CILIA_NATS_*``); None for an open bus."""
        explicit = self.explicit_access or BusAccess.from_env()
        recorded = self._recorded()
        base = (BusAccess.from_json(recorded.get("bus"))
                if recorded.get("nats_url") == self.url() else None)
        if base is None or explicit is None:
            return explicit or base
        return replace(base, **{k: v for k, v in explicit.to_json().items() if v})

    def credentials(self, role: str) -> Credentials:
        """The credentials of ``role`` on the bus in use.

        Raises:
            BusError: the credentials directory has none for the role.
        """
        access = self.access()
        return access.credentials(role) if access else Credentials(role=role)

    def role_env(self, role: str) -> dict[str, str]:
        """The environment of a process this command starts that runs as ``role``."""
        return {NATS_URL_ENV: self.url(), **self.credentials(role).env()}

    def run(self, fn: Callable[[Bus], Awaitable[T]], service: str = "cilia-cli",
            role: str = roles.CLI) -> T:
        """Connect as ``role`` (default: the read-only ``cli``), run ``fn(bus)``, close; bus
        errors become a clean CLI error."""

        async def main() -> T:
            bus = await Bus.connect(self.url(), service, timeout=3.0,
                                    creds=self.credentials(role))
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
