"""The agent's endpoint reports: which pod has which address on this node.

``endpoint.upsert`` on ``cilia.agent.endpoint.<node>.<namespace>.<pod>`` when CNI ADD creates
an endpoint (before ADD answers: the identity service needs the address to publish the pod's
ipcache entry, which ADD waits for), ``endpoint.delete`` when it goes. The subject names the
node, and the bus lets an agent publish only its own node's subjects, so the identity service
believes a report only for pods scheduled on that node. A restarted agent makes the reports
match its endpoints again (:func:`resync`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import msgspec

from services.common.bus import Bus, Outgoing
from services.common.contract import (
    AgentEvent,
    EndpointDelete,
    EndpointUpsert,
    Payload,
    agent_endpoint_subject,
    agent_endpoints_filter,
)
from services.nodeagent.endpoints import Endpoint


def upsert_event(ep: Endpoint) -> EndpointUpsert:
    """The report of a created endpoint."""
    return EndpointUpsert(node=ep.node, namespace=ep.pod_namespace, pod=ep.pod_name,
                          ip=ep.ipv4, endpoint_id=ep.id, container_id=ep.container_id)


def upsert_payload(ep: Endpoint) -> dict[str, Any]:
    """The report of a created endpoint, as a consumer reads its data."""
    return msgspec.structs.asdict(upsert_event(ep))


def _outgoing(node: str, namespace: str, pod: str, event_type: str, data: Payload) -> Outgoing:
    # A fresh id each time: an endpoint created, rolled back and created again within the
    # de-duplication window must be stored every time.
    return Outgoing(agent_endpoint_subject(node, namespace, pod), event_type, data,
                    f"agent/{node}/endpoint/{namespace}/{pod}/{uuid.uuid4()}")


def upsert(ep: Endpoint) -> Outgoing:
    return _outgoing(ep.node, ep.pod_namespace, ep.pod_name, AgentEvent.ENDPOINT_UPSERT,
                     upsert_event(ep))


def delete(node: str, namespace: str, pod: str) -> Outgoing:
    return _outgoing(node, namespace, pod, AgentEvent.ENDPOINT_DELETE,
                     EndpointDelete(node=node, namespace=namespace, pod=pod))


async def publish(bus: Bus, item: Outgoing) -> None:
    await bus.publish_batch([item])


async def resync(bus: Bus, node: str, endpoints: Iterable[Endpoint]) -> int:
    """Publish what makes the node's reports on the bus match ``endpoints``; returns how
    many events that took."""
    have = await bus.snapshot([agent_endpoints_filter(node)])
    want = {agent_endpoint_subject(node, ep.pod_namespace, ep.pod_name): ep for ep in endpoints}
    out: list[Outgoing] = []
    for subject, ep in sorted(want.items()):
        last = have.get(subject)
        if last is None or last.event.payload != upsert_event(ep):
            out.append(upsert(ep))
    for subject, last in sorted(have.items()):
        gone = last.event.payload
        if subject not in want and isinstance(gone, EndpointUpsert):
            out.append(delete(node, gone.namespace, gone.pod))
    if out:
        await bus.publish_batch(out)
    return len(out)
