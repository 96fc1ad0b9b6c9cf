"""One reconciler shape for every map: desired vs actual, apply only the difference.

The reconciler reads what the map holds once (so a restarted agent starts from the pinned
map, never from an empty slate), keeps that mirror current as it writes, and on each call
diffs the desired entries against it. Writes go in chunks (batched by the backend where the
map type allows), upserts before deletes so that a replaced entry never leaves a gap; a map
that reports full gets the deletes first on the next attempt. Transient errors are retried
with exponential backoff after re-reading the map. Every operation is counted.

The mirror is also what :meth:`Reconciler.repair` checks the kernel against: entries that
someone else wrote, changed or deleted in the map since (drift) are put back as the mirror
says, writing only those.

Entries may be grouped into partitions (the policy map uses the subject identity) so that a
change to one subject diffs only that subject's entries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from services.nodeagent.datapath.backend import MapBackend
from services.nodeagent.datapath.errors import MapError, MapFullError

DEFAULT_RETRIES = 4            # attempts after the first one
DEFAULT_BACKOFF_S = 0.005      # first retry delay, doubled each time
DEFAULT_MAX_BACKOFF_S = 0.25
DEFAULT_CHUNK = 1024           # entries per backend call
MAX_LOGGED_SKIPS = 1024        # distinct skipped-entry errors logged per map (then counted only)

log = logging.getLogger(__name__)

Partition = Hashable


@dataclass
class ReconcileResult:
    """What one reconcile call did."""

    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    retries: int = 0
    reads: int = 0
    skipped: int = 0        # desired entries left out: they could not be encoded

    @property
    def writes(self) -> int:
        return self.added + self.updated + self.deleted


@dataclass
class ReconcileStats:
    """Cumulative counters of one reconciler, for metrics."""

    reconciles: int = 0
    added: int = 0
    updated: int = 0
    deleted: int = 0
    retries: int = 0
    failures: int = 0
    reads: int = 0
    repaired: int = 0      # drifted entries put back by repair()
    skipped: int = 0       # entries left out because they could not be encoded

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Diff:
    upserts: list[tuple[bytes, bytes]] = field(default_factory=list)
    deletes: list[bytes] = field(default_factory=list)
    unchanged: int = 0


_Plan = Callable[[dict[Partition, dict[bytes, bytes]]], _Diff]


def _single_partition(_key: bytes) -> Partition:
    return None


def diff_entries(actual: Mapping[bytes, bytes], desired: Mapping[bytes, bytes]) -> _Diff:
    """The operations that turn ``actual`` into ``desired`` (pure)."""
    d = _Diff()
    for key, value in desired.items():
        cur = actual.get(key)
        if cur != value:
            d.upserts.append((key, value))
        else:
            d.unchanged += 1
    d.deletes = [key for key in actual if key not in desired]
    return d


class Reconciler:
    """Drives one map towards desired contents."""

    def __init__(self, backend: MapBackend, *,
                 partition_of: Callable[[bytes], Partition] = _single_partition,
                 retries: int = DEFAULT_RETRIES, backoff_s: float = DEFAULT_BACKOFF_S,
                 max_backoff_s: float = DEFAULT_MAX_BACKOFF_S, chunk: int = DEFAULT_CHUNK,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.backend = backend
        self.partition_of = partition_of
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.chunk = chunk
        self.sleep = sleep
        self.stats = ReconcileStats()
        self._mirror: dict[Partition, dict[bytes, bytes]] | None = None
        self._logged: set[str] = set()

    @property
    def name(self) -> str:
        return self.backend.name

    def skip(self, errors: Sequence[Exception], result: ReconcileResult) -> ReconcileResult:
        """Count desired entries left out because they could not be encoded (the others
        are written: one bad entry never blocks a map); each distinct error is logged once."""
        result.skipped += len(errors)
        self.stats.skipped += len(errors)
        for exc in errors:
            text = str(exc)
            if text not in self._logged and len(self._logged) < MAX_LOGGED_SKIPS:
                self._logged.add(text)
                log.warning("map %s: entry left out: %s", self.name, text)
        return result

    def invalidate(self) -> None:
        """Forget the mirror; the next call re-reads the map."""
        self._mirror = None

    def actual(self) -> dict[bytes, bytes]:
        """What the map holds, per the mirror (read from the map on first use)."""
        return {k: v for part in self._load(ReconcileResult()).values() for k, v in part.items()}

    def held(self, key: bytes) -> bytes | None:
        """The value the mirror says the map holds for ``key`` (one lookup, no copy)."""
        return self._load(ReconcileResult()).get(self.partition_of(key), {}).get(key)

    def repair(self) -> int:
        """Make the kernel map hold what the mirror says it holds (drift repair).

        Reads the whole map, writes back entries that are missing or changed, and deletes
        entries the mirror does not know. Without a mirror yet, the map is read and nothing
        can have drifted.

        Returns:
            How many entries were written or deleted.

        Raises:
            MapError: reading or writing the map failed (the mirror is then forgotten).
        """
        if self._mirror is None:
            self._load(ReconcileResult())
            return 0
        belief = {k: v for part in self._mirror.values() for k, v in part.items()}
        try:
            d = diff_entries(self.backend.read_all(), belief)
            for i in range(0, len(d.upserts), self.chunk):
                self.backend.update(d.upserts[i:i + self.chunk])
            for i in range(0, len(d.deletes), self.chunk):
                self.backend.delete(d.deletes[i:i + self.chunk])
        except MapError:
            self.invalidate()
            self.stats.failures += 1
            raise
        n = len(d.upserts) + len(d.deletes)
        self.stats.repaired += n
        return n

    def _load(self, result: ReconcileResult) -> dict[Partition, dict[bytes, bytes]]:
        if self._mirror is None:
            mirror: dict[Partition, dict[bytes, bytes]] = {}
            for key, value in self.backend.read_all().items():
                mirror.setdefault(self.partition_of(key), {})[key] = value
            self._mirror = mirror
            result.reads += 1
            self.stats.reads += 1
        return self._mirror

    def reconcile(self, desired: Mapping[bytes, bytes],
                  partitions: Iterable[Partition] | None = None,
                  keys: Iterable[bytes] | None = None) -> ReconcileResult:
        """Make the map hold ``desired``.

        Args:
            desired: the complete wanted contents (of the given scope, if any).
            partitions: limit the reconcile to these partitions; entries of other partitions
                are left alone.
            keys: limit the reconcile to these keys (an incremental patch: a key in ``keys``
                but not in ``desired`` is deleted). Not together with ``partitions``.
                Without either, the whole map is reconciled.

        Returns:
            The counts of what was done.

        Raises:
            ValueError: a desired key lies outside the scope.
            MapFullError: the map cannot hold the desired entries.
            MapError: the map kept failing after all retries.
        """
        if partitions is not None and keys is not None:
            raise ValueError(f"map {self.name!r}: give partitions or keys, not both")
        plan = (self._plan_keys(desired, set(keys)) if keys is not None
                else self._plan_partitions(desired, partitions))
        result = ReconcileResult()
        self.stats.reconciles += 1
        deletes_first = False
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                self._apply(plan, result, deletes_first)
                return result
            except MapFullError:
                if deletes_first:
                    self.stats.failures += 1
                    raise
                deletes_first = True
                self.invalidate()
            except MapError:
                self.invalidate()
                if attempt == self.retries:
                    self.stats.failures += 1
                    raise
                self.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
            result.retries += 1
            self.stats.retries += 1
        raise AssertionError("unreachable")  # pragma: no cover

    def _out_of_scope(self, key: bytes, scope: str) -> ValueError:
        return ValueError(f"map {self.name!r}: desired key {key.hex()} is outside the "
                          f"reconciled {scope}")

    def _plan_partitions(self, desired: Mapping[bytes, bytes],
                         partitions: Iterable[Partition] | None) -> _Plan:
        scope = None if partitions is None else set(partitions)
        wanted: dict[Partition, dict[bytes, bytes]] = {}
        for key, value in desired.items():
            part = self.partition_of(key)
            if scope is not None and part not in scope:
                raise self._out_of_scope(key, f"partitions (it is in {part!r})")
            wanted.setdefault(part, {})[key] = value

        def plan(mirror: dict[Partition, dict[bytes, bytes]]) -> _Diff:
            total = _Diff()
            for part in (set(mirror) | set(wanted)) if scope is None else scope:
                d = diff_entries(mirror.get(part, {}), wanted.get(part, {}))
                total.upserts += d.upserts
                total.deletes += d.deletes
                total.unchanged += d.unchanged
            return total

        return plan

    def _plan_keys(self, desired: Mapping[bytes, bytes], keys: set[bytes]) -> _Plan:
        for key in desired:
            if key not in keys:
                raise self._out_of_scope(key, "keys")

        def plan(mirror: dict[Partition, dict[bytes, bytes]]) -> _Diff:
            d = _Diff()
            for key in keys:
                cur = mirror.get(self.partition_of(key), {}).get(key)
                want = desired.get(key)
                if want is None:
                    if cur is not None:
                        d.deletes.append(key)
                elif cur != want:
                    d.upserts.append((key, want))
                else:
                    d.unchanged += 1
            return d

        return plan

    def _apply(self, plan: _Plan, result: ReconcileResult, deletes_first: bool) -> None:
        mirror = self._load(result)
        d = plan(mirror)
        result.unchanged = d.unchanged
        if deletes_first:
            self._do_deletes(d.deletes, mirror, result)
            self._do_upserts(d.upserts, mirror, result)
        else:
            self._do_upserts(d.upserts, mirror, result)
            self._do_deletes(d.deletes, mirror, result)

    def _do_upserts(self, items: list[tuple[bytes, bytes]],
                    mirror: dict[Partition, dict[bytes, bytes]], result: ReconcileResult) -> None:
        for i in range(0, len(items), self.chunk):
            part_items = items[i:i + self.chunk]
            self.backend.update(part_items)
            for key, value in part_items:
                bucket = mirror.setdefault(self.partition_of(key), {})
                if key in bucket:
                    result.updated += 1
                    self.stats.updated += 1
                else:
                    result.added += 1
                    self.stats.added += 1
                bucket[key] = value

    def _do_deletes(self, keys: list[bytes], mirror: dict[Partition, dict[bytes, bytes]],
                    result: ReconcileResult) -> None:
        for i in range(0, len(keys), self.chunk):
            part_keys = keys[i:i + self.chunk]
            self.backend.delete(part_keys)
            for key in part_keys:
                part = self.partition_of(key)
                mirror.get(part, {}).pop(key, None)
                if part in mirror and not mirror[part]:
                    del mirror[part]
                result.deleted += 1
                self.stats.deleted += 1
