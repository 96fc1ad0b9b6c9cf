"""A map pinned on bpffs, opened by path: the real :class:`~..backend.MapBackend`.

Element operations go through libbcc (batched where the map type allows); bulk reads and
writes of ``u32`` array slots (the Maglev slot array) use the batch calls directly.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bcc.libbcc import lib as bcclib

from services.nodeagent.datapath.backend import map_error
from services.nodeagent.datapath.errors import MapError
from services.nodeagent.datapath.kernel import _bpfsys

# Below this many operations element-wise calls are as cheap as a batch.
BATCH_MIN = 8
SLOT_BATCH_CHUNK = 16384    # array slots per batched syscall
SLOT_BYTES = 4
_ORDER = sys.byteorder


class PinnedMapBackend:
    """A map pinned on bpffs, opened by path; needs no loaded program."""

    def __init__(self, path: str | Path, key_size: int, value_size: int) -> None:
        self.path = str(path)
        self.name = Path(path).name
        try:
            self.fd = _bpfsys.obj_get(self.path)
        except OSError as exc:
            raise MapError(self.name, "open", f"{self.path}: {exc.strerror}") from exc
        info = _bpfsys.map_info(self.fd)
        if (info.key_size, info.value_size) != (key_size, value_size):
            os.close(self.fd)
            raise MapError(self.name, "open",
                           f"pinned map has key/value sizes {info.key_size}/{info.value_size}, "
                           f"this build expects {key_size}/{value_size}")
        self.map_type = info.type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = info.max_entries

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PinnedMapBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def keys(self) -> list[bytes]:
        out: list[bytes] = []
        cur = ct.create_string_buffer(self.key_size)
        nxt = ct.create_string_buffer(self.key_size)
        try:
            found = _bpfsys.next_key(self.fd, None, nxt)
            while found:
                out.append(nxt.raw)
                ct.memmove(cur, nxt, self.key_size)
                found = _bpfsys.next_key(self.fd, cur, nxt)
        except OSError as exc:
            raise map_error(self.name, "iterate", exc) from exc
        return out

    def read_all(self) -> dict[bytes, bytes]:
        result: dict[bytes, bytes] = {}
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                result[key] = value
        return result

    def lookup(self, key: bytes) -> bytes | None:
        """The value the kernel returns for ``key`` (an LPM map: the longest match); None if
        nothing matches."""
        value = ct.create_string_buffer(self.value_size)
        try:
            found = _bpfsys.lookup(self.fd, ct.create_string_buffer(key, self.key_size), value)
        except OSError as exc:
            raise map_error(self.name, "lookup", exc) from exc
        return value.raw if found else None

    def lookup_percpu(self, key: bytes, ncpus: int) -> list[bytes] | None:
        """The per-CPU values of ``key`` in a per-CPU map (None if absent)."""
        stride = (self.value_size + 7) // 8 * 8   # the kernel pads per-CPU values to 8 bytes
        buf = ct.create_string_buffer(stride * ncpus)
        try:
            if not _bpfsys.lookup(self.fd, ct.create_string_buffer(key, self.key_size), buf):
                return None
        except OSError as exc:
            raise map_error(self.name, "lookup", exc) from exc
        raw = buf.raw
        return [raw[i * stride:i * stride + self.value_size] for i in range(ncpus)]

    def _batchable(self, count: int) -> bool:
        return self.map_type in _bpfsys.BATCH_CAPABLE_TYPES and count >= BATCH_MIN

    def update(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        try:
            if self._batchable(len(items)):
                _bpfsys.update_batch(self.fd, b"".join(k for k, _ in items),
                                     b"".join(v for _, v in items), len(items))
                return
            for key, value in items:
                _bpfsys.update(self.fd, key, value)
        except OSError as exc:
            raise map_error(self.name, "update", exc) from exc

    def delete(self, keys: Sequence[bytes]) -> None:
        # Batch delete stops at the first absent key, so deletes go element by element
        # unless every key is known present (the reconciler only deletes what it read).
        try:
            if self._batchable(len(keys)):
                try:
                    _bpfsys.delete_batch(self.fd, b"".join(keys), len(keys))
                    return
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
            for key in keys:
                _bpfsys.delete(self.fd, key)
        except OSError as exc:
            raise map_error(self.name, "delete", exc) from exc

    # -- u32 array slots (SlotArray: the Maglev slot array) ------------------------------------

    def write_u32_slots(self, items: Sequence[tuple[int, int]]) -> None:
        """Write (slot, value) pairs: one batched syscall per chunk."""
        if len(items) < BATCH_MIN:
            self.update([(slot.to_bytes(SLOT_BYTES, _ORDER), value.to_bytes(SLOT_BYTES, _ORDER))
                         for slot, value in items])
            return
        for i in range(0, len(items), SLOT_BATCH_CHUNK):
            part = items[i:i + SLOT_BATCH_CHUNK]
            keys = (ct.c_uint32 * len(part))(*(slot for slot, _ in part))
            values = (ct.c_uint32 * len(part))(*(value for _, value in part))
            try:
                _bpfsys.update_batch(self.fd, bytes(keys), bytes(values), len(part))
            except OSError as exc:
                raise MapError(self.name, "update", f"{exc.strerror}") from exc

    def read_u32_slots(self, base: int, size: int) -> list[int]:
        """Slots ``[base, base + size)`` (never the whole array)."""
        got = self._lookup_batch(base, size)
        if got is not None:
            return got
        key = ct.create_string_buffer(SLOT_BYTES)
        val = ct.create_string_buffer(SLOT_BYTES)
        out = []
        try:
            for slot in range(base, base + size):
                ct.memmove(key, slot.to_bytes(SLOT_BYTES, _ORDER), SLOT_BYTES)
                out.append(int.from_bytes(val.raw, _ORDER) if _bpfsys.lookup(self.fd, key, val)
                           else 0)
        except OSError as exc:
            raise MapError(self.name, "lookup", f"{exc.strerror}") from exc
        return out

    def _lookup_batch(self, base: int, size: int) -> list[int] | None:
        """Slots by BPF_MAP_LOOKUP_BATCH (an array resumes after the ``in_batch`` index)."""
        keys = (ct.c_uint32 * size)()
        values = (ct.c_uint32 * size)()
        count = ct.c_uint32(size)
        token_in = ct.c_uint32(base - 1)
        token_out = ct.c_uint32(0)
        ret = bcclib.bpf_lookup_batch(self.fd, ct.byref(token_in) if base else None,
                                      ct.byref(token_out), keys, values, ct.byref(count))
        if ret < 0 and ct.get_errno() != errno.ENOENT:
            return None
        if count.value != size or (size and keys[0] != base):
            return None
        return list(values)
