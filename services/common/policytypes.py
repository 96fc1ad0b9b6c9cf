"""The logical policy map entries shared by the policy compiler, the agent and the trace tool.

The policy compiler expands rules x selector members into these entries; the node agent turns
them into kernel map keys (its ctypes twins live in ``services.nodeagent``). Keeping one logical
form here means the agent and ``cilia policy trace`` always mean the same thing.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

ANY_PEER = 0    # peer identity wildcard
ANY_PROTO = 0   # protocol wildcard
ANY_PORT = 0    # port wildcard (with end_port 0)
MAX_PORT = 65535   # the highest TCP/UDP port

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_SCTP = 132

PROTO_BY_NAME: dict[str, int] = {"TCP": PROTO_TCP, "UDP": PROTO_UDP, "SCTP": PROTO_SCTP,
                                 "ICMP": PROTO_ICMP, "ANY": ANY_PROTO}
PROTO_NAMES: dict[int, str] = {v: k for k, v in PROTO_BY_NAME.items()}


class Direction(IntEnum):
    """Traffic direction relative to the subject endpoint (Cilium's numbering)."""

    INGRESS = 0
    EGRESS = 1


class Verdict(IntEnum):
    ALLOW = 1
    DENY = 2


class PolicyKey(NamedTuple):
    """One policy map entry's key.

    ``port``/``end_port`` give an inclusive range; a single port has ``end_port == port``;
    ``port == end_port == 0`` is any port.
    """

    subject: int
    peer: int
    direction: int
    proto: int
    port: int
    end_port: int
