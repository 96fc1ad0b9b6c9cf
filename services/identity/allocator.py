"""Identity allocation with compare-and-set, safe with several replicas.

Two kinds of keys in the store (a :class:`~services.common.kvstore.KvStore`; Cilium's kvstore
allocator has the same shape):

- ``id.<n>``: reserves number ``n``; created with create-if-absent, so two replicas can never
  both own one number;
- ``labels.<digest>``: the master key of a label set, pointing to its number; also
  create-if-absent, so one label set never gets two numbers. A replica that loses that race
  takes the winner's number and gives its own reservation back.

Numbers are drawn at random from the free part of the cluster range, as Cilium does, so that
replicas rarely contend for the same one.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import msgpack

from services.common.identities import MAX_CLUSTER_ID, MIN_CLUSTER_ID
from services.common.kvstore import KvStore
from services.common.labels import Labels
from services.identity.errors import IdentitySpaceExhausted

ID_PREFIX = "id."
LABELS_PREFIX = "labels."
MAX_ATTEMPTS = 64   # candidate numbers tried before giving up on one label set


@dataclass(frozen=True)
class Allocation:
    id: int
    labels: Labels
    new: bool   # True if this call created the number


class Allocator:
    """Maps label sets to numbers in ``[MIN_CLUSTER_ID, MAX_CLUSTER_ID]``."""

    def __init__(self, store: KvStore, low: int = MIN_CLUSTER_ID,
                 high: int = MAX_CLUSTER_ID, rng: random.Random | None = None) -> None:
        self.store = store
        self.low, self.high = low, high
        self._used: set[int] = set()
        self._by_digest: dict[str, int] = {}
        self._inflight: dict[str, asyncio.Future[Allocation]] = {}
        self._rng = rng or random.Random()
        self.conflicts = 0

    async def load(self) -> dict[int, Labels]:
        """Learn the numbers in use from the store; returns number -> labels."""
        found: dict[int, Labels] = {}
        for key in await self.store.keys():
            if key.startswith(ID_PREFIX):
                got = await self.store.get(key)
                if got is None:
                    continue
                num = int(key[len(ID_PREFIX):])
                self._used.add(num)
                labels = Labels.parse(msgpack.unpackb(got[0])["labels"])
                found[num] = labels
        return found

    async def allocate(self, labels: Labels) -> Allocation:
        """The number of ``labels``, allocating one if the set has none yet."""
        digest = labels.digest()
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Allocation] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = fut
        try:
            result = await self._allocate(labels, digest)
            fut.set_result(result)
            return result
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._inflight[digest]

    async def lookup(self, labels: Labels) -> int | None:
        got = await self.store.get(LABELS_PREFIX + labels.digest())
        return None if got is None else int(msgpack.unpackb(got[0])["id"])

    async def _allocate(self, labels: Labels, digest: str) -> Allocation:
        master = LABELS_PREFIX + digest
        got = await self.store.get(master)
        if got is not None:
            num = int(msgpack.unpackb(got[0])["id"])
            self._used.add(num)
            return Allocation(num, labels, new=False)
        strings = labels.strings()
        for _ in range(MAX_ATTEMPTS):
            num = self._candidate()
            self._used.add(num)
            if not await self.store.create(f"{ID_PREFIX}{num}",
                                           msgpack.packb({"labels": strings, "digest": digest})):
                self.conflicts += 1
                continue
            if await self.store.create(master, msgpack.packb({"id": num})):
                return Allocation(num, labels, new=True)
            # Another replica gave this label set a number first: use it, return ours.
            self.conflicts += 1
            await self.store.delete(f"{ID_PREFIX}{num}")
            self._used.discard(num)
            winner = await self.store.get(master)
            if winner is not None:
                return Allocation(int(msgpack.unpackb(winner[0])["id"]), labels, new=False)
        raise IdentitySpaceExhausted(
            f"no free identity for {labels.key!r} after {MAX_ATTEMPTS} attempts")

    def _candidate(self) -> int:
        span = self.high - self.low + 1
        if len(self._used) >= span:
            raise IdentitySpaceExhausted(f"all {span} cluster identities are in use")
        while True:
            num = self._rng.randint(self.low, self.high)
            if num not in self._used:
                return num

    async def release(self, num: int, labels: Labels) -> bool:
        """Give ``num`` back if it still belongs to ``labels``; True if this call released it.

        Each key is deleted only at the revision read, so a replica that races a new
        allocation of the same number or label set never removes the newcomer's keys.
        """
        digest = labels.digest()
        master = LABELS_PREFIX + digest
        got = await self.store.get(master)
        released = False
        if got is not None and int(msgpack.unpackb(got[0])["id"]) == num:
            released = await self.store.delete(master, got[1])
        reservation = await self.store.get(f"{ID_PREFIX}{num}")
        if reservation is not None and msgpack.unpackb(reservation[0])["digest"] == digest:
            await self.store.delete(f"{ID_PREFIX}{num}", reservation[1])
        self._used.discard(num)
        return released
