"""A bus secured exactly as ``cilia up`` secures it (TLS, one nkey user per role), without
services: for tests of who may say what."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.cli import controlplane
from services.common.bus import Bus
from services.common.buscreds import BusAccess, Credentials
from services.common.bussecrets import BusSecrets
from services.common.embedded import free_port


@dataclass(frozen=True)
class SecuredBus:
    url: str
    access: BusAccess
    state_dir: Path

    @property
    def secrets(self) -> BusSecrets:
        return BusSecrets(self.state_dir / "bus")

    def creds(self, role: str) -> Credentials:
        return self.access.credentials(role)

    def env(self, role: str) -> dict[str, str]:
        return controlplane.role_env(self.url, self.access, role)

    async def connect(self, role: str, name: str = "test") -> Bus:
        return await Bus.connect(self.url, name, creds=self.creds(role))


@contextmanager
def secured_bus(nodes: Sequence[str] = ()) -> Iterator[SecuredBus]:
    """`cilia up` with no services (its bus, history stream and KV buckets), plus the agent
    users of ``nodes`` added the way `cilia lab up` adds them (reloading the server)."""
    state = Path(tempfile.mkdtemp(prefix="cilia-secbus-"))
    try:
        up = controlplane.up(state, None, port=free_port(), services=())
        try:
            access = BusAccess.from_json(up["bus"])
            assert access is not None
            controlplane.add_node_roles(state, up["nats_url"], access, list(nodes))
            yield SecuredBus(up["nats_url"], access, state)
        finally:
            controlplane.down(state)
    finally:
        shutil.rmtree(state, ignore_errors=True)
