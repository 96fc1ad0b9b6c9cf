"""Local endpoints: the pod's veth pair, address, routes and neighbours (pyroute2 only).

Wiring of one endpoint (Cilium-style, all /32):

- node netns: host side ``lxc<hash>`` (up, no address), route ``<pod ip>/32 dev lxc<hash>
  scope link``, permanent neighbour ``<pod ip> -> <pod mac>``;
- pod netns: ``CNI_IFNAME`` with ``<pod ip>/32``, route ``<gateway>/32 dev <ifname> scope
  link``, ``default via <gateway>``, permanent neighbour ``<gateway> -> <lxc mac>`` (so the pod
  never needs ARP towards the node);
- the gateway is the first address of the node's pod CIDR, held by the node on ``lo``
  (the lab sets it up; see :mod:`services.lab.topology`).

:class:`EndpointStore` persists the records so that endpoint ids and addresses survive an agent
restart; :class:`EndpointManager` is the netlink shell.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from services.common.errors import CiliaError
from services.common.netns import open_iproute
from services.common.paths import PIN_ROOT, run_root, state_root, write_json_atomic
from services.nodeagent.ipam import IpamStore, gateway_of

IFNAMSIZ = 15              # usable characters of a Linux interface name
HOST_IF_PREFIX = "lxc"     # Cilium's prefix of host-side pod veths
MIN_ENDPOINT_ID = 1        # 0 means "no endpoint" in the datapath
MAX_ENDPOINT_ID = 0xFFFF   # endpoint ids are u16, as in Cilium
ENDPOINTS_STATE_VERSION = 1


class EndpointError(CiliaError):
    """Base of the endpoint errors; the message names the container and what failed."""


class EndpointNotFoundError(EndpointError):
    """No endpoint for this container id (or its netns is gone)."""


class EndpointCheckError(EndpointError):
    """The endpoint's plumbing differs from what was created."""


class EndpointNotReadyError(EndpointError):
    """A new endpoint's identity or policy did not reach the node's maps in time (the
    runtime should try ADD again later); the message names the pod and what was missing."""


# "k8s": the node's Node object comes from a Kubernetes API server through the watcher (the lab
# on `lab up --k8s-api`), so the agent does not register it on the bus itself.
NODE_SOURCE_ENV = "CILIA_NODE_SOURCE"


@dataclass(frozen=True)
class NodeConfig:
    """What an agent knows about its node.

    Attributes:
        name: the node name (unique in the cluster; ``<lab>-node<i>`` in the lab).
        node_ip: the node's underlay address.
        pod_cidr: the node's pod CIDR.
        netns: name or path of the node's network namespace; None: the agent's own netns.
        state_dir: where the agent keeps ipam.json and endpoints.json.
        socket_path: the CNI server's unix socket.
        routing: how pods reach other nodes' pods: ``native`` (kernel routes via the node
            addresses) or ``tunnel`` (the VXLAN overlay, identity in the VNI).
        pod_mtu: MTU of the pods' interfaces; 0 leaves the kernel's default.
    """

    name: str
    node_ip: str
    pod_cidr: str
    netns: str | None
    state_dir: str
    socket_path: str
    routing: str = "native"
    pod_mtu: int = 0

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return gateway_of(ipaddress.IPv4Network(self.pod_cidr))

    @property
    def bpffs_dir(self) -> Path:
        """Where this node's maps and programs are pinned."""
        return PIN_ROOT / self.name

    @classmethod
    def default_paths(cls, name: str, node_ip: str, pod_cidr: str,
                      netns: str | None) -> NodeConfig:
        """A config with the standard state dir and socket path for ``name``."""
        return cls(name=name, node_ip=node_ip, pod_cidr=pod_cidr, netns=netns,
                   state_dir=str(state_root() / "nodes" / name),
                   socket_path=str(run_root() / name / "cni.sock"))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeConfig:
        missing = [f.name for f in fields(cls) if f.name not in data
                   and f.default is MISSING]
        if missing:
            raise EndpointError(f"node config: missing field {missing[0]!r}")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise EndpointError(f"node config {path}: {exc}") from exc


@dataclass(frozen=True)
class Endpoint:
    """One local endpoint, as handed to the agent's hooks and kept in endpoints.json."""

    id: int
    container_id: str
    pod_namespace: str
    pod_name: str
    ipv4: str
    gateway: str
    host_ifname: str
    host_ifindex: int
    host_mac: str
    pod_ifname: str
    pod_mac: str
    netns_path: str
    node: str
    node_netns: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Endpoint:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def host_ifname(container_id: str) -> str:
    """The host-side veth name of a container: ``lxc`` + 12 hex digits (15 characters)."""
    digest = hashlib.sha256(container_id.encode()).hexdigest()
    return (HOST_IF_PREFIX + digest)[:IFNAMSIZ]


