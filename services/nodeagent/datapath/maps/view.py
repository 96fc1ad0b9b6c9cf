"""The shape shared by the views of maps the agent writes (pure).

Each such view owns one :class:`~services.nodeagent.datapath.reconciler.Reconciler` over its
backend: desired entries in domain terms are encoded, then only the difference is written.
The agent reaches every written map through the same calls: ``repair`` (drift) and
``invalidate`` (after a failed write) (:class:`Repairable`, the Maglev slot array included),
and for maps with one reconciler ``reconcile`` with an optional scope: which keys or
partitions the desired entries cover (:class:`WrittenView`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

from services.nodeagent.datapath.backend import MapBackend
from services.nodeagent.datapath.errors import EncodeError
from services.nodeagent.datapath.reconciler import Reconciler, ReconcileResult

D = TypeVar("D", bound=Mapping[Any, Any])
Encoder = Callable[[D, list[EncodeError]], dict[bytes, bytes]]


class Repairable(Protocol):
    """A view of a map the agent writes: drift repair and invalidation."""

    def repair(self) -> int:
        """Put back what drifted from what was written; returns how many entries."""
        ...

    def invalidate(self) -> None:
        """Forget what the map holds (after a failed write)."""
        ...


class WrittenView(Repairable, Protocol):
    """A view the agent writes through its reconciler."""

    reconciler: Reconciler

    def reconcile(self, desired: Any, scope: Any = None, /) -> ReconcileResult:
        """Make the map (or the ``scope`` of it) hold exactly ``desired``."""
        ...


class ReconciledMap:
    """Base of the written views: one reconciler, drift repair, invalidation."""

    def __init__(self, backend: MapBackend,
                 partition_of: Callable[[bytes], Hashable] | None = None) -> None:
        self.reconciler = (Reconciler(backend) if partition_of is None
                           else Reconciler(backend, partition_of=partition_of))

    @property
    def backend(self) -> MapBackend:
        return self.reconciler.backend

    def repair(self) -> int:
        return self.reconciler.repair()

    def write(self, encode: Encoder[D], desired: D,
              partitions: Iterable[Hashable] | None = None,
              keys: Iterable[bytes] | None = None) -> ReconcileResult:
        """Encode ``desired`` and reconcile the map (or the given scope of it) to it; an entry
        that cannot be encoded is left out and counted, the others are written."""
        errors: list[EncodeError] = []
        encoded = encode(desired, errors)
        return self.reconciler.skip(errors,
                                    self.reconciler.reconcile(encoded, partitions, keys))

    def invalidate(self) -> None:
        self.reconciler.invalidate()
