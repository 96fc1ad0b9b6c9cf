"""The policy service's exception hierarchy.

Every error names the policy object (kind, namespace, name) and the field path inside it, such as
``spec.ingress[0].toPorts[0].ports[1].port``. The caller (``cilia apply``, the service) adds the
file and the document index, which this pure code never sees.
"""

from __future__ import annotations

from services.common.errors import CiliaError


class PolicyError(CiliaError):
    """Base class of every error raised by ``services.policy``."""


class PolicyValidationError(PolicyError):
    """A policy document is invalid or uses a field cilia does not support.

    Attributes:
        kind: the object's kind (``CiliumNetworkPolicy``...), or "" if unknown.
        namespace: the object's namespace ("" for cluster-scoped objects).
        name: the object's ``metadata.name``, or "" if unknown.
        path: the field path at fault, e.g. ``spec.ingress[0].toPorts[0].ports[1].port``.
        reason: what is wrong with it.
    """

    def __init__(self, reason: str, path: str = "", kind: str = "", namespace: str = "",
                 name: str = "") -> None:
        self.reason = reason
        self.path = path
        self.kind = kind
        self.namespace = namespace
        self.name = name
        super().__init__(str(self))

    @property
    def object_ref(self) -> str:
        """``Kind namespace/name`` (or ``Kind name`` when cluster-scoped)."""
        kind = self.kind or "policy"
        if self.namespace:
            return f"{kind} {self.namespace}/{self.name or '?'}"
        return f"{kind} {self.name or '?'}"

    def __str__(self) -> str:
        where = f" field {self.path}" if self.path else ""
        return f"{self.object_ref}:{where}: {self.reason}"


class UnsupportedFieldError(PolicyValidationError):
    """The document uses a field that cilia recognises but does not implement."""


class SelectorError(PolicyError):
    """A label selector is malformed (used before the object context is known).

    The model layer catches it and re-raises a :class:`PolicyValidationError` with the path.
    """

    def __init__(self, reason: str, path: str = "") -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)


class CIDRError(PolicyError):
    """A CIDR prefix is malformed, or the local identity space is exhausted."""
