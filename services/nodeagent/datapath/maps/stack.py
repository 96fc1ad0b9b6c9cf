"""Twins of the C structs that live on the BPF stack, in no map (``lib/parse.h``).

Userspace never reads them; they are twinned so that the layout test covers every struct the
headers declare (the registry lists them with the maps' twins).
"""

from __future__ import annotations

from services.nodeagent.datapath.maps.spec import Twin, u8, u16, u32


# struct flow_tuple (lib/parse.h)
class FlowTuple(Twin):
    C_STRUCT, C_HEADER = "flow_tuple", "parse.h"
    _fields_ = (("saddr", u32), ("daddr", u32), ("sport", u16), ("dport", u16), ("proto", u8),
                ("tcp_flags", u8), ("pad", u16))


# struct pkt_info (lib/parse.h)
class PktInfo(Twin):
    C_STRUCT, C_HEADER = "pkt_info", "parse.h"
    _fields_ = (("inner", FlowTuple), ("ip_id", u16), ("frag", u8), ("icmp_error", u8))


STACK_TWINS: tuple[type[Twin], ...] = (FlowTuple, PktInfo)
