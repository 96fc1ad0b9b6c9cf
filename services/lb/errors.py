"""The lb service's exception hierarchy; messages name the Service and the field at fault."""

from __future__ import annotations

from services.common.errors import CiliaError


class LbError(CiliaError):
    """Base of every error raised by ``services.lb``."""


class ServiceSpecError(LbError):
    """A Service or EndpointSlice is invalid or uses something cilia does not support.

    Attributes:
        ref: ``Kind ns/name`` of the object ("" if unknown).
        path: the field at fault, e.g. ``spec.ports[1].targetPort``.
        reason: what is wrong.
    """

    def __init__(self, reason: str, path: str = "", ref: str = "") -> None:
        self.reason, self.path, self.ref = reason, path, ref
        where = ": ".join(p for p in (ref, path) if p)
        super().__init__(f"{where}: {reason}" if where else reason)


class AllocationError(LbError):
    """An id, ClusterIP or NodePort could not be allocated (conflict or exhausted range)."""


class MaglevError(LbError):
    """A Maglev table cannot be built (size not prime, too few slots for the backends)."""
