"""The events ring buffer (``lib/events.h``): ``struct flow_event`` verdict records.

The kernel writes a record for every new flow forwarded and every drop; the agent turns them
into flow events (its reader, which maps the ring buffer, is kernel access:
:class:`services.nodeagent.datapath.kernel.FlowReader`). Decoding a record is pure.
"""

from __future__ import annotations

import ctypes as ct
from dataclasses import asdict, dataclass
from typing import Any

from services.common.policytypes import PROTO_NAMES, Direction
from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath._byteorder import be16_to_port, be32_to_ip
from services.nodeagent.datapath.maps.spec import MapSpec, Twin, u8, u16, u32, u64

NAME = "events"
EVENTS_BYTES = 1 << 22         # ring buffer size (bytes, a power of two pages)


# struct flow_event (lib/events.h)
class FlowEvent(Twin):
    C_STRUCT, C_HEADER = "flow_event", "events.h"
    _fields_ = (("timestamp_ns", u64), ("src_identity", u32), ("dst_identity", u32),
                ("saddr", u32), ("daddr", u32), ("sport", u16), ("dport", u16),
                ("ifindex", u32), ("verdict", u8), ("reason", u8), ("proto", u8),
                ("direction", u8), ("tcp_flags", u8), ("pad", u8), ("endpoint_id", u16))


@dataclass(frozen=True)
class FlowRecord:
    """One verdict of the datapath (a new flow forwarded, or a packet dropped)."""

    time_ns: int            # CLOCK_MONOTONIC (bpf_ktime_get_ns)
    verdict: str            # "FORWARDED" | "DROPPED"
    reason: int
    reason_name: str
    direction: str          # policy direction of the endpoint: "ingress" | "egress"
    src_identity: int
    dst_identity: int
    src_ip: str
    dst_ip: str
    src_port: int           # ICMP: the echo id for requests, 0 for replies
    dst_port: int
    proto: int
    proto_name: str
    ifindex: int
    endpoint_id: int
    tcp_flags: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decode_event(raw: bytes) -> FlowRecord:
    """A ``struct flow_event`` as a record (pure)."""
    ev = FlowEvent.from_buffer_copy(raw[:ct.sizeof(FlowEvent)])
    return FlowRecord(
        time_ns=ev.timestamp_ns,
        verdict=c.VERDICT_NAMES.get(ev.verdict, str(ev.verdict)),
        reason=ev.reason,
        reason_name=c.REASON_NAMES.get(ev.reason, f"reason {ev.reason}"),
        direction=Direction(ev.direction).name.lower() if ev.direction in (0, 1) else "?",
        src_identity=ev.src_identity,
        dst_identity=ev.dst_identity,
        src_ip=be32_to_ip(ev.saddr),
        dst_ip=be32_to_ip(ev.daddr),
        src_port=be16_to_port(ev.sport),
        dst_port=be16_to_port(ev.dport),
        proto=ev.proto,
        proto_name=PROTO_NAMES.get(ev.proto, str(ev.proto)),
        ifindex=ev.ifindex,
        endpoint_id=ev.endpoint_id,
        tcp_flags=ev.tcp_flags,
    )


SPEC: MapSpec[None] = MapSpec(
    name=NAME, header="events.h", map_type="ringbuf", key=None, value=FlowEvent,
    max_entries=EVENTS_BYTES, cflags={"CILIA_EVENTS_BYTES": EVENTS_BYTES})
