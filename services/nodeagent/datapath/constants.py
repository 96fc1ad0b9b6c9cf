"""Named constants of the datapath, shared by the C build flags and the Python side.

The C headers under ``services/nodeagent/bpf/lib`` receive the sizes and lifetimes below as
``-D`` flags (see :func:`build_cflags`), so this module is their single source of truth.
"""

from __future__ import annotations

from pathlib import Path

from services.common.paths import PIN_ROOT  # every node's pinned objects: <PIN_ROOT>/<node>/<map>

# Directory holding the C sources (bpf_lxc.c and lib/*.h).
BPF_SRC_DIR = Path(__file__).resolve().parent.parent / "bpf"
PROGRAM_SOURCE = "bpf_lxc.c"
PROG_FROM_POD = "cil_from_pod"   # tc ingress of the host-side veth: the pod's egress policy
PROG_TO_POD = "cil_to_pod"       # tc egress of the host-side veth: the pod's ingress policy

# Pinned map file names (under the node's pin directory).
MAP_IPCACHE = "ipcache"
MAP_ENDPOINTS = "endpoints"
MAP_POLICY = "policy"
MAP_CONNTRACK = "conntrack"
MAP_EVENTS = "events"
MAP_METRICS = "metrics"
MAP_FRAGMENTS = "fragments"     # first fragments' ports (lib/frag.h)
# Service load balancing (lib/lb.h; services/nodeagent/datapath/lbmaps.py).
MAP_LB_SERVICES = "lb_services"
MAP_LB_BACKENDS = "lb_backends"
MAP_LB_MAGLEV = "lb_maglev_slots"
MAP_LB_CT = "lb_ct"
MAP_LB_AFFINITY = "lb_affinity"
MAP_LB_CONFIG = "lb_config"
MAP_LB_NODE_MACS = "lb_node_macs"   # underlay MACs of cluster nodes (DSR senders)
LB_MAPS = (MAP_LB_SERVICES, MAP_LB_BACKENDS, MAP_LB_MAGLEV, MAP_LB_CT, MAP_LB_AFFINITY,
           MAP_LB_CONFIG, MAP_LB_NODE_MACS)
ALL_MAPS = (MAP_IPCACHE, MAP_ENDPOINTS, MAP_POLICY, MAP_CONNTRACK, MAP_EVENTS, MAP_METRICS,
            MAP_FRAGMENTS, *LB_MAPS)

# Map capacities (entries) and the ring buffer size (bytes, a power of two pages).
IPCACHE_MAX = 65536
ENDPOINTS_MAX = 4096
POLICY_MAX = 65536
CT_MAX = 131072
FRAG_MAX = 8192                # datagrams in fragments tracked at once (LRU)
EVENTS_BYTES = 1 << 22
LB_SERVICES_MAX = 65536        # frontends (VIP, port, protocol)
LB_BACKENDS_MAX = 65536
LB_MAGLEV_MAX = 1 << 22        # Maglev slots of all tables together (an array: 16 MiB)
LB_CT_MAX = 131072             # LB conntrack (LRU): chosen backends and reverse NAT
LB_AFFINITY_MAX = 65536        # sessionAffinity ClientIP entries (LRU)
LB_NODES_MAX = 4096            # cluster nodes whose underlay MAC may send DSR options
# NodePort SNAT source ports (lb_config). Above Linux's default ephemeral range (32768-60999)
# so that a port the node's own connections use is never taken for a translated flow.
SNAT_PORT_MIN = 61000
SNAT_PORT_MAX = 65535
LB_CFG_F_DSR = 0x1             # lb_config.flags: honour DSR options from cluster nodes

# Per-CPU verdict counters (lib/metrics.h): slot = reason * 2 + direction; slot 0 counts
# events the ring buffer could not take.
METRICS_SLOTS = 512
METRICS_SLOT_EVENTS_LOST = 0
FORWARD_REASON_LIMIT = 128     # reasons below this are forwards, the rest drops

# Conntrack lifetimes in seconds, and how coarse the kernel's deadline refresh is.
CT_LIFETIME_TCP = 21600        # established TCP (Cilium's default: 6 h)
CT_LIFETIME_SYN = 60           # TCP not yet answered
CT_LIFETIME_NONTCP = 60        # UDP, ICMP and other protocols
CT_LIFETIME_CLOSE = 10         # TCP after FIN or RST
CT_REFRESH_MS = 1000           # deadline moves only when it would move by more than this

# Endpoint enforcement flags (lib/endpoints.h).
ENDPOINT_F_ENFORCE_INGRESS = 0x1
ENDPOINT_F_ENFORCE_EGRESS = 0x2

# Conntrack entry flags (lib/conntrack.h).
CT_F_SEEN_REPLY = 0x1
CT_F_CLOSING = 0x2

