"""Write the policy service's verdicts back to Kubernetes: the shell around
:mod:`services.k8s.status` (which says what is written and why).

:class:`PolicyFeedback` turns one ``policy.status`` into API calls: a rejected policy gets a
Warning Event (or its existing Event's count bumped) and, for CNP/CCNP, ``Valid=False`` in
its status; an accepted CNP/CCNP gets ``Valid=True``. The object is read first, for its uid
(``kubectl describe`` finds Events by the object's uid) and for the conditions it already has,
so that nothing is written when the status says so already. A policy that no longer exists
gets nothing.

:func:`subscribe` (or :func:`run`) feeds it from the bus
(:data:`~services.common.contract.K8S_FEEDBACK`: the verdicts published from now on). Only the
watcher's leader writes: the caller passes its ``leading`` event or predicate, and verdicts
that arrive while it is false are skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client import ApiClient, CoreV1Api, CustomObjectsApi, NetworkingV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from services.common.bus import Bus, Delivery, Subscription
from services.common.contract import K8S_FEEDBACK
from services.common.contract.policy import PolicyStatus

from .status import (
    CILIUM_API_VERSION,
    REASON_REJECTED,
    STATUS_PLURALS,
    PolicyRef,
    event_bump,
    event_name,
    merge_conditions,
    rejection_event,
    rejection_message,
    status_patch,
    valid_condition,
    verdict,
)

log = logging.getLogger(__name__)

HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409
MERGE_PATCH = "application/merge-patch+json"
CILIUM_GROUP, CILIUM_VERSION = CILIUM_API_VERSION.split("/")

Leading = asyncio.Event | Callable[[], bool]
UidLookup = Callable[[PolicyStatus], str | None]


class PolicyFeedback:
    """Writes verdicts on policies to the API server.

    Args:
        api_client: a kubernetes_asyncio client (the caller owns and closes it).
        instance: ``reportingInstance`` of the Events (the watcher replica's identity).
        clock: the current time (tests pass a fixed one).
    """

    def __init__(self, api_client: ApiClient, *, instance: str | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._client = api_client
        # Any: the generated stubs want model bodies and omit ``_content_type``; the methods
        # take plain dicts (as the API serves them) and a merge patch's content type.
        self._core: Any = CoreV1Api(api_client)
        self._custom: Any = CustomObjectsApi(api_client)
        self._networking = NetworkingV1Api(api_client)
        self._instance = instance
        self._clock = clock
        self.events_created = 0
        self.events_bumped = 0
        self.conditions_written = 0

    async def on_status(self, payload: PolicyStatus, obj_uid: str | None = None) -> None:
        """Write what ``payload`` says about its policy (``obj_uid``: its uid, if known).

        Raises:
            ApiException: the API server refused a write (other than a known Event).
        """
        kind = verdict(payload)
        ref = PolicyRef.of(payload, obj_uid)
        if kind is None or (kind == "accepted" and not ref.has_status):
            return
        obj = await self._read(ref) if ref.has_status or ref.uid is None else {}
        if obj is None:
            log.debug("%s %s/%s is gone: no feedback", ref.kind, ref.namespace, ref.name)
            return
        if ref.uid is None:
            ref = PolicyRef(ref.kind, ref.namespace, ref.name,
                            (obj.get("metadata") or {}).get("uid"))
        now = self._clock()
        message = rejection_message(payload) if kind == "rejected" else ""
        if kind == "rejected":
            await self._record_event(ref, message, now)
        if ref.has_status:
            wanted = valid_condition(kind, message, now)
            conditions = merge_conditions((obj.get("status") or {}).get("conditions"), wanted)
            if conditions is not None:
                await self._patch_status(ref, status_patch(conditions))
                self.conditions_written += 1

    async def _read(self, ref: PolicyRef) -> dict[str, Any] | None:
        """The policy as the API server holds it (None: it does not exist)."""
        try:
            if ref.kind not in STATUS_PLURALS:
                obj = await self._networking.read_namespaced_network_policy(
                    ref.name, ref.namespace)
                return dict(self._client.sanitize_for_serialization(obj))
            plural = STATUS_PLURALS[ref.kind]
            if ref.namespace:
                found = await self._custom.get_namespaced_custom_object(
                    CILIUM_GROUP, CILIUM_VERSION, ref.namespace, plural, ref.name)
            else:
                found = await self._custom.get_cluster_custom_object(
                    CILIUM_GROUP, CILIUM_VERSION, plural, ref.name)
            return dict(found)
        except ApiException as exc:
            if exc.status == HTTP_NOT_FOUND:
                return None
            raise

    async def _record_event(self, ref: PolicyRef, message: str, now: datetime) -> None:
        """Create the Event, or count one more occurrence when it exists already."""
        namespace = ref.event_namespace
        try:
            await self._core.create_namespaced_event(
                namespace, rejection_event(ref, message, now, self._instance))
            self.events_created += 1
            return
        except ApiException as exc:
            if exc.status != HTTP_CONFLICT:
                raise
        name = event_name(ref, REASON_REJECTED, message)
        existing = self._client.sanitize_for_serialization(
            await self._core.read_namespaced_event(name, namespace))
        await self._core.patch_namespaced_event(name, namespace, event_bump(existing, now),
                                                _content_type=MERGE_PATCH)
        self.events_bumped += 1

    async def _patch_status(self, ref: PolicyRef, patch: dict[str, Any]) -> None:
        plural = STATUS_PLURALS[ref.kind]
        if ref.namespace:
            await self._custom.patch_namespaced_custom_object_status(
                CILIUM_GROUP, CILIUM_VERSION, ref.namespace, plural, ref.name, patch,
                _content_type=MERGE_PATCH)
        else:
            await self._custom.patch_cluster_custom_object_status(
                CILIUM_GROUP, CILIUM_VERSION, plural, ref.name, patch,
                _content_type=MERGE_PATCH)


def _is_leading(leading: Leading) -> bool:
    return leading.is_set() if isinstance(leading, asyncio.Event) else leading()


async def subscribe(bus: Bus, feedback: PolicyFeedback, leading: Leading,
                    uid_of: UidLookup | None = None) -> Subscription:
    """Start writing back every verdict published from now on while ``leading``.

    A verdict whose writes fail is logged and counted by the bus's consumer (and not
    retried); one that arrives while this replica does not lead is skipped.

    Args:
        uid_of: the uid of a verdict's policy when the caller knows it (the watcher's
            cache); it saves reading a NetworkPolicy (a CNP/CCNP is read anyway, for its
            conditions).

    Returns:
        The running consumer (the caller stops it).
    """
    async def handle(delivery: Delivery) -> None:
        payload = delivery.event.payload
        if isinstance(payload, PolicyStatus) and _is_leading(leading):
            await feedback.on_status(payload, uid_of(payload) if uid_of else None)

    return await bus.consume(K8S_FEEDBACK, handle)


async def run(bus: Bus, feedback: PolicyFeedback, leading: Leading,
              uid_of: UidLookup | None = None) -> None:
    """:func:`subscribe`, until cancelled."""
    subscription = await subscribe(bus, feedback, leading, uid_of)
    try:
        await asyncio.Future()
    finally:
        await subscription.stop()
