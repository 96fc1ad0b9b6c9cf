"""The map backend seam: the real pinned-map backend and an in-memory one for unit tests.

Backends speak raw key/value bytes (the twins' ``to_bytes``); typed maps above them encode
domain entries, and the reconciler diffs bytes.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from services.nodeagent.datapath import _bpfsys
from services.nodeagent.datapath.errors import MapError, MapFullError

# errnos a full map reports: hash maps E2BIG, LPM tries ENOSPC, allocation failures ENOMEM.
_FULL_ERRNOS = frozenset({errno.E2BIG, errno.ENOSPC, errno.ENOMEM})
# Below this many operations element-wise calls are as cheap as a batch.
BATCH_MIN = 8


class MapBackend(Protocol):
    """Storage of one map as raw bytes."""

    name: str
    key_size: int
    value_size: int
    max_entries: int

    def read_all(self) -> dict[bytes, bytes]:
        """Every entry the map holds."""
        ...

    def update(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Create or replace entries; raises MapFullError / MapError."""
        ...

    def delete(self, keys: Sequence[bytes]) -> None:
        """Remove entries; absent keys are not an error."""
        ...


def _map_error(name: str, op: str, exc: OSError) -> MapError:
    if exc.errno in _FULL_ERRNOS:
        return MapFullError(name, op, f"map is full ({exc.strerror})")
    return MapError(name, op, f"{exc.strerror} (errno {exc.errno})")


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
            raise _map_error(self.name, "iterate", exc) from exc
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
            raise _map_error(self.name, "lookup", exc) from exc
        return value.raw if found else None

    def lookup_percpu(self, key: bytes, ncpus: int) -> list[bytes] | None:
        """The per-CPU values of ``key`` in a per-CPU map (None if absent)."""
        stride = (self.value_size + 7) // 8 * 8   # the kernel pads per-CPU values to 8 bytes
        buf = ct.create_string_buffer(stride * ncpus)
        try:
            if not _bpfsys.lookup(self.fd, ct.create_string_buffer(key, self.key_size), buf):
                return None
        except OSError as exc:
            raise _map_error(self.name, "lookup", exc) from exc
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
            raise _map_error(self.name, "update", exc) from exc

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
            raise _map_error(self.name, "delete", exc) from exc


class MemoryMapBackend:
    """A dict standing in for a map, with the same capacity semantics, for unit tests."""

    def __init__(self, name: str, key_size: int, value_size: int, max_entries: int) -> None:
        self.name = name
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.data: dict[bytes, bytes] = {}
        self.fail_next: list[OSError] = []   # injected failures, popped one per call
        self.calls = 0

    def _maybe_fail(self, op: str) -> None:
        self.calls += 1
        if self.fail_next:
            raise _map_error(self.name, op, self.fail_next.pop(0))

    def read_all(self) -> dict[bytes, bytes]:
        self._maybe_fail("iterate")
        return dict(self.data)

    def update(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        self._maybe_fail("update")
        for key, value in items:
            self._check_sizes(key, value)
            if key not in self.data and len(self.data) >= self.max_entries:
                raise MapFullError(self.name, "update", "map is full")
            self.data[key] = value

    def delete(self, keys: Iterable[bytes]) -> None:
        self._maybe_fail("delete")
        for key in keys:
            self.data.pop(key, None)

    def _check_sizes(self, key: bytes, value: bytes) -> None:
        if len(key) != self.key_size or len(value) != self.value_size:
            raise MapError(self.name, "update",
                           f"key/value of {len(key)}/{len(value)} bytes, "
                           f"expected {self.key_size}/{self.value_size}")