def lowest_free_id(used: set[int]) -> int:
    """The lowest endpoint id not in ``used``."""
    for candidate in range(MIN_ENDPOINT_ID, MAX_ENDPOINT_ID + 1):
        if candidate not in used:
            return candidate
    raise EndpointError("no free endpoint id")


class EndpointStore:
    """Endpoint records by container id, persisted in ``<state_dir>/endpoints.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._items: dict[str, Endpoint] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("version") != ENDPOINTS_STATE_VERSION:
                    raise ValueError(f"unsupported version {data.get('version')!r}")
                for raw in data["endpoints"]:
                    ep = Endpoint.from_json(raw)
                    self._items[ep.container_id] = ep
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise EndpointError(f"endpoint state {path}: {exc}") from exc

    def get(self, container_id: str) -> Endpoint | None:
        return self._items.get(container_id)

    def all(self) -> list[Endpoint]:
        return sorted(self._items.values(), key=lambda e: e.id)

    def next_id(self) -> int:
        return lowest_free_id({e.id for e in self._items.values()})

    def put(self, ep: Endpoint) -> None:
        self._items[ep.container_id] = ep
        self._save()

    def remove(self, container_id: str) -> Endpoint | None:
        ep = self._items.pop(container_id, None)
        if ep is not None:
            self._save()
        return ep

    def _save(self) -> None:
        write_json_atomic(self.path, {"version": ENDPOINTS_STATE_VERSION,
                                      "endpoints": [e.to_json() for e in self.all()]})


@dataclass(frozen=True)
class EndpointRequest:
    """What the CNI ADD asks for."""

    container_id: str
    netns_path: str
    ifname: str
    pod_namespace: str
    pod_name: str


@contextmanager
def _ipr(netns: str | None) -> Iterator[IPRoute]:
    ipr = open_iproute(netns)
    try:
        yield ipr
    finally:
        ipr.close()


def _first_index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _mac(ipr: IPRoute, index: int) -> str:
    return str(ipr.get_links(index)[0].get("address"))


class EndpointManager:
    """Creates, checks and deletes endpoints on one node (blocking netlink calls).

    Not thread-safe: the CNI server serialises calls.
    """

    def __init__(self, node: NodeConfig) -> None:
        self.node = node
        state = Path(node.state_dir)
        self.ipam = IpamStore(state / "ipam.json", ipaddress.IPv4Network(node.pod_cidr))
        self.store = EndpointStore(state / "endpoints.json")

    def create(self, req: EndpointRequest) -> tuple[Endpoint, bool]:
        """Create the endpoint of a container, or return the existing one.

        Returns:
            (endpoint, created): created is False when the container already had one.

        Raises:
            EndpointNotFoundError: the pod netns does not exist.
            EndpointError: netlink failed (everything created so far is removed).
            IpamExhaustedError: the pod CIDR is full.
        """
        existing = self.store.get(req.container_id)
        if existing is not None:
            return existing, False
        if not os.path.exists(req.netns_path):
            raise EndpointNotFoundError(f"container {req.container_id}: netns "
                                        f"{req.netns_path} does not exist")
        ip = self.ipam.allocate(req.container_id)
        hostif = host_ifname(req.container_id)
        self._unplumb(hostif)  # a leftover of a crash between plumbing and commit
        try:
            ep = self._plumb(req, ip, hostif, self.store.next_id())
        except BaseException:
            self._unplumb(hostif)
            self.ipam.release(req.container_id)
            raise
        return ep, True

    def commit(self, ep: Endpoint) -> None:
        """Persist a created endpoint (after the agent's hook accepted it)."""
        self.store.put(ep)

    def rollback(self, ep: Endpoint) -> None:
        """Undo :meth:`create` for an endpoint that was not committed."""
        self._unplumb(ep.host_ifname)
        self.ipam.release(ep.container_id)

    def delete(self, container_id: str) -> Endpoint | None:
        """Remove a container's endpoint; idempotent (None when there was nothing)."""
        ep = self.store.get(container_id)
        self._unplumb(ep.host_ifname if ep else host_ifname(container_id))
        self.ipam.release(container_id)
        return self.store.remove(container_id)

    def get(self, container_id: str) -> Endpoint | None:
        return self.store.get(container_id)

    def all(self) -> list[Endpoint]:
        return self.store.all()

    def check(self, container_id: str) -> Endpoint:
        """Verify that a container's endpoint is still wired as created.

        Raises:
            EndpointNotFoundError: no endpoint for the container.
            EndpointCheckError: something is missing; the message says what.
        """
        ep = self.store.get(container_id)
        if ep is None:
            raise EndpointNotFoundError(f"container {container_id}: no endpoint")
        with _ipr(self.node.netns) as node:
            idx = _first_index(node, ep.host_ifname)
            if idx is None:
                raise EndpointCheckError(f"endpoint {ep.id}: host interface {ep.host_ifname} "
                                         "is missing")
            routes = node.get_routes(dst=ep.ipv4, dst_len=32, table=254)
            if not any(r.get("oif") == idx for r in routes):
                raise EndpointCheckError(f"endpoint {ep.id}: node route {ep.ipv4}/32 via "
                                         f"{ep.host_ifname} is missing")
        if not os.path.exists(ep.netns_path):
            raise EndpointCheckError(f"endpoint {ep.id}: netns {ep.netns_path} is gone")
        with _ipr(ep.netns_path) as pod:
            pidx = _first_index(pod, ep.pod_ifname)
            if pidx is None:
                raise EndpointCheckError(f"endpoint {ep.id}: pod interface {ep.pod_ifname} "
                                         "is missing")
            addrs = {a.get("address") for a in pod.get_addr(index=pidx)}
            if ep.ipv4 not in addrs:
                raise EndpointCheckError(f"endpoint {ep.id}: {ep.pod_ifname} lacks "
                                         f"{ep.ipv4}/32")
            if not pod.get_default_routes(table=254):
                raise EndpointCheckError(f"endpoint {ep.id}: pod default route is missing")
        return ep

    # -- netlink ---------------------------------------------------------------------------

    def _plumb(self, req: EndpointRequest, ip: ipaddress.IPv4Address, hostif: str,
               ep_id: int) -> Endpoint:
        gw = str(self.node.gateway)
        nsfd = os.open(req.netns_path, os.O_RDONLY)
        try:
            with _ipr(self.node.netns) as node:
                try:
                    node.link("add", ifname=hostif, kind="veth",
                              peer={"ifname": req.ifname, "net_ns_fd": nsfd})
                except NetlinkError as exc:
                    raise EndpointError(f"container {req.container_id}: cannot create veth "
                                        f"{hostif}/{req.ifname}: {exc}") from exc
                hidx = _first_index(node, hostif)
                if hidx is None:
                    raise EndpointError(f"container {req.container_id}: {hostif} vanished")
                node.link("set", index=hidx, state="up")
                host_mac = _mac(node, hidx)
                with _ipr(req.netns_path) as pod:
                    pidx = _first_index(pod, req.ifname)
                    if pidx is None:
                        raise EndpointError(f"container {req.container_id}: {req.ifname} not "
                                            f"found in {req.netns_path}")
                    pod_mac = _mac(pod, pidx)
                    lo = _first_index(pod, "lo")
                    if lo is not None:
                        pod.link("set", index=lo, state="up")
                    if self.node.pod_mtu:
                        pod.link("set", index=pidx, mtu=self.node.pod_mtu)
                    pod.link("set", index=pidx, state="up")
                    pod.addr("add", index=pidx, address=str(ip), prefixlen=32)
                    pod.route("add", dst=f"{gw}/32", oif=pidx, scope="link")
                    pod.route("add", dst="0.0.0.0/0", gateway=gw, oif=pidx)
                    pod.neigh("add", dst=gw, lladdr=host_mac, ifindex=pidx, state="permanent")
                node.route("add", dst=f"{ip}/32", oif=hidx, scope="link")
                node.neigh("add", dst=str(ip), lladdr=pod_mac, ifindex=hidx, state="permanent")
        except NetlinkError as exc:
            raise EndpointError(f"container {req.container_id}: netlink: {exc}") from exc
        finally:
            os.close(nsfd)
        return Endpoint(id=ep_id, container_id=req.container_id,
                        pod_namespace=req.pod_namespace, pod_name=req.pod_name, ipv4=str(ip),
                        gateway=gw, host_ifname=hostif, host_ifindex=hidx, host_mac=host_mac,
                        pod_ifname=req.ifname, pod_mac=pod_mac, netns_path=req.netns_path,
                        node=self.node.name, node_netns=self.node.netns)

    def _unplumb(self, hostif: str) -> None:
        """Delete the host-side veth (its peer, routes and neighbours go with it)."""
        with _ipr(self.node.netns) as node:
            idx = _first_index(node, hostif)
            if idx is not None:
                with suppress(NetlinkError):
                    node.link("del", index=idx)
