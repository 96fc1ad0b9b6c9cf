"""Node agents' reports (an agent publishes only its own node's).

* ``agent.realized`` {node, revision, identities?} on ``cilia.agent.realized.<node>``: the bus
  sequence the node's maps hold, and the policy revision realized per local identity.
* ``endpoint.upsert`` {node, namespace, pod, ip, endpoint_id, container_id} and
  ``endpoint.delete`` {node, namespace, pod} on ``cilia.agent.endpoint.<node>.<ns>.<pod>``:
  the endpoints the node's CNI created (the identity service consumes them).
"""

from __future__ import annotations

from services.common import subjects

from ._types import U16, DnsLabel, DnsSubdomain, IPv4, Payload, Revision, Text, check_identity

EV_REALIZED = "agent.realized"
EV_ENDPOINT_UPSERT = "endpoint.upsert"
EV_ENDPOINT_DELETE = "endpoint.delete"


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
        return (subjects.agent_realized(self.node),)


class EndpointUpsert(Payload):
    """An endpoint the node's CNI created for a pod."""

    node: DnsSubdomain
    namespace: DnsLabel
    pod: DnsSubdomain
    ip: IPv4
    endpoint_id: U16
    container_id: Text

    def subjects(self) -> tuple[str, ...]:
        return (subjects.agent_endpoint(self.node, self.namespace, self.pod),)


class EndpointDelete(Payload):
    """An endpoint the node's CNI removed."""

    node: DnsSubdomain
    namespace: DnsLabel
    pod: DnsSubdomain

    def subjects(self) -> tuple[str, ...]:
        return (subjects.agent_endpoint(self.node, self.namespace, self.pod),)


EVENTS: dict[str, type[Payload]] = {EV_REALIZED: AgentRealized,
                                    EV_ENDPOINT_UPSERT: EndpointUpsert,
                                    EV_ENDPOINT_DELETE: EndpointDelete}
