"""Stable numbers for services, backends, ClusterIPs and NodePorts: KV compare-and-set.

One bucket (``cilia-lb-ids``), two keys per allocation, as the identity allocator does:

- ``<kind>.n.<number>`` reserves a number for one owner (create-if-absent, so two replicas
  never hand one number to two owners);
- ``<kind>.o.<owner>`` points an owner at its number (create-if-absent too; a replica that
  loses that race takes the winner's number and gives its own reservation back).

Kinds: ``svc`` (service ids, owner ``ns/name``), ``be`` (backend ids, owner ``ip:port/proto``),
``cip`` (ClusterIPs as integers, owner ``ns/name``), ``np`` (NodePorts, owner
``ns/name/port``). A number asked for explicitly (``spec.clusterIP``, ``nodePort``) is claimed
for the owner, and is a conflict when another owner holds it.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

import msgpack

from services.common.kvstore import KvStore
from services.lb.errors import AllocationError
from services.lb.model import NODEPORT_MAX, NODEPORT_MIN, SERVICE_CIDR

MAX_ATTEMPTS = 64
SERVICE_ID_MIN, SERVICE_ID_MAX = 1, 65535      # u16 in Cilium's rev NAT index
BACKEND_ID_MIN, BACKEND_ID_MAX = 1, (1 << 31) - 1
# Reserved at the bottom of the service CIDR (network address, the API server's .1).
CIDR_RESERVED_LOW = 2


def _token(owner: str) -> str:
    """An owner as a KV key token (``/`` and ``:`` are not allowed in keys)."""
    return owner.replace("/", "=").replace(":", "_")


@dataclass(frozen=True)
class Pool:
    kind: str
    low: int
    high: int


SERVICES = Pool("svc", SERVICE_ID_MIN, SERVICE_ID_MAX)
BACKENDS = Pool("be", BACKEND_ID_MIN, BACKEND_ID_MAX)
NODEPORTS = Pool("np", NODEPORT_MIN, NODEPORT_MAX)


def cluster_ip_pool(cidr: ipaddress.IPv4Network = SERVICE_CIDR) -> Pool:
    base = int(cidr.network_address)
    return Pool("cip", base + CIDR_RESERVED_LOW, int(cidr.broadcast_address) - 1)


class LbIds:
    """The lb service's allocations over a compare-and-set store."""

    def __init__(self, store: KvStore, rng: random.Random | None = None) -> None:
        self.store = store
        self.rng = rng or random.Random()
        self.conflicts = 0
        # owner -> number for allocations this process made or confirmed: an owner keeps its
        # number until released (which goes through this object), so reconciling a known
        # Service costs no KV round trip.
        self._known: dict[tuple[str, str], int] = {}

    def _num_key(self, pool: Pool, num: int) -> str:
        return f"{pool.kind}.n.{num}"

    def _owner_key(self, pool: Pool, owner: str) -> str:
        return f"{pool.kind}.o.{_token(owner)}"

    async def owner_of(self, pool: Pool, num: int) -> str | None:
        got = await self.store.get(self._num_key(pool, num))
        return None if got is None else str(msgpack.unpackb(got[0])["owner"])

    async def number_of(self, pool: Pool, owner: str) -> int | None:
        got = await self.store.get(self._owner_key(pool, owner))
        return None if got is None else int(msgpack.unpackb(got[0])["n"])

    async def allocate(self, pool: Pool, owner: str, want: int | None = None) -> int:
        """The number of ``owner`` in ``pool``: its existing one, ``want`` if given, or a
        random free one.

        Raises:
            AllocationError: ``want`` belongs to another owner, or the pool is exhausted.
        """
        known = self._known.get((pool.kind, owner))
        if known is not None and (want is None or want == known):
            return known
        num = await self._allocate(pool, owner, want)
        self._known[(pool.kind, owner)] = num
        return num

    async def _allocate(self, pool: Pool, owner: str, want: int | None) -> int:
        current = await self.number_of(pool, owner)
        if current is not None and (want is None or want == current):
            return current
        if want is not None:
            holder = await self.owner_of(pool, want)
            if holder is not None and holder != owner:
                self.conflicts += 1
                raise AllocationError(f"{pool.kind} {self.show(pool, want)} is already "
                                      f"allocated to {holder}")
            if holder is None and not await self._reserve(pool, want, owner):
                self.conflicts += 1
                raise AllocationError(f"{pool.kind} {self.show(pool, want)} was just "
                                      f"allocated to {await self.owner_of(pool, want)}")
            if current is not None:
                await self._delete(self._num_key(pool, current), owner)
                await self._delete(self._owner_key(pool, owner), None)
            if not await self.store.create(self._owner_key(pool, owner),
                                           msgpack.packb({"n": want})):
                # a replica pointed the owner elsewhere meanwhile; take its choice
                await self._delete(self._num_key(pool, want), owner)
                winner = await self.number_of(pool, owner)
                if winner is None:
                    raise AllocationError(f"{pool.kind} of {owner} changed while allocating")
                return winner
            return want
        for _ in range(MAX_ATTEMPTS):
            num = self.rng.randint(pool.low, pool.high)
            if not await self._reserve(pool, num, owner):
                self.conflicts += 1
                continue
            if await self.store.create(self._owner_key(pool, owner), msgpack.packb({"n": num})):
                return num
            self.conflicts += 1
            await self._delete(self._num_key(pool, num), owner)
            winner = await self.number_of(pool, owner)
            if winner is not None:
                return winner
        raise AllocationError(f"no free {pool.kind} for {owner} after {MAX_ATTEMPTS} attempts")

    async def _reserve(self, pool: Pool, num: int, owner: str) -> bool:
        if not pool.low <= num <= pool.high:
            raise AllocationError(f"{pool.kind} {self.show(pool, num)} is outside "
                                  f"{self.show(pool, pool.low)}-{self.show(pool, pool.high)}")
        return await self.store.create(self._num_key(pool, num),
                                       msgpack.packb({"owner": owner}))

    async def _delete(self, key: str, owner: str | None) -> None:
        """Delete ``key`` at the revision read, and only if ``owner`` (when given) holds it."""
        got = await self.store.get(key)
        if got is None:
            return
        if owner is not None and msgpack.unpackb(got[0]).get("owner") != owner:
            return
        await self.store.delete(key, got[1])

    async def release(self, pool: Pool, owner: str) -> None:
        """Give back the owner's number (a replica racing a new owner never loses its keys)."""
        self._known.pop((pool.kind, owner), None)
        num = await self.number_of(pool, owner)
        if num is None:
            return
        await self._delete(self._num_key(pool, num), owner)
        await self._delete(self._owner_key(pool, owner), None)

    async def owned(self, pool: Pool) -> dict[str, int]:
        """Every owner of the pool with its number."""
        out: dict[str, int] = {}
        prefix = f"{pool.kind}.n."
        for key in await self.store.keys():
            if key.startswith(prefix):
                got = await self.store.get(key)
                if got is not None:
                    out[str(msgpack.unpackb(got[0])["owner"])] = int(key[len(prefix):])
        return out

    @staticmethod
    def show(pool: Pool, num: int) -> str:
        return str(ipaddress.IPv4Address(num)) if pool.kind == "cip" else str(num)
