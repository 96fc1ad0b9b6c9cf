"""The Maglev slot array (``lb_maglev_slots``): tables placed in runs of consecutive slots.

A table of size ``M`` > 1 lives at ``[base, base + M)`` of one BPF array (4 bytes a slot, no
per-entry overhead), and the frontend's ``table_*`` field holds ``base``; a table of one
backend takes no slot, its field holds the backend id. This module places tables (logical
table ids from :mod:`services.nodeagent.lbstate`), diffs each against what the kernel holds
(one compact ``array`` per table, read from the map once), writes only changed slots, and
rebuilds the placement of a restarted agent from the frontends in ``lb_services``.
"""

from __future__ import annotations

import ctypes as ct
import errno
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence

from bcc.libbcc import lib as bcclib

from services.nodeagent.datapath import _bpfsys
from services.nodeagent.datapath.backend import MapBackend, PinnedMapBackend
from services.nodeagent.datapath.errors import MapError, MapFullError
from services.nodeagent.datapath.reconciler import ReconcileResult

SLOT_BYTES = 4
BATCH_MIN = 8          # fewer writes go element by element
BATCH_CHUNK = 16384    # slots per batched syscall
_ORDER = sys.byteorder


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
            try:
                kernel = read_slots(self.backend, base, size)
            except OSError as exc:
                raise MapError(self.backend.name, "lookup", f"{exc.strerror}") from exc
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
    """Write (slot, backend id) pairs: one batched syscall per chunk on a pinned array."""
    if isinstance(backend, PinnedMapBackend) and len(items) >= BATCH_MIN:
        for i in range(0, len(items), BATCH_CHUNK):
            part = items[i:i + BATCH_CHUNK]
            keys = array("I", [slot for slot, _ in part]).tobytes()
            values = array("I", [bid for _, bid in part]).tobytes()
            try:
                _bpfsys.update_batch(backend.fd, keys, values, len(part))
            except OSError as exc:
                raise MapError(backend.name, "update", f"{exc.strerror}") from exc
        return
    backend.update([(_key(slot), bid.to_bytes(SLOT_BYTES, _ORDER)) for slot, bid in items])


def _lookup_batch(fd: int, base: int, size: int) -> list[int] | None:
    """Slots by BPF_MAP_LOOKUP_BATCH (an array resumes after the ``in_batch`` index)."""
    keys = (ct.c_uint32 * size)()
    values = (ct.c_uint32 * size)()
    count = ct.c_uint32(size)
    token_in = ct.c_uint32(base - 1)
    token_out = ct.c_uint32(0)
    ret = bcclib.bpf_lookup_batch(fd, ct.byref(token_in) if base else None,
                                  ct.byref(token_out), keys, values, ct.byref(count))
    if ret < 0 and ct.get_errno() != errno.ENOENT:
        return None
    if count.value != size or (size and keys[0] != base):
        return None
    return list(values)


def read_slots(backend: MapBackend, base: int, size: int) -> list[int]:
    """Slots ``[base, base + size)`` of the array (never the whole array)."""
    if isinstance(backend, PinnedMapBackend):
        got = _lookup_batch(backend.fd, base, size)
        if got is not None:
            return got
        key = ct.create_string_buffer(SLOT_BYTES)
        val = ct.create_string_buffer(SLOT_BYTES)
        out = []
        for slot in range(base, base + size):
            ct.memmove(key, _key(slot), SLOT_BYTES)
            out.append(int.from_bytes(val.raw, _ORDER) if _bpfsys.lookup(backend.fd, key, val)
                       else 0)
        return out
    data: Mapping[bytes, bytes] = backend.read_all()
    return [int.from_bytes(data.get(_key(s), bytes(SLOT_BYTES)), _ORDER)
            for s in range(base, base + size)]
