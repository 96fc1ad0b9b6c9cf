"""The map backend seam: what a typed map view needs from storage, and an in-memory backend.

Backends speak raw key/value bytes (the twins' ``to_bytes``); typed map views above them
encode domain entries, and the reconciler diffs bytes. The real backend, a map pinned on
bpffs (``kernel.PinnedMapBackend``), is kernel access and lives behind the lazily imported
:mod:`services.nodeagent.datapath.kernel`; :class:`MemoryMapBackend` stands in for it in pure
tests.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence
from typing import Protocol

from services.nodeagent.datapath.errors import MapError, MapFullError

# errnos a full map reports: hash maps E2BIG, LPM tries ENOSPC, allocation failures ENOMEM.
_FULL_ERRNOS = frozenset({errno.E2BIG, errno.ENOSPC, errno.ENOMEM})


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


def map_error(name: str, op: str, exc: OSError) -> MapError:
    """The datapath error for a failed map operation (a full map: :class:`MapFullError`)."""
    if exc.errno in _FULL_ERRNOS:
        return MapFullError(name, op, f"map is full ({exc.strerror})")
    return MapError(name, op, f"{exc.strerror} (errno {exc.errno})")


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
            raise map_error(self.name, op, self.fail_next.pop(0))

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

    def lookup_percpu(self, key: bytes, ncpus: int) -> list[bytes] | None:
        """A per-CPU map's values of ``key``: the stored value on the first CPU, zeros on the
        others (None if absent)."""
        value = self.data.get(key)
        return None if value is None else [value] + [bytes(self.value_size)] * (ncpus - 1)

    def close(self) -> None:
        """Nothing to release."""

    def _check_sizes(self, key: bytes, value: bytes) -> None:
        if len(key) != self.key_size or len(value) != self.value_size:
            raise MapError(self.name, "update",
                           f"key/value of {len(key)}/{len(value)} bytes, "
                           f"expected {self.key_size}/{self.value_size}")
