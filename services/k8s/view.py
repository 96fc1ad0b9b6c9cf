"""What of a Kubernetes object cilia consumes, and what the watcher publishes (pure).

The API server bumps ``metadata.resourceVersion`` on every write, and most writes are status
updates cilia never reads: a Node's heartbeat conditions every few seconds, a Pod's container
statuses, a Service's load-balancer status. The watcher compares objects by their *relevant
view* (:func:`relevant_view`) and publishes only when that changes:

* ``metadata`` without ``resourceVersion``, ``managedFields`` (server-side apply bookkeeping,
  often the largest part of an object) and ``generation`` (it follows the spec, which is
  compared anyway);
* ``status`` only for what cilia consumes: a Pod's ``podIP``, ``podIPs``, ``hostIP`` and
  ``phase``, a Node's ``addresses``; every other kind's status is dropped (a Service,
  EndpointSlice or policy status is the API server's or another controller's report, never an
  input).

What is published is that view with ``metadata.resourceVersion`` put back
(:func:`published_form`): the object keeps its ``uid`` and ``resourceVersion``, so a message id
built from them names the change (:func:`upsert_msg_id`), and JetStream stores it once however
many replicas or retries publish it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.common.contract import ObjectEvent, source_subject
from services.common.contract.objects import KIND_NODE, KIND_POD

MSG_ID_PREFIX = "k8s"                       # message ids of the watcher: k8s/<uid>/<rv>
DELETED = "deleted"                         # the last token of a delete's message id
DROPPED_METADATA = ("resourceVersion", "managedFields", "generation", "selfLink")
# Kind -> the status fields cilia consumes (every other kind's status is dropped whole).
KEPT_STATUS: dict[str, tuple[str, ...]] = {
    KIND_POD: ("podIP", "podIPs", "hostIP", "phase"),
    KIND_NODE: ("addresses",),
}

Key = tuple[str, str, str]      # (kind, namespace, name)


def object_key(obj: Mapping[str, Any]) -> Key:
    """``(kind, namespace, name)`` of an object ("" namespace when cluster-scoped)."""
    meta = obj.get("metadata") or {}
    return str(obj.get("kind", "")), str(meta.get("namespace") or ""), str(meta.get("name", ""))


def subject_of(key: Key) -> str:
    """The bus subject of the object at ``key``."""
    return source_subject(*key)


def relevant_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of ``obj`` cilia consumes (see the module's docstring); ``obj`` is not
    changed. Idempotent: the view of a view is itself."""
    view = {k: v for k, v in obj.items() if k != "status"}
    meta = obj.get("metadata")
    if isinstance(meta, Mapping):
        view["metadata"] = {k: v for k, v in meta.items() if k not in DROPPED_METADATA}
    kept = KEPT_STATUS.get(str(obj.get("kind", "")), ())
    status = obj.get("status")
    if kept and isinstance(status, Mapping):
        trimmed = {k: status[k] for k in kept if k in status}
        if trimmed:
            view["status"] = trimmed
    return view


def published_form(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the watcher publishes of ``obj``: its relevant view and its resourceVersion."""
    view = relevant_view(obj)
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    if rv is not None and isinstance(view.get("metadata"), dict):
        view["metadata"]["resourceVersion"] = rv
    return view


def _uid(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return str(meta.get("uid") or "/".join(object_key(obj)))


def upsert_msg_id(obj: Mapping[str, Any]) -> str:
    """``k8s/<uid>/<resourceVersion>``: one id per version of one object."""
    rv = (obj.get("metadata") or {}).get("resourceVersion") or ""
    return f"{MSG_ID_PREFIX}/{_uid(obj)}/{rv}"


def delete_msg_id(obj: Mapping[str, Any]) -> str:
    """``k8s/<uid>/deleted``: an object is deleted once."""
    return f"{MSG_ID_PREFIX}/{_uid(obj)}/{DELETED}"


def event_data(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The ``object.upsert``/``object.delete`` data of ``obj``, shaped as ``cilia apply``'s."""
    kind, namespace, name = object_key(obj)
    return {"kind": kind, "namespace": namespace, "name": name, "object": dict(obj)}


@dataclass(frozen=True)
class Change:
    """One event the watcher means to publish."""

    event_type: ObjectEvent
    key: Key
    obj: dict[str, Any]         # upsert: the published form; delete: the last known version
    msg_id: str

    @property
    def subject(self) -> str:
        return subject_of(self.key)


def upsert(obj: Mapping[str, Any]) -> Change:
    form = published_form(obj)
    return Change(ObjectEvent.UPSERT, object_key(obj), form, upsert_msg_id(obj))


def delete(obj: Mapping[str, Any]) -> Change:
    return Change(ObjectEvent.DELETE, object_key(obj), published_form(obj), delete_msg_id(obj))


def differs(obj: Mapping[str, Any], held: Mapping[str, Any] | None) -> bool:
    """Whether publishing ``obj`` would change what the bus holds (``held``: None if
    nothing)."""
    return held is None or relevant_view(obj) != relevant_view(held)


def plan(desired: Iterable[Mapping[str, Any]], held: Mapping[Key, Mapping[str, Any]],
         kinds: Iterable[str], keep: Iterable[Key] = ()) -> list[Change]:
    """The events that bring the bus's objects of ``kinds`` (``held``) in line with the API
    server's (``desired``, each as it would be published): an upsert per object that is
    missing or differs, a delete per object the bus holds that the API server does not.

    ``keep``: objects the API server has but the watcher will not publish (malformed): what
    the bus holds of them stays. Deletes come first, then upserts, each sorted by key.
    """
    scope = set(kinds)
    want = {object_key(o): o for o in desired if object_key(o)[0] in scope}
    kept = set(keep)
    deletes = [delete(held[k]) for k in sorted(held)
               if k[0] in scope and k not in want and k not in kept]
    upserts = [upsert(want[k]) for k in sorted(want) if differs(want[k], held.get(k))]
    return deletes + upserts
