"""Cluster objects from a source (``cilia apply``, the lab kubelet, a Kubernetes watcher).

``object.upsert`` {kind, namespace, name, object} and ``object.delete`` {kind, namespace, name,
object?} on ``cilia.src.<kind>.<namespace>.<name>`` (:func:`source_subject`; the kind
lower-cased, names as subject tokens).

What the bus checks of an object depends on who answers for it:

* Policies (``CiliumNetworkPolicy``, ``CiliumClusterwideNetworkPolicy``, ``NetworkPolicy``)
  and ``Service``/``EndpointSlice`` have an owning service that reports a bad object to the
  user (``policy.status`` / ``lb.status`` with the field at fault) and keeps the previous
  version in force; the bus checks only that the object is a map whose kind, name and
  namespace agree with the envelope, so the owner still sees it and says what is wrong.
* Every other kind (``Namespace``, ``Pod``, ``Node``, ``Deployment``) is read by several
  consumers that trust its shape; the bus runs the same validator ``cilia apply`` runs
  (:data:`services.common.objects.KINDS`) and rejects the event whole.

Every object is also limited in nesting depth (:data:`MAX_DEPTH`), which ``cilia apply``
enforces on files too.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from services.common.objects import KINDS as CORE_KINDS
from services.common.objects import ObjectError, require_map

from ._types import DnsSubdomain, Namespace, Payload
from .tokens import token

MAX_DEPTH = 64      # nesting of maps and lists in one object (Kubernetes objects stay far below)


class ObjectEvent(StrEnum):
    """Event types of cluster objects (the values are the wire strings)."""

    UPSERT = "object.upsert"
    DELETE = "object.delete"


SOURCE_FILTER = "cilia.src.>"       # every cluster object from a source
_SOURCE_PREFIX = "cilia.src."


def source_subject(kind: str, namespace: str, name: str) -> str:
    """Subject of a cluster object from a source: ``cilia.src.<kind>.<ns>.<name>``."""
    return f"{_SOURCE_PREFIX}{kind.lower()}.{token(namespace)}.{token(name)}"


def source_filter(kind: str) -> str:
    """Filter of every object of one kind."""
    return f"{_SOURCE_PREFIX}{kind.lower()}.>"


KIND_POD = "Pod"
KIND_NAMESPACE = "Namespace"
KIND_NODE = "Node"
KIND_SERVICE = "Service"
KIND_ENDPOINTSLICE = "EndpointSlice"
KIND_CNP = "CiliumNetworkPolicy"
KIND_CCNP = "CiliumClusterwideNetworkPolicy"
KIND_KNP = "NetworkPolicy"
POLICY_KINDS = (KIND_CNP, KIND_CCNP, KIND_KNP)
# Kind -> namespaced, for the kinds whose owning service reports their errors itself.
STATUS_REPORTED: dict[str, bool] = {KIND_CNP: True, KIND_CCNP: False, KIND_KNP: True,
                                    KIND_SERVICE: True, KIND_ENDPOINTSLICE: True}
# Kind -> namespaced, for every kind a source may publish.
NAMESPACED: dict[str, bool] = {**{k: s.namespaced for k, s in CORE_KINDS.items()},
                               **STATUS_REPORTED}


def depth(obj: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of maps and lists in ``obj`` (iterative; stops counting past ``limit``)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def check_object(kind: str, namespace: str, name: str, obj: Any, *, whole: bool) -> None:
    """Check an object against its envelope (and its kind's validator, when ``whole``).

    Raises:
        ValueError: naming the field at fault (``object.metadata.name: ...``).
    """
    namespaced = NAMESPACED.get(kind)
    if namespaced is None:
        raise ValueError(f"kind: unsupported kind {kind!r} (supported: "
                         f"{', '.join(sorted(NAMESPACED))})")
    if namespaced and not namespace:
        raise ValueError(f"namespace: a {kind} is namespaced, the namespace is required")
    if not namespaced and namespace:
        raise ValueError(f"namespace: a {kind} is cluster-scoped, got namespace {namespace!r}")
    if obj is None:
        return
    if depth(obj) > MAX_DEPTH:
        raise ValueError(f"object: nested deeper than {MAX_DEPTH} levels")
    try:
        doc = require_map(obj, "")
        if doc.get("kind", kind) != kind:
            raise ObjectError("kind", f"{doc.get('kind')!r} does not match the event's {kind}")
        meta = require_map(doc.get("metadata"), "metadata")
        if meta.get("name") != name:
            raise ObjectError("metadata.name", f"{meta.get('name')!r} does not match the "
                                               f"event's name {name!r}")
        if meta.get("namespace", namespace) != namespace:
            raise ObjectError("metadata.namespace", f"{meta.get('namespace')!r} does not "
                                                    f"match the event's {namespace!r}")
        if not whole:
            return
        spec = CORE_KINDS.get(kind)
        if spec is not None and kind not in STATUS_REPORTED:   # else its owner reports it
            spec.validate(doc)
    except ObjectError as exc:
        raise ValueError(f"object.{exc.path}: {exc.message}" if exc.path
                         else f"object: {exc.message}") from None


class ObjectUpsert(Payload):
    """A cluster object as its source now holds it."""

    kind: str
    namespace: Namespace
    name: DnsSubdomain
    object: dict[str, Any]

    def __post_init__(self) -> None:
        check_object(self.kind, self.namespace, self.name, self.object, whole=True)

    def subjects(self) -> tuple[str, ...]:
        return (source_subject(self.kind, self.namespace, self.name),)


class ObjectDelete(Payload):
    """A cluster object gone from its source (``object``: its last version, if known)."""

    kind: str
    namespace: Namespace
    name: DnsSubdomain
    object: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_object(self.kind, self.namespace, self.name, self.object, whole=False)

    def subjects(self) -> tuple[str, ...]:
        return (source_subject(self.kind, self.namespace, self.name),)


def object_key(payload: ObjectUpsert | ObjectDelete) -> str:
    """``namespace/name`` of a namespaced object, ``name`` of a cluster-scoped one."""
    return f"{payload.namespace}/{payload.name}" if payload.namespace else payload.name


EVENTS: dict[str, type[Payload]] = {ObjectEvent.UPSERT: ObjectUpsert,
                                    ObjectEvent.DELETE: ObjectDelete}
