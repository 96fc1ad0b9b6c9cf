"""Compare-and-set key-value storage: what the allocators need (JetStream KV in production).

Both allocators of the control plane sit on it: the identity service's (security identities,
:mod:`services.identity.allocator`) and the lb service's (service and backend ids, ClusterIPs,
NodePorts, :mod:`services.lb.ids`). Two replicas racing for one key never both win: a key is
created only if absent, and deleted only at the revision the caller read.
"""

from __future__ import annotations

from typing import Protocol

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue


class KvStore(Protocol):
    """Compare-and-set storage of byte values under string keys."""

    async def create(self, key: str, value: bytes) -> bool:
        """Create ``key`` if absent; False if it exists."""

    async def get(self, key: str) -> tuple[bytes, int] | None:
        """Value and revision, or None."""

    async def delete(self, key: str, revision: int | None = None) -> bool:
        """Delete ``key`` if its revision is still ``revision`` (any when None)."""

    async def keys(self) -> list[str]: ...


class JetStreamStore:
    """:class:`KvStore` over a JetStream KV bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def create(self, key: str, value: bytes) -> bool:
        try:
            await self.kv.create(key, value)
            return True
        except KeyWrongLastSequenceError:
            return False

    async def get(self, key: str) -> tuple[bytes, int] | None:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        return entry.value, entry.revision

    async def delete(self, key: str, revision: int | None = None) -> bool:
        try:
            await self.kv.delete(key, last=revision)
            return True
        except KeyWrongLastSequenceError:
            return False

    async def keys(self) -> list[str]:
        try:
            return list(await self.kv.keys())
        except NoKeysError:
            return []
