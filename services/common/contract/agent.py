"""Node agents' reports (an agent publishes only its own node's).

* ``agent.realized`` {node, revision, identities?} on ``cilia.agent.realized.<node>``: the bus
  sequence the node's maps hold, and the policy revision realized per local identity.
* ``endpoint.upsert`` {node, namespace, pod, ip, endpoint_id, container_id} and
  ``endpoint.delete`` {node, namespace, pod} on ``cilia.agent.endpoint.<node>.<ns>.<pod>``:
  the endpoints the node's CNI created (the identity service consumes them).
"""

from __future__ import annotations

from enum import StrEnum

from ._types import U16, DnsLabel, DnsSubdomain, IPv4, Payload, Revision, Text, check_identity
from .tokens import token


class AgentEvent(StrEnum):
    """Event types of node agents' reports (the values are the wire strings)."""

    REALIZED = "agent.realized"
    ENDPOINT_UPSERT = "endpoint.upsert"
    ENDPOINT_DELETE = "endpoint.delete"


AGENT_FILTER = "cilia.agent.>"
_REALIZED_PREFIX = "cilia.agent.realized."
# cilia.agent.endpoint.<node>.<namespace>.<pod> (the node token is where the bus's subject
# permissions pin an agent to its own node).
AGENT_ENDPOINTS_FILTER = "cilia.agent.endpoint.>"
_ENDPOINT_PREFIX = "cilia.agent.endpoint."


def agent_realized_subject(node: str) -> str:
    """``cilia.agent.realized.<node>``."""
    return f"{_REALIZED_PREFIX}{token(node)}"


def agent_endpoint_subject(node: str, namespace: str, pod: str) -> str:
    """``cilia.agent.endpoint.<node>.<ns>.<pod>``: one endpoint report."""
    return f"{_ENDPOINT_PREFIX}{token(node)}.{token(namespace)}.{token(pod)}"


def agent_endpoints_filter(node: str) -> str:
    """Filter of one node's endpoint reports."""
    return f"{_ENDPOINT_PREFIX}{token(node)}.>"


def parse_agent_endpoint(subject: str) -> tuple[str, str, str] | None:
    """(node token, namespace token, pod token) of an endpoint report subject, or None."""
    if not subject.startswith(_ENDPOINT_PREFIX):
        return None
    parts = subject[len(_ENDPOINT_PREFIX):].split(".")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


def agent_publish_filters(node_token: str) -> tuple[str, str]:
    """Every agent report subject of one node (``cilia.agent.<kind>.<node>[.>]``): what the
    bus lets that node's agent publish."""
    return f"cilia.agent.*.{node_token}", f"cilia.agent.*.{node_token}.>"


class AgentRealized(Payload):
    """What one node's maps hold."""

    node: DnsSubdomain
    revision: Revision
    identities: dict[str, Revision] | None = None

    def __post_init__(self) -> None:
        for key in self.identities or {}:
            if not key.isdigit():
                raise ValueError(f"identities: key {key[:40]!r} is not an identity number")
            check_identity(int(key), f"identities[{key}]")

    def subjects(self) -> tuple[str, ...]:
        return (agent_realized_subject(self.node),)


class EndpointUpsert(Payload):
    """An endpoint the node's CNI created for a pod."""

    node: DnsSubdomain
    namespace: DnsLabel
    pod: DnsSubdomain
    ip: IPv4
    endpoint_id: U16
    container_id: Text

    def subjects(self) -> tuple[str, ...]:
        return (agent_endpoint_subject(self.node, self.namespace, self.pod),)


class EndpointDelete(Payload):
    """An endpoint the node's CNI removed."""

    node: DnsSubdomain
    namespace: DnsLabel
    pod: DnsSubdomain

    def subjects(self) -> tuple[str, ...]:
        return (agent_endpoint_subject(self.node, self.namespace, self.pod),)


EVENTS: dict[str, type[Payload]] = {AgentEvent.REALIZED: AgentRealized,
                                    AgentEvent.ENDPOINT_UPSERT: EndpointUpsert,
                                    AgentEvent.ENDPOINT_DELETE: EndpointDelete}
