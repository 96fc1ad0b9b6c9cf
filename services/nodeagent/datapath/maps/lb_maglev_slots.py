"""The lb_maglev_slots map (``lib/lb.h``): an array of backend ids in which Maglev tables are
placed in runs of consecutive slots.

A table of size ``M`` > 1 lives at ``[base, base + M)`` of one BPF array (4 bytes a slot, no
per-entry overhead), and the frontend's ``table_*`` field holds ``base``; a table of one
backend takes no slot, its field holds the backend id. :class:`MaglevSlots` (the map's view)
places tables (logical table ids from :mod:`services.nodeagent.lbstate`), diffs each against
what the kernel holds (one compact ``array`` per table, read from the map once), writes only
changed slots, and rebuilds the placement of a restarted agent from the frontends in
``lb_services``. Bulk slot reads and writes go through the backend's array calls when it has
them (the pinned backend batches them into few syscalls).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from services.nodeagent.datapath.backend import MapBackend
from services.nodeagent.datapath.errors import MapFullError
from services.nodeagent.datapath.maps.lb_services import PART
from services.nodeagent.datapath.maps.spec import GROUP_LB, MapSpec, Twin, U32Key, u32
from services.nodeagent.datapath.reconciler import ReconcileResult

NAME = "lb_maglev_slots"
MAX_ENTRIES = 1 << 22          # Maglev slots of all tables together (an array: 16 MiB)
SLOT_BYTES = 4
_ORDER = sys.byteorder


# struct lb_maglev_value (lib/lb.h)
class LbMaglevValue(Twin):
    C_STRUCT, C_HEADER = "lb_maglev_value", "lb.h"
    _fields_ = (("backend_id", u32),)


@runtime_checkable
class SlotArray(Protocol):
    """A backend that reads and writes runs of ``u32`` array slots in bulk."""

    def read_u32_slots(self, base: int, size: int) -> list[int]:
        """Slots ``[base, base + size)``."""
        ...

    def write_u32_slots(self, items: Sequence[tuple[int, int]]) -> None:
        """Write (slot, value) pairs."""
        ...


def table_id(frontend_id: int, external: bool) -> int:
    """Logical id of a frontend's table (``external``: the one for outside traffic)."""
    return (frontend_id << 1) | int(external)


def _key(slot: int) -> bytes:
    return slot.to_bytes(SLOT_BYTES, _ORDER)


class MaglevSlots:
    """Placement and contents of every Maglev table of one node."""

    def __init__(self, backend: MapBackend) -> None:
        self.backend = backend
        self.capacity = backend.max_entries
        self.runs: dict[int, tuple[int, int]] = {}     # logical id -> (base, size)
        self.singles: dict[int, int] = {}              # logical id -> backend id
        self.free: dict[int, list[int]] = {}           # size -> free bases
        self.next_base = 0
        self._contents: dict[int, array[int]] = {}     # base -> what the kernel holds

    # -- placement ----------------------------------------------------------------------------

    def adopt(self, logical: int, value: int, size: int) -> None:
        """Learn a table from a frontend the kernel already holds (agent restart)."""
        if size == 1:
            self.singles[logical] = value
        elif size > 1 and logical not in self.runs:
            self.runs[logical] = (value, size)
            self.next_base = max(self.next_base, value + size)

    def known(self) -> set[int]:
        return set(self.runs) | set(self.singles)

    def value_of(self, logical: int) -> int:
        """What a frontend's ``table_*`` field holds for a table: base or backend id."""
        if logical in self.singles:
            return self.singles[logical]
        return self.runs[logical][0]

    def _allocate(self, size: int) -> int:
        bases = self.free.get(size)
        if bases:
            return bases.pop()
        if self.next_base + size > self.capacity:
            raise MapFullError(self.backend.name, "update",
                               f"no room for another Maglev table of {size} slots "
                               f"({self.capacity} slots, {len(self.runs)} tables)")
        base = self.next_base
        self.next_base += size
        return base

    def put(self, logical: int, slots: Sequence[int], result: ReconcileResult) -> None:
        """Make table ``logical`` hold ``slots``, writing only the slots that differ."""
        if len(slots) <= 1:
            self.release(logical)
            if slots:
                self.singles[logical] = slots[0]
            return
        self.singles.pop(logical, None)
        run = self.runs.get(logical)
        if run is None or run[1] != len(slots):
            self.release(logical)
            run = (self._allocate(len(slots)), len(slots))
            self.runs[logical] = run
        base, size = run
        current = self._read(base, size)
        writes = [(i, bid) for i, bid in enumerate(slots) if current[i] != bid]
        if writes:
            write_slots(self.backend, [(base + i, bid) for i, bid in writes])
            for i, bid in writes:
                current[i] = bid
        result.updated += len(writes)
        result.unchanged += size - len(writes)

    def release(self, logical: int) -> None:
        """Forget a table (its slots are reused by a later table of the same size)."""
        self.singles.pop(logical, None)
        run = self.runs.pop(logical, None)
        if run is not None:
            self.free.setdefault(run[1], []).append(run[0])

    # -- contents -----------------------------------------------------------------------------

    def _read(self, base: int, size: int) -> array[int]:
        cached = self._contents.get(base)
        if cached is not None and len(cached) == size:
            return cached
        out = array("I", read_slots(self.backend, base, size))
        self._contents[base] = out
        return out

    def invalidate(self) -> None:
        """Forget what the slots hold (after a failed write); they are read again on use."""
        self._contents.clear()

    def repair(self) -> int:
        """Put back the slots of placed tables that differ in the kernel from what was
        written (drift); returns how many. Tables not read or written yet are skipped."""
        repaired = 0
        for base, size in sorted(self.runs.values()):
            written = self._contents.get(base)
            if written is None or len(written) != size:
                continue
            kernel = read_slots(self.backend, base, size)
            writes = [(base + i, bid) for i, bid in enumerate(written) if kernel[i] != bid]
            if writes:
                write_slots(self.backend, writes)
                repaired += len(writes)
        return repaired

    def tables(self, logical: Iterable[int] | None = None) -> dict[int, list[int]]:
        """Logical table id -> backend id per slot."""
        wanted = self.known() if logical is None else set(logical) & self.known()
        out = {}
        for lid in sorted(wanted):
            if lid in self.singles:
                out[lid] = [self.singles[lid]]
            else:
                base, size = self.runs[lid]
                out[lid] = list(self._read(base, size))
        return out


def write_slots(backend: MapBackend, items: Sequence[tuple[int, int]]) -> None:
    """Write (slot, backend id) pairs (in bulk where the backend can)."""
    if isinstance(backend, SlotArray):
        backend.write_u32_slots(items)
        return
    backend.update([(_key(slot), bid.to_bytes(SLOT_BYTES, _ORDER)) for slot, bid in items])


def read_slots(backend: MapBackend, base: int, size: int) -> list[int]:
    """Slots ``[base, base + size)`` of the array (never the whole array)."""
    if isinstance(backend, SlotArray):
        return backend.read_u32_slots(base, size)
    data: Mapping[bytes, bytes] = backend.read_all()
    return [int.from_bytes(data.get(_key(s), bytes(SLOT_BYTES)), _ORDER)
            for s in range(base, base + size)]


SPEC: MapSpec[MaglevSlots] = MapSpec(
    name=NAME, header="lb.h", map_type="array", key=U32Key, value=LbMaglevValue,
    max_entries=MAX_ENTRIES, cflags={"CILIA_LB_MAGLEV_MAX": MAX_ENTRIES}, view=MaglevSlots,
    group=GROUP_LB, part=PART)
