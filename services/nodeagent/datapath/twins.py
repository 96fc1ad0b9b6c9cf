"""ctypes twins of every struct the kernel side sees (``services/nodeagent/bpf/lib/*.h``).

Each twin names its C struct in the comment above it and uses the C field names, so the
layout test can compare ``sizeof``/``offsetof`` of both sides field by field. Fields marked
"network byte order" are converted only through :mod:`._byteorder`.
"""

from __future__ import annotations

import ctypes as ct

u8 = ct.c_uint8
u16 = ct.c_uint16
u32 = ct.c_uint32
u64 = ct.c_uint64


class Twin(ct.Structure):
    """Base of the twins: construction from and conversion to raw map bytes."""

    C_STRUCT = ""
    C_HEADER = ""

    @classmethod
    def from_bytes(cls, raw: bytes) -> Twin:
        if len(raw) != ct.sizeof(cls):
            raise ValueError(f"{cls.__name__}: {len(raw)} bytes, expected {ct.sizeof(cls)}")
        return cls.from_buffer_copy(raw)

    def to_bytes(self) -> bytes:
        return bytes(self)


# struct ipcache_key (lib/ipcache.h)
class IpcacheKey(Twin):
    C_STRUCT, C_HEADER = "ipcache_key", "ipcache.h"
    _fields_ = (("prefixlen", u32), ("addr", u32))  # addr: network byte order


# struct ipcache_value (lib/ipcache.h)
class IpcacheValue(Twin):
    C_STRUCT, C_HEADER = "ipcache_value", "ipcache.h"
    _fields_ = (("identity", u32), ("tunnel_endpoint", u32), ("flags", u8), ("pad", u8 * 3))


# struct endpoint_key (lib/endpoints.h)
class EndpointKey(Twin):
    C_STRUCT, C_HEADER = "endpoint_key", "endpoints.h"
    _fields_ = (("addr", u32),)  # network byte order


# struct endpoint_value (lib/endpoints.h)
class EndpointValue(Twin):
    C_STRUCT, C_HEADER = "endpoint_value", "endpoints.h"
    _fields_ = (("identity", u32), ("ifindex", u32), ("endpoint_id", u16), ("flags", u8),
                ("pad", u8))


# struct policy_key (lib/policy.h)
class PolicyMapKey(Twin):
    C_STRUCT, C_HEADER = "policy_key", "policy.h"
    _fields_ = (("prefixlen", u32), ("subject", u32), ("peer", u32), ("direction", u8),
                ("proto", u8), ("dport", u16))  # dport: network byte order


# struct policy_value (lib/policy.h)
class PolicyMapValue(Twin):
    C_STRUCT, C_HEADER = "policy_value", "policy.h"
    _fields_ = (("verdict", u8), ("pad", u8 * 3))


# struct ct_key (lib/conntrack.h)
class CtKey(Twin):
    C_STRUCT, C_HEADER = "ct_key", "conntrack.h"
    _fields_ = (("saddr", u32), ("daddr", u32), ("sport", u16), ("dport", u16), ("proto", u8),
                ("direction", u8), ("pad", u16))  # addresses, ports: network byte order


# struct ct_value (lib/conntrack.h)
class CtValue(Twin):
    C_STRUCT, C_HEADER = "ct_value", "conntrack.h"
    _fields_ = (("expires_ns", u64), ("created_ns", u64), ("flags", u8), ("pad", u8 * 7))


# struct frag_key (lib/frag.h)
class FragKey(Twin):
    C_STRUCT, C_HEADER = "frag_key", "frag.h"
    _fields_ = (("saddr", u32), ("daddr", u32), ("id", u16), ("proto", u8),
                ("pad", u8))  # addresses, id: network byte order


# struct frag_value (lib/frag.h)
class FragValue(Twin):
    C_STRUCT, C_HEADER = "frag_value", "frag.h"
    _fields_ = (("sport", u16), ("dport", u16))  # network byte order


# struct flow_tuple (lib/parse.h) -- lives on the BPF stack; twinned for the layout test.
class FlowTuple(Twin):
    C_STRUCT, C_HEADER = "flow_tuple", "parse.h"
    _fields_ = (("saddr", u32), ("daddr", u32), ("sport", u16), ("dport", u16), ("proto", u8),
                ("tcp_flags", u8), ("pad", u16))


# struct pkt_info (lib/parse.h) -- on the BPF stack; twinned for the layout test.
class PktInfo(Twin):
    C_STRUCT, C_HEADER = "pkt_info", "parse.h"
    _fields_ = (("inner", FlowTuple), ("ip_id", u16), ("frag", u8), ("icmp_error", u8))


