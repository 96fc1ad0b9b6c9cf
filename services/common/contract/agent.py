"""Node agents' reports (an agent publishes only its own node's).

* ``agent.realized`` {node, revision, identities?} on ``cilia.agent.realized.<node>``: the bus
  sequence the node's maps hold, and the policy revision realized per local identity.
* ``endpoint.upsert`` {node, namespace, pod, ip, endpoint_id, container_id} and
  ``endpoint.delete`` {node, namespace, pod} on ``cilia.agent.endpoint.<node>.<ns>.<pod>``:
  the endpoints the node's CNI created (the identity service consumes them).
* ``fqdn.names`` {node, name, addresses, endpoints} on ``cilia.agent.fqdn.<node>.<name>``:
  what the node's DNS proxy learned a name resolves to, each address with its TTL and expiry
  (unix seconds); ``addresses`` empty: every address expired (the policy service consumes
  them: ``toFQDNs`` selectors select the addresses of the names they match).
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

from ._types import (
    U16,
    U32,
    DnsLabel,
    DnsSubdomain,
    Fqdn,
    IPv4,
    Payload,
    PodRef,
    Revision,
    Seconds,
    Text,
    check_identity,
)
from .tokens import token


class AgentEvent(StrEnum):
    """Event types of node agents' reports (the values are the wire strings)."""

    REALIZED = "agent.realized"
    ENDPOINT_UPSERT = "endpoint.upsert"
    ENDPOINT_DELETE = "endpoint.delete"
    FQDN_NAMES = "fqdn.names"


AGENT_FILTER = "cilia.agent.>"
_REALIZED_PREFIX = "cilia.agent.realized."
# cilia.agent.endpoint.<node>.<namespace>.<pod> (the node token is where the bus's subject
# permissions pin an agent to its own node).
AGENT_ENDPOINTS_FILTER = "cilia.agent.endpoint.>"
_ENDPOINT_PREFIX = "cilia.agent.endpoint."
AGENT_FQDN_FILTER = "cilia.agent.fqdn.>"
_FQDN_PREFIX = "cilia.agent.fqdn."


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


def fqdn_token(name: str) -> str:
    """A DNS name as one subject token: ``.`` becomes ``_``; a name that has ``_`` of its own
    (``_sip._tcp.example.com``) is a hash, so two names never share a token."""
    if "_" in name:
        return "_h" + hashlib.sha256(name.encode()).hexdigest()[:24]
    return name.replace(".", "_")


def agent_fqdn_subject(node: str, name: str) -> str:
    """``cilia.agent.fqdn.<node>.<name>``: what one node learned one name resolves to."""
    return f"{_FQDN_PREFIX}{token(node)}.{fqdn_token(name)}"


def agent_fqdn_filter(node: str) -> str:
    """Filter of what one node learned."""
    return f"{_FQDN_PREFIX}{token(node)}.>"


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


class FqdnAddress(Payload):
    """One address a name resolved to: the TTL it was given (raised to the minimum TTL) and
    when it expires (unix seconds; its grace for live connections comes on top)."""

    ip: IPv4
    ttl: U32
    expires: Seconds


class FqdnNames(Payload):
    """What one node's DNS proxy knows a name resolves to now."""

    node: DnsSubdomain
    name: Fqdn
    addresses: list[FqdnAddress]
    endpoints: list[PodRef] = []     # the pods whose lookups taught it ("ns/pod")

    def __post_init__(self) -> None:
        if "*" in self.name or self.name != self.name.lower().rstrip("."):
            raise ValueError(f"name: {self.name[:80]!r} is not a lower-case DNS name without "
                             "a trailing dot")
        ips = [a.ip for a in self.addresses]
        if len(set(ips)) != len(ips):
            raise ValueError("addresses: an address is listed twice")

    def subjects(self) -> tuple[str, ...]:
        return (agent_fqdn_subject(self.node, self.name),)


EVENTS: dict[str, type[Payload]] = {AgentEvent.REALIZED: AgentRealized,
                                    AgentEvent.ENDPOINT_UPSERT: EndpointUpsert,
                                    AgentEvent.ENDPOINT_DELETE: EndpointDelete,
                                    AgentEvent.FQDN_NAMES: FqdnNames}