# LPM bits of the policy key that are always matched (subject, peer, direction, proto).
POLICY_FIXED_PREFIX_BITS = 80
PORT_BITS = 16
MAX_PORT = (1 << PORT_BITS) - 1

# Flow verdicts and reasons (lib/events.h); drop reasons carry Cilium's numbers.
FLOW_VERDICT_FORWARDED = 1
FLOW_VERDICT_DROPPED = 2
VERDICT_NAMES = {FLOW_VERDICT_FORWARDED: "FORWARDED", FLOW_VERDICT_DROPPED: "DROPPED"}
REASON_POLICY_ALLOWED = 1
REASON_NOT_ENFORCED = 2
DROP_INVALID_SOURCE = 132
DROP_POLICY = 133
DROP_NO_LXC = 152              # to a pod veth, but no endpoint of it for the destination
DROP_POLICY_DENY = 181
DROP_NO_SERVICE = 158          # a service frontend without backends (lib/lb.h)
DROP_NO_TUNNEL_ENDPOINT = 160  # tunnel mode: no node for the destination (lib/overlay.h)
DROP_INVALID = 134             # truncated or invalid IPv4 header (lib/parse.h)
DROP_UNKNOWN_L3 = 139          # an ethertype other than IPv4/ARP, IPv6 included
DROP_UNSUPPORTED_L2 = 166      # not an Ethernet II frame
DROP_NAT_NO_MAPPING = 167      # NodePort SNAT: no free source port (bpf_nodeport.c)
DROP_UNKNOWN_SENDER = 172      # DSR option from a host that is no cluster node
DROP_FRAG_NOT_FOUND = 175      # later IPv4 fragment without its first (lib/frag.h)
DROP_VLAN_FILTERED = 182       # VLAN-tagged frame on a pod veth
REASON_NAMES = {
    DROP_INVALID: "invalid packet",
    DROP_UNKNOWN_L3: "unsupported L3 protocol",
    DROP_UNSUPPORTED_L2: "unsupported L2 protocol",
    DROP_NAT_NO_MAPPING: "no mapping for NAT masquerade",
    DROP_UNKNOWN_SENDER: "unknown sender",
    DROP_FRAG_NOT_FOUND: "first logical datagram fragment not found",
    DROP_VLAN_FILTERED: "VLAN traffic disallowed by VLAN filter",
    DROP_NO_SERVICE: "no service backend",
    DROP_NO_TUNNEL_ENDPOINT: "no tunnel endpoint",
    REASON_POLICY_ALLOWED: "policy allowed",
    REASON_NOT_ENFORCED: "policy not enforced",
    DROP_INVALID_SOURCE: "invalid source ip",
    DROP_POLICY: "policy denied",
    DROP_NO_LXC: "no matching local container found",
    DROP_POLICY_DENY: "policy denied by deny rule",
}

# Kernel bpf_ktime_get_ns() is CLOCK_MONOTONIC.
NS_PER_SEC = 1_000_000_000


def pin_dir(node: str) -> Path:
    """The bpffs directory holding a node's pinned maps."""
    if not node or "/" in node or node in (".", ".."):
        raise ValueError(f"node name {node!r} is not a valid pin directory name")
    return PIN_ROOT / node


def build_cflags(node_pin_dir: Path) -> list[str]:
    """The ``-D`` flags that configure the C sources for one node."""
    defines = {
        "CILIA_PIN_DIR": f'"{node_pin_dir}"',
        "CILIA_IPCACHE_MAX": IPCACHE_MAX,
        "CILIA_ENDPOINTS_MAX": ENDPOINTS_MAX,
        "CILIA_POLICY_MAX": POLICY_MAX,
        "CILIA_CT_MAX": CT_MAX,
        "CILIA_FRAG_MAX": FRAG_MAX,
        "CILIA_EVENTS_BYTES": EVENTS_BYTES,
        "CILIA_CT_LIFETIME_TCP": CT_LIFETIME_TCP,
        "CILIA_CT_LIFETIME_SYN": CT_LIFETIME_SYN,
        "CILIA_CT_LIFETIME_NONTCP": CT_LIFETIME_NONTCP,
        "CILIA_CT_LIFETIME_CLOSE": CT_LIFETIME_CLOSE,
        "CILIA_CT_REFRESH_MS": CT_REFRESH_MS,
        "CILIA_LB_SERVICES_MAX": LB_SERVICES_MAX,
        "CILIA_LB_BACKENDS_MAX": LB_BACKENDS_MAX,
        "CILIA_LB_MAGLEV_MAX": LB_MAGLEV_MAX,
        "CILIA_LB_CT_MAX": LB_CT_MAX,
        "CILIA_LB_AFFINITY_MAX": LB_AFFINITY_MAX,
        "CILIA_LB_NODES_MAX": LB_NODES_MAX,
    }
    return [f"-D{name}={value}" for name, value in defines.items()]
