"""What cilia tells Kubernetes about a policy, the pure part: Events and status conditions.

A policy the policy service rejects (``policy.status`` with ``op: error``) stays out of force
while the previous version (if any) keeps working; the user learns why where they look:

* ``kubectl describe`` lists the Events whose ``involvedObject`` is the policy. cilia writes a
  ``Warning`` Event with reason ``PolicyRejected`` and the error (which names the field at
  fault) as the message, in the policy's namespace (``default`` for a cluster-wide policy, as
  Kubernetes does for cluster-scoped objects). The Event's name is derived from the policy
  and the message (:func:`event_name`), so the same rejection again finds its Event (create
  answers 409) and bumps its ``count`` and ``lastTimestamp``, as client-go's event recorder
  does, even after a failover to the other watcher replica.
* A CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy also carries the verdict in its
  ``status.conditions``, type ``Valid`` (Cilium's own condition type): ``False`` /
  ``PolicyRejected`` with the error, or ``True`` / ``PolicyAccepted`` once a version is
  accepted. ``lastTransitionTime`` moves only when the status flips; other condition types
  are kept (:func:`merge_conditions`). A Kubernetes NetworkPolicy has no such status: it gets
  the Event only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from services.common.contract import KIND_CCNP, KIND_CNP, KIND_KNP
from services.common.contract.policy import PolicyStatus

COMPONENT = "cilia"                   # source.component and reportingComponent of our Events
CLUSTER_EVENT_NAMESPACE = "default"   # where Events about cluster-scoped objects go
EVENT_TYPE_WARNING = "Warning"
REASON_REJECTED = "PolicyRejected"
REASON_ACCEPTED = "PolicyAccepted"
CONDITION_VALID = "Valid"             # Cilium's CNP condition type (NetworkPolicyCondition)
MAX_MESSAGE = 1024                    # characters of an Event message (events.k8s.io's limit)
MAX_NAME = 253                        # a DNS subdomain: the limit of an object name
NAME_DIGEST = 16                      # hex characters of the digest in an Event's name

CILIUM_API_VERSION = "cilium.io/v2"
API_VERSIONS = {KIND_CNP: CILIUM_API_VERSION, KIND_CCNP: CILIUM_API_VERSION,
                KIND_KNP: "networking.k8s.io/v1"}
# The kinds with a status subresource, by their resource (plural) name.
STATUS_PLURALS = {KIND_CNP: "ciliumnetworkpolicies",
                  KIND_CCNP: "ciliumclusterwidenetworkpolicies"}

Verdict = Literal["rejected", "accepted"]


def kube_time(t: datetime) -> str:
    """A ``metav1.Time`` (RFC 3339, whole seconds, UTC)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class PolicyRef:
    """The policy object a verdict is about (``namespace`` "" for a cluster-wide one)."""

    kind: str
    namespace: str
    name: str
    uid: str | None = None

    @classmethod
    def of(cls, status: PolicyStatus, uid: str | None = None) -> PolicyRef:
        return cls(status.kind, status.namespace, status.name, uid or None)

    @property
    def api_version(self) -> str:
        return API_VERSIONS[self.kind]

    @property
    def has_status(self) -> bool:
        """Whether the kind has a status subresource cilia writes conditions into."""
        return self.kind in STATUS_PLURALS

    @property
    def event_namespace(self) -> str:
        return self.namespace or CLUSTER_EVENT_NAMESPACE

    def object_reference(self) -> dict[str, Any]:
        """The ``involvedObject`` of an Event about this policy."""
        ref = {"apiVersion": self.api_version, "kind": self.kind, "name": self.name}
        if self.namespace:
            ref["namespace"] = self.namespace
        if self.uid:
            ref["uid"] = self.uid
        return ref


def verdict(status: PolicyStatus) -> Verdict | None:
    """What a ``policy.status`` says about the object (None: nothing to write, it is gone)."""
    return {"error": "rejected", "set": "accepted"}.get(status.op)  # type: ignore[return-value]


def rejection_message(status: PolicyStatus) -> str:
    """The message of a rejection: the policy service's error (it names the field at fault)."""
    text = status.error or "rejected"
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"


def event_name(ref: PolicyRef, reason: str, message: str) -> str:
    """The name of the Event saying ``message`` about ``ref``: one per (object, message)."""
    key = "\0".join((ref.kind, ref.namespace, ref.name, ref.uid or "", reason, message))
    digest = hashlib.sha256(key.encode()).hexdigest()[:NAME_DIGEST]
    return f"{ref.name[:MAX_NAME - NAME_DIGEST - 1]}.{digest}"


def rejection_event(ref: PolicyRef, message: str, now: datetime,
                    instance: str | None = None) -> dict[str, Any]:
    """A new ``core/v1`` Warning Event saying why ``ref`` is not in force (count 1)."""
    event: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": event_name(ref, REASON_REJECTED, message),
                     "namespace": ref.event_namespace},
        "involvedObject": ref.object_reference(),
        "type": EVENT_TYPE_WARNING, "reason": REASON_REJECTED, "message": message,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": kube_time(now), "lastTimestamp": kube_time(now), "count": 1,
    }
    if instance:
        event["reportingInstance"] = instance
    return event


def event_bump(existing: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The merge patch that counts one more occurrence of an existing Event."""
    return {"count": int(existing.get("count") or 1) + 1, "lastTimestamp": kube_time(now)}


def valid_condition(kind: Verdict, message: str, now: datetime) -> dict[str, Any]:
    """The ``Valid`` condition for a verdict."""
    if kind == "rejected":
        return {"type": CONDITION_VALID, "status": "False", "reason": REASON_REJECTED,
                "message": message, "lastTransitionTime": kube_time(now)}
    return {"type": CONDITION_VALID, "status": "True", "reason": REASON_ACCEPTED,
            "message": "the policy is in force", "lastTransitionTime": kube_time(now)}


def merge_conditions(existing: Sequence[dict[str, Any]] | None,
                     wanted: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The ``status.conditions`` list with ``wanted`` in place of its type's condition.

    Returns None when the list says so already (nothing to write). The list is written whole
    (a merge patch replaces lists), so other condition types are carried over; the previous
    ``lastTransitionTime`` is kept when the status does not change.
    """
    conditions = [dict(c) for c in existing or () if isinstance(c, dict)]
    for i, current in enumerate(conditions):
        if current.get("type") != wanted["type"]:
            continue
        if all(current.get(k) == wanted[k] for k in ("status", "reason", "message")):
            return None
        merged = dict(wanted)
        if current.get("status") == wanted["status"] and current.get("lastTransitionTime"):
            merged["lastTransitionTime"] = current["lastTransitionTime"]
        conditions[i] = merged
        return conditions
    return [*conditions, dict(wanted)]


def status_patch(conditions: list[dict[str, Any]]) -> dict[str, Any]:
    """The merge patch of the ``/status`` subresource that writes ``conditions``."""
    return {"status": {"conditions": conditions}}
