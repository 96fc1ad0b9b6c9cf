"""Which bus a process joins, and with which credentials.

In order: what the caller was told explicitly (options), the environment (``$CILIA_NATS_URL``
and ``$CILIA_NATS_*``, :class:`~services.common.buscreds.BusAccess`), else what ``cilia up``
recorded in the state directory (``up.json``: the bus's URL and its credentials directory).
The CLI answers every command this way, and so does the lab's kubelet for the processes it
starts that join the bus (the cluster DNS pods).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from services.common.bus import NATS_URL_ENV, nats_url
from services.common.buscreds import BusAccess, Credentials
from services.common.paths import read_json

CONTROL_PLANE_FILE = "up.json"     # what `cilia up` started, in the state directory


@dataclass
class BusConfig:
    """Where the bus is for a state directory, and the credentials of each role on it."""

    explicit_url: str | None
    state_dir: Path
    explicit_access: BusAccess | None = None    # --creds/--tlsca/--tlscert/--tlskey

    @property
    def control_plane_file(self) -> Path:
        return self.state_dir / CONTROL_PLANE_FILE

    def _recorded(self) -> dict[str, Any]:
        return read_json(self.control_plane_file) or {}

    def _url(self, recorded: dict[str, Any] | None) -> str:
        if self.explicit_url or os.environ.get(NATS_URL_ENV):
            return nats_url(self.explicit_url)
        return nats_url((recorded if recorded is not None else self._recorded()).get("nats_url"))

    def url(self) -> str:
        """``--nats-url``/``$CILIA_NATS_URL``, else the one ``cilia up`` recorded, else default."""
        return self._url(None)

    def access(self) -> BusAccess | None:
        """The bus's credentials and TLS files: what ``cilia up`` recorded for the bus in use,
        each overridden by the options (or ``$CILIA_NATS_*``); None for an open bus."""
        return self._access(self._recorded())

    def _access(self, recorded: dict[str, Any]) -> BusAccess | None:
        explicit = self.explicit_access or BusAccess.from_env()
        base = (BusAccess.from_json(recorded.get("bus"))
                if recorded.get("nats_url") == self._url(recorded) else None)
        if base is None or explicit is None:
            return explicit or base
        return replace(base, **{k: v for k, v in explicit.to_json().items() if v})

    def endpoint(self, role: str) -> tuple[str, Credentials]:
        """The bus's URL and ``role``'s credentials on it, from one read of the record.

        Raises:
            BusError: the credentials directory has none for the role.
        """
        recorded = self._recorded()
        access = self._access(recorded)
        return (self._url(recorded),
                access.credentials(role) if access else Credentials(role=role))

    def credentials(self, role: str) -> Credentials:
        """The credentials of ``role`` on the bus in use.

        Raises:
            BusError: the credentials directory has none for the role.
        """
        return self.endpoint(role)[1]

    def role_env(self, role: str) -> dict[str, str]:
        """The environment of a process this one starts that runs as ``role``."""
        url, creds = self.endpoint(role)
        return {NATS_URL_ENV: url, **creds.env()}