# struct flow_event (lib/events.h)
class FlowEvent(Twin):
    C_STRUCT, C_HEADER = "flow_event", "events.h"
    _fields_ = (("timestamp_ns", u64), ("src_identity", u32), ("dst_identity", u32),
                ("saddr", u32), ("daddr", u32), ("sport", u16), ("dport", u16),
                ("ifindex", u32), ("verdict", u8), ("reason", u8), ("proto", u8),
                ("direction", u8), ("tcp_flags", u8), ("pad", u8), ("endpoint_id", u16))


# struct metrics_value (lib/metrics.h) -- one per CPU per slot
class MetricsValue(Twin):
    C_STRUCT, C_HEADER = "metrics_value", "metrics.h"
    _fields_ = (("packets", u64), ("bytes", u64))


# ---- service load balancing (lib/lb.h); addresses and ports in network byte order ----------

# struct lb_svc_key (lib/lb.h)
class LbSvcKey(Twin):
    C_STRUCT, C_HEADER = "lb_svc_key", "lb.h"
    _fields_ = (("addr", u32), ("dport", u16), ("proto", u8), ("pad", u8))


# struct lb_svc_value (lib/lb.h)
class LbSvcValue(Twin):
    C_STRUCT, C_HEADER = "lb_svc_value", "lb.h"
    _fields_ = (("svc_id", u32), ("affinity_timeout", u32), ("table_int", u32),
                ("table_ext", u32), ("size_int", u32), ("size_ext", u32), ("flags", u8),
                ("pad", u8 * 3))


# struct lb_maglev_value (lib/lb.h)
class LbMaglevValue(Twin):
    C_STRUCT, C_HEADER = "lb_maglev_value", "lb.h"
    _fields_ = (("backend_id", u32),)


# struct lb_backend_key (lib/lb.h)
class LbBackendKey(Twin):
    C_STRUCT, C_HEADER = "lb_backend_key", "lb.h"
    _fields_ = (("id", u32),)


# struct lb_backend_value (lib/lb.h)
class LbBackendValue(Twin):
    C_STRUCT, C_HEADER = "lb_backend_value", "lb.h"
    _fields_ = (("addr", u32), ("port", u16), ("proto", u8), ("flags", u8))


# struct lb_ct_key (lib/lb.h)
class LbCtKey(Twin):
    C_STRUCT, C_HEADER = "lb_ct_key", "lb.h"
    _fields_ = (("saddr", u32), ("daddr", u32), ("sport", u16), ("dport", u16), ("proto", u8),
                ("kind", u8), ("pad", u16))


# struct lb_ct_value (lib/lb.h)
class LbCtValue(Twin):
    C_STRUCT, C_HEADER = "lb_ct_value", "lb.h"
    _fields_ = (("last_ns", u64), ("backend_id", u32), ("svc_id", u32), ("addr", u32),
                ("addr2", u32), ("port", u16), ("port2", u16), ("flags", u32))


# struct lb_affinity_key (lib/lb.h)
class LbAffinityKey(Twin):
    C_STRUCT, C_HEADER = "lb_affinity_key", "lb.h"
    _fields_ = (("client", u32), ("svc_id", u32))


# struct lb_affinity_value (lib/lb.h)
class LbAffinityValue(Twin):
    C_STRUCT, C_HEADER = "lb_affinity_value", "lb.h"
    _fields_ = (("last_ns", u64), ("backend_id", u32), ("pad", u32))


# struct lb_config (lib/lb.h)
class LbConfig(Twin):
    C_STRUCT, C_HEADER = "lb_config", "lb.h"
    _fields_ = (("node_ip", u32), ("flags", u32), ("snat_port_min", u16),
                ("snat_port_max", u16))  # node_ip: network byte order; ports: host order


# struct lb_node_mac_key (lib/lb.h)
class LbNodeMacKey(Twin):
    C_STRUCT, C_HEADER = "lb_node_mac_key", "lb.h"
    _fields_ = (("mac", u8 * 6), ("pad", u16))


# struct lb_node_mac_value (lib/lb.h)
class LbNodeMacValue(Twin):
    C_STRUCT, C_HEADER = "lb_node_mac_value", "lb.h"
    _fields_ = (("node_ip", u32),)  # network byte order


LB_TWINS: tuple[type[Twin], ...] = (
    LbSvcKey, LbSvcValue, LbMaglevValue, LbBackendKey, LbBackendValue, LbCtKey,
    LbCtValue, LbAffinityKey, LbAffinityValue, LbConfig, LbNodeMacKey, LbNodeMacValue,
)

ALL_TWINS: tuple[type[Twin], ...] = (
    IpcacheKey, IpcacheValue, EndpointKey, EndpointValue, PolicyMapKey, PolicyMapValue,
    CtKey, CtValue, FragKey, FragValue, FlowTuple, PktInfo, FlowEvent, MetricsValue, *LB_TWINS,
)
