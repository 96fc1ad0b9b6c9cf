"""The lab's addressing and naming plan: pure functions, no I/O.

Address plan (documented in the report and ``cilia lab up --help``):

- underlay ``172.31.0.0/24`` on a bridge ``br0`` in ``cilia-<lab>-underlay``;
- node ``i`` (1-based): netns ``cilia-<lab>-node<i>``, node name ``<lab>-node<i>``, underlay
  address ``172.31.0.(10+i)``, pod CIDR ``10.244.<i>.0/24`` with gateway ``10.244.<i>.1``;
- external host ("the world"): netns ``cilia-<lab>-external``, ``172.31.0.254`` on the underlay
  plus ``203.0.113.10-13`` (TEST-NET-3, outside every cluster CIDR, named in
  :mod:`services.common.world`); it is the nodes' default
  gateway and routes each pod CIDR to its node (an upstream router that knows the pod CIDRs,
  as with native routing and BGP) but forwards nothing itself.

Routing between nodes (``--routing``): ``native`` routes each remote pod CIDR via the remote
node's underlay address; ``tunnel`` adds a VXLAN device ``cilia_vxlan`` in collect-metadata
mode (UDP 8472, MTU 1450 and pod MTU 1450 for the 50 bytes of encapsulation) to every node and
routes each remote pod CIDR into it, ``via <remote node address> onlink`` with a permanent
neighbour entry for the remote device's MAC (``02:c1:1a:00:00:<i>``); the overlay programs
choose the remote node (ipcache tunnel endpoint, else that route's gateway) and carry the
source identity in the VNI.

Every netns name of a lab starts with ``cilia-<lab>-``; lab names have no ``-`` so that prefix
identifies exactly one lab.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from services.common.world import DEFAULT_WORLD, World
from services.lab.errors import LabConfigError
from services.nodeagent.datapath.overlay import (
    ROUTING_MODES,
    ROUTING_NATIVE,
    ROUTING_TUNNEL,
    overlay_mtu,
    validate_routing,
)

NETNS_PREFIX = "cilia"
UNDERLAY_CIDR = ipaddress.IPv4Network("172.31.0.0/24")
NODE_IP_OFFSET = 10                 # node i has underlay host address 10 + i
EXTERNAL_IP = ipaddress.IPv4Address("172.31.0.254")
CLUSTER_POD_CIDR = ipaddress.IPv4Network("10.244.0.0/16")
POD_CIDR_PREFIX = 24
MAX_NODES = 200                     # keeps node addresses below EXTERNAL_IP and in the /16
BRIDGE = "br0"
NODE_UPLINK = "eth0"                # the node's (and external host's) underlay interface
EXTERNAL_PORT = "ext"               # the external host's port on the bridge
LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")
MAX_NETNS_NAME = 100                # netns names are files under /run/netns; stay well short
NETNS_HASH_LEN = 10
# the VXLAN device of node i has MAC 02:c1:1a:00:<i high byte>:<i low byte> (locally administered)
OVERLAY_MAC_PREFIX = "02:c1:1a:00"


@dataclass(frozen=True)
class NodePlan:
    """One node of the lab."""

    index: int
    name: str
    netns: str
    node_ip: ipaddress.IPv4Address
    pod_cidr: ipaddress.IPv4Network
    underlay_port: str

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.pod_cidr.network_address + 1

    @property
    def overlay_mac(self) -> str:
        """The MAC of this node's VXLAN device (tunnel mode)."""
        return f"{OVERLAY_MAC_PREFIX}:{self.index >> 8:02x}:{self.index & 0xFF:02x}"


