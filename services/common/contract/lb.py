"""Load balancing: the lb service's output (:class:`services.lb.events.LbView` is its fold).

* ``lb.service`` {id, service} and ``lb.service.delete`` {id, namespace, name} on
  ``cilia.lb.service.<ns>.<name>``;
* ``lb.backend`` {id, address, port, protocol, node?, pod?, state?} and ``lb.backend.delete``
  {id} on ``cilia.lb.backend.<id>``;
* ``lb.backends`` {service, added, removed, op?} on ``cilia.lb.members.<service id>``: the
  ``[service port name, backend id]`` pairs that joined or left (``op`` ``set``: the pairs
  replace the whole membership);
* ``lb.status`` {namespace, name, op, error?, id?} on ``cilia.lb.status.<ns>.<name>``.

``service`` is ``{namespace, name, type, cluster_ip ("" when headless), ports: [{name, port,
protocol, node_port (0: none)}], external_ips, lb_ips, affinity_timeout (s, 0: none),
ext_local, int_local}``. Membership is published as deltas; a consumer folds the whole
``cilia.lb.>`` history in order (``deliver="all"``) to know every service's members.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal

from msgspec import Meta

from ._types import (
    DnsLabel,
    DnsSubdomain,
    IPv4,
    OptionalIPv4,
    OptionalName,
    Payload,
    PodRef,
    Port,
    PortName,
    PortOrZero,
    Text,
)
from .tokens import token


class LbEvent(StrEnum):
    """Event types of the lb service's output (the values are the wire strings)."""

    SERVICE = "lb.service"
    SERVICE_DELETE = "lb.service.delete"
    BACKEND = "lb.backend"
    BACKEND_DELETE = "lb.backend.delete"
    MEMBERS = "lb.backends"
    STATUS = "lb.status"


OP_DELTA: Final = "delta"      # lb.backends: the pairs that joined or left
OP_SET: Final = "set"          # lb.backends: the pairs that make up the whole membership

LB_FILTER = "cilia.lb.>"


def lb_service_subject(ns: str, name: str) -> str:
    """``cilia.lb.service.<ns>.<name>``: a service's frontends."""
    return f"cilia.lb.service.{token(ns)}.{token(name)}"


def lb_backend_subject(backend_id: int) -> str:
    """``cilia.lb.backend.<id>``: one backend."""
    return f"cilia.lb.backend.{backend_id}"


def lb_members_subject(service_id: int) -> str:
    """``cilia.lb.members.<service id>``: a service's membership changes."""
    return f"cilia.lb.members.{service_id}"


def lb_status_subject(ns: str, name: str) -> str:
    """``cilia.lb.status.<ns>.<name>``: what became of one Service object."""
    return f"cilia.lb.status.{token(ns)}.{token(name)}"


SERVICE_ID_MAX = 65535            # services.lb.ids.SERVICE_ID_MAX
BACKEND_ID_MAX = (1 << 31) - 1    # services.lb.ids.BACKEND_ID_MAX
MAX_SERVICE_PORTS = 256           # ports a frontend id can index (services.nodeagent.lbstate)
MAX_AFFINITY_TIMEOUT_S = 86400    # services.lb.model.MAX_AFFINITY_TIMEOUT_S

ServiceId = Annotated[int, Meta(ge=1, le=SERVICE_ID_MAX)]
BackendId = Annotated[int, Meta(ge=1, le=BACKEND_ID_MAX)]
Protocol = Literal["TCP", "UDP", "SCTP"]
ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]
BackendState = Literal["active", "terminating"]   # services.lb.resolve.BACKEND_STATES
# [service port name, backend id]
Member = tuple[PortName, BackendId]


class ServicePortRecord(Payload):
    """One port of a service record (``node_port`` 0: none)."""

    name: PortName
    port: Port
    protocol: Protocol
    node_port: PortOrZero


class ServiceRecord(Payload):
    """A service's frontends as the lb service publishes them."""

    namespace: DnsLabel
    name: DnsSubdomain
    type: ServiceType
    cluster_ip: OptionalIPv4
    ports: Annotated[list[ServicePortRecord], Meta(max_length=MAX_SERVICE_PORTS)]
    external_ips: list[IPv4]
    lb_ips: list[IPv4]
    affinity_timeout: Annotated[int, Meta(ge=0, le=MAX_AFFINITY_TIMEOUT_S)]
    ext_local: bool
    int_local: bool


class LbServiceEvent(Payload):
    """A service and its frontends."""

    id: ServiceId
    service: ServiceRecord

    def subjects(self) -> tuple[str, ...]:
        return (lb_service_subject(self.service.namespace, self.service.name),)


class LbServiceDelete(Payload):
    """A service gone."""

    id: ServiceId
    namespace: DnsLabel
    name: DnsSubdomain

    def subjects(self) -> tuple[str, ...]:
        return (lb_service_subject(self.namespace, self.name),)


class LbBackend(Payload):
    """One backend address with a stable id."""

    id: BackendId
    address: IPv4
    port: Port
    protocol: Protocol
    node: OptionalName | None = None
    pod: PodRef | None = None
    state: BackendState | None = None

    def subjects(self) -> tuple[str, ...]:
        return (lb_backend_subject(self.id),)


class LbBackendDelete(Payload):
    """A backend no service refers to any more."""

    id: BackendId

    def subjects(self) -> tuple[str, ...]:
        return (lb_backend_subject(self.id),)


class LbMembers(Payload):
    """A membership change of one service."""

    service: ServiceId
    added: list[Member]
    removed: list[Member]
    op: Literal["delta", "set"] | None = None     # OP_DELTA (None: the same) or OP_SET

    def subjects(self) -> tuple[str, ...]:
        return (lb_members_subject(self.service),)


class LbStatus(Payload):
    """What the lb service made of one Service object."""

    namespace: DnsLabel
    name: DnsSubdomain
    op: Literal["ok", "error", "delete"]
    error: Text | None = None
    id: ServiceId | None = None

    def __post_init__(self) -> None:
        if self.op == "error" and not self.error:
            raise ValueError("error: required by op 'error'")

    def subjects(self) -> tuple[str, ...]:
        return (lb_status_subject(self.namespace, self.name),)


EVENTS: dict[str, type[Payload]] = {
    LbEvent.SERVICE: LbServiceEvent, LbEvent.SERVICE_DELETE: LbServiceDelete,
    LbEvent.BACKEND: LbBackend, LbEvent.BACKEND_DELETE: LbBackendDelete,
    LbEvent.MEMBERS: LbMembers, LbEvent.STATUS: LbStatus,
}
