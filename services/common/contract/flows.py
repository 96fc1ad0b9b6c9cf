"""Flows: ``flow`` {node, flows} on ``cilia.flows.<node>`` (core NATS, not stored), and the
same payload as the answer to a ``cilia.ctl.flows`` request (an agent's recent flows).

Each flow is a datapath verdict (services.nodeagent.datapath.flows.FlowRecord) with its wall
clock ``time`` and the pods behind both addresses, when known; or, with ``type`` ``dns``, one
DNS query the node's DNS proxy handled (``dns`` says what was asked and answered; ``verdict``
``DROPPED`` for a query the DNS rules refused, ``FORWARDED`` for one it forwarded).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from ._types import (
    U16,
    U32,
    U64,
    DnsSubdomain,
    Fqdn,
    IPv4,
    Payload,
    PodRef,
    PortOrZero,
    Proto,
    Seconds,
    Text,
)
from .tokens import token


class FlowEvent(StrEnum):
    """Event types of flows (the values are the wire strings)."""

    FLOW = "flow"


FLOWS = "cilia.flows"               # cilia.flows.<node> (core NATS, not stored)
FLOWS_FILTER = f"{FLOWS}.>"


def flows_subject(node: str) -> str:
    """``cilia.flows.<node>``: one node's flows."""
    return f"{FLOWS}.{token(node)}"


FLOW_TYPE_L3_L4 = "l3_l4"
FLOW_TYPE_DNS = "dns"


class DnsInfo(Payload):
    """What a DNS flow asked and got: the name (lower case, no trailing dot), the query type
    (``A``), the answer's code (``NOERROR``, ``NXDOMAIN``, ``REFUSED``, ``SERVFAIL``) and
    the addresses and TTL of its A records."""

    query: Fqdn
    qtype: Text
    rcode: Text
    ips: list[IPv4] = []
    ttl: U32 = 0


class Flow(Payload):
    """One verdict."""

    time_ns: U64
    verdict: str
    reason: U16
    reason_name: str
    direction: Literal["ingress", "egress", "?"]
    src_identity: U32
    dst_identity: U32
    src_ip: IPv4
    dst_ip: IPv4
    src_port: PortOrZero
    dst_port: PortOrZero
    proto: Proto
    proto_name: str
    ifindex: U32
    endpoint_id: U16
    tcp_flags: Proto
    time: Seconds
    src_pod: PodRef
    dst_pod: PodRef
    type: Literal["l3_l4", "dns"] = "l3_l4"
    dns: DnsInfo | None = None

    def __post_init__(self) -> None:
        if (self.type == FLOW_TYPE_DNS) != (self.dns is not None):
            raise ValueError("dns: a dns flow has it, another flow has not")


class FlowBatch(Payload):
    """A node's flows since its last batch."""

    node: DnsSubdomain
    flows: list[Flow]

    def subjects(self) -> tuple[str, ...]:
        return (flows_subject(self.node),)


EVENTS: dict[str, type[Payload]] = {FlowEvent.FLOW: FlowBatch}