@dataclass(frozen=True)
class LabPlan:
    """Every name and address of one lab."""

    name: str
    underlay_netns: str
    external_netns: str
    nodes: tuple[NodePlan, ...]
    routing: str = ROUTING_NATIVE
    world: World = DEFAULT_WORLD       # the external host's names and addresses

    @property
    def tunnel(self) -> bool:
        return self.routing == ROUTING_TUNNEL

    @property
    def pod_mtu(self) -> int:
        """MTU of the pods' interfaces: room for the VXLAN header in tunnel mode, else 0
        (the kernel's default)."""
        return overlay_mtu() if self.tunnel else 0

    @property
    def prefix(self) -> str:
        """The netns name prefix that every namespace of this lab carries."""
        return lab_prefix(self.name)

    def node_objects(self) -> list[dict[str, Any]]:
        """Every node as a Kubernetes Node object (see :func:`node_object`)."""
        return [node_object(n) for n in self.nodes]

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabConfigError(f"lab {self.name}: no node {name!r} "
                             f"(nodes: {', '.join(n.name for n in self.nodes)})")


def validate_lab_name(name: str) -> str:
    if not LAB_NAME_RE.match(name):
        raise LabConfigError(f"lab name {name!r}: must be 1-16 lower case letters and digits, "
                             "starting with a letter")
    return name


def lab_prefix(name: str) -> str:
    return f"{NETNS_PREFIX}-{name}-"


def node_name(lab: str, index: int) -> str:
    return f"{lab}-node{index}"


def node_object(node: NodePlan) -> dict[str, Any]:
    """The Kubernetes Node object of a lab node, for the source to publish on the bus.

    ``InternalIP`` is the underlay address; ``CiliumInternalIP`` the pod gateway (Cilium's
    router IP), also a node address: host on the node itself, remote-node elsewhere.
    """
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name,
                                                    "kubernetes.io/os": "linux"}},
        "spec": {"podCIDR": str(node.pod_cidr), "podCIDRs": [str(node.pod_cidr)]},
        "status": {"addresses": [{"type": "InternalIP", "address": str(node.node_ip)},
                                 {"type": "CiliumInternalIP", "address": str(node.gateway)}]},
    }


def plan_lab(name: str, nodes: int, routing: str = ROUTING_NATIVE,
             world: World = DEFAULT_WORLD) -> LabPlan:
    """The plan of a lab with ``nodes`` nodes, a routing mode (``native`` or ``tunnel``) and
    the names of its world.

    Raises:
        LabConfigError: bad name, node count or routing mode.
    """
    validate_lab_name(name)
    try:
        validate_routing(routing)
    except ValueError:
        raise LabConfigError(f"lab {name}: routing must be one of {', '.join(ROUTING_MODES)}, "
                             f"got {routing!r}") from None
    if not 1 <= nodes <= MAX_NODES:
        raise LabConfigError(f"lab {name}: nodes must be 1-{MAX_NODES}, got {nodes}")
    cidrs = list(CLUSTER_POD_CIDR.subnets(new_prefix=POD_CIDR_PREFIX))
    prefix = lab_prefix(name)
    return LabPlan(
        name=name,
        underlay_netns=f"{prefix}underlay",
        external_netns=f"{prefix}external",
        nodes=tuple(NodePlan(index=i, name=node_name(name, i), netns=f"{prefix}node{i}",
                             node_ip=UNDERLAY_CIDR.network_address + NODE_IP_OFFSET + i,
                             pod_cidr=cidrs[i], underlay_port=f"n{i}")
                    for i in range(1, nodes + 1)),
        routing=routing,
        world=world,
    )


def pod_netns_name(lab: str, namespace: str, pod: str) -> str:
    """The pod sandbox's netns name: ``cilia-<lab>-<ns>_<pod>``, hashed when too long.

    ``_`` cannot occur in namespace or pod names, so distinct pods never share a name.
    """
    full = f"{lab_prefix(lab)}{namespace}_{pod}"
    if len(full) <= MAX_NETNS_NAME:
        return full
    digest = hashlib.sha256(f"{namespace}/{pod}".encode()).hexdigest()[:NETNS_HASH_LEN]
    return f"{full[:MAX_NETNS_NAME - NETNS_HASH_LEN - 1]}-{digest}"


def container_id(uid: str) -> str:
    """The sandbox (container) id of a pod: 64 hex digits, like containerd's."""
    return hashlib.sha256(uid.encode()).hexdigest()
