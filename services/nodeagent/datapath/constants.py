"""Named constants of the datapath that belong to no single map: where pins and sources live,
the programs' names, verdicts and reasons (``lib/events.h``), port bits.

Each map's own constants (its pin name, capacity, flags, lifetimes) live in its module under
:mod:`services.nodeagent.datapath.maps`; the ``-D`` flags the C headers receive come from
there (:func:`services.nodeagent.datapath.maps.registry.build_cflags`).
"""

from __future__ import annotations

from pathlib import Path

from services.common.paths import PIN_ROOT  # every node's pinned objects: <PIN_ROOT>/<node>/<map>

# Directory holding the C sources (bpf_lxc.c and lib/*.h).
BPF_SRC_DIR = Path(__file__).resolve().parent.parent / "bpf"
PROGRAM_SOURCE = "bpf_lxc.c"
PROG_FROM_POD = "cil_from_pod"   # tc ingress of the host-side veth: the pod's egress policy
PROG_TO_POD = "cil_to_pod"       # tc egress of the host-side veth: the pod's ingress policy

# The underlay programs (bpf_nodeport.c): NodePort/LoadBalancer/externalIP frontends.
NODEPORT_SOURCE = "bpf_nodeport.c"
PROG_FROM_NETDEV = "cil_from_netdev"   # tc ingress of the underlay interface
PROG_TO_NETDEV = "cil_to_netdev"       # tc egress of the underlay interface

# Verdict counters (lib/metrics.h): reasons below this are forwards, the rest drops.
FORWARD_REASON_LIMIT = 128

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
DROP_PROXY_LOOKUP_FAILED = 162  # no DNS proxy socket for a redirected query (lib/proxy.h)
DROP_PROXY_SET_FAILED = 163     # the DNS proxy's socket could not be assigned
REASON_NAMES = {
    DROP_INVALID: "invalid packet",
    DROP_UNKNOWN_L3: "unsupported L3 protocol",
    DROP_UNSUPPORTED_L2: "unsupported L2 protocol",
    DROP_NAT_NO_MAPPING: "no mapping for NAT masquerade",
    DROP_UNKNOWN_SENDER: "unknown sender",
    DROP_FRAG_NOT_FOUND: "first logical datagram fragment not found",
    DROP_VLAN_FILTERED: "VLAN traffic disallowed by VLAN filter",
    DROP_NO_SERVICE: "no service backend",
    DROP_PROXY_LOOKUP_FAILED: "proxy lookup failed",
    DROP_PROXY_SET_FAILED: "proxy set failed",
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
