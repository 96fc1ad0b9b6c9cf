"""Test topology for load balancing: nodes with pods (tests/support/netlab.py), an underlay
bridge in its own namespace, and an external host on it. Everything is created here with
unique names and removed by :meth:`LbLab.destroy`.

Backends run a "who" server: on connect it sends ``<own ip> <peer ip>\\n`` and then echoes,
so a client learns which backend it reached and what source address that backend saw.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import NetNS, netns

from services.common import contract
from services.common.contract import lb_backend_subject, lb_members_subject, lb_service_subject
from services.common.policytypes import Direction, PolicyKey, Verdict
from services.nodeagent.datapath import (
    EndpointEntry,
    IpcacheEntry,
    NodeMaps,
    Programs,
    attach,
    unpin,
)
from services.nodeagent.datapath.kernel.nodeport import NodePortProgram, device_mac
from services.nodeagent.datapath.lb import LbMaps
from services.nodeagent.lbstate import NODE_MAC_ANNOTATION, LbNodeState
from tests.support.netlab import ALLOWED_TIMEOUT_S, NodeLab, Pod, UdpEcho, in_netns

UNDERLAY_PREFIX = 24
UPLINK = "up0"
EXT_IP = "10.77.0.100"
WHO_PORT = 8080
BASE_IDENTITY = 2000


def node_ip(i: int) -> str:
    return f"10.77.0.{i + 1}"


class WhoServer:
    """TCP "who" server on one pod address, served from a thread of this process."""

    def __init__(self, ns: str, ip: str, port: int = WHO_PORT) -> None:
        self.ip = ip
        self._stop = threading.Event()
        self.sock = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(128)
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn, peer[0]), daemon=True).start()

    def _handle(self, conn: socket.socket, peer: str) -> None:
        conn.settimeout(30)
        with conn, contextlib.suppress(OSError):
            conn.sendall(f"{self.ip} {peer}\n".encode())
            while data := conn.recv(4096):
                conn.sendall(data)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


class UdpWho(UdpEcho):
    """UDP: answers every datagram with the backend's own address."""

    def __init__(self, ns: str, ip: str, port: int) -> None:
        super().__init__(ns, ip, port, reply=ip.encode())
        self.ip = ip


def who(ns: str, dst: str, port: int, timeout: float = ALLOWED_TIMEOUT_S,
        ) -> tuple[str, str] | None:
    """Connect from netns ``ns``; (backend ip, source ip the backend saw), or None."""
    s = open_conn(ns, dst, port, timeout)
    if s is None:
        return None
    try:
        return read_who(s)
    finally:
        s.close()


def open_conn(ns: str, dst: str, port: int, timeout: float = ALLOWED_TIMEOUT_S,
              ) -> socket.socket | None:
    s = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    s.settimeout(timeout)
    try:
        s.connect((dst, port))
    except OSError:
        s.close()
        return None
    return s


def read_who(s: socket.socket) -> tuple[str, str] | None:
    buf = b""
    try:
        while not buf.endswith(b"\n"):
            chunk = s.recv(64)
            if not chunk:
                return None
            buf += chunk
    except OSError:
        return None
    me, peer = buf.decode().split()
    return me, peer


def roundtrip(s: socket.socket, payload: bytes = b"still-there") -> bool:
    try:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                return False
            got += chunk
        return got == payload
    except OSError:
        return False


@dataclass
class LbNode:
    name: str              # node name (pin directory)
    ip: str
    lab: NodeLab
    programs: Programs
    nodeport: NodePortProgram
    maps: NodeMaps
    lbmaps: LbMaps
    state: LbNodeState

    @property
    def pods(self) -> list[Pod]:
        return self.lab.pods


@dataclass
class LbLab:
    """``nodes`` nodes with ``pods`` pods each (10.244.<i+1>.<j>), an underlay, a host."""

    tag: str
    underlay_ns: str
    ext_ns: str
    nodes: list[LbNode] = field(default_factory=list)
    servers: list[Any] = field(default_factory=list)
    labs: list[NodeLab] = field(default_factory=list)
    events: int = 0

    @classmethod
    def create(cls, nodes: int = 1, pods: int = 4, lb_mode: str = "snat") -> LbLab:
        tag = uuid.uuid4().hex[:6]
        lab = cls(tag, f"clb{tag}u", f"clb{tag}x")
        try:
            lab._build(nodes, pods, lb_mode)
        except BaseException:
            lab.destroy()
            raise
        return lab

    def _build(self, nnodes: int, npods: int, lb_mode: str) -> None:
        netns.create(self.underlay_ns)
        with NetNS(self.underlay_ns) as u:
            u.link("add", ifname="br0", kind="bridge")
            u.link("set", index=u.link_lookup(ifname="br0")[0], state="up")
        for i in range(nnodes):
            nl = NodeLab.create(npods, subnet=f"10.244.{i + 1}")
            self.labs.append(nl)
            self._uplink(nl.node_ns, UPLINK, f"n{i}", node_ip(i))
        netns.create(self.ext_ns)
        self._uplink(self.ext_ns, "eth0", "x", EXT_IP)
        for i, nl in enumerate(self.labs):
            with NetNS(nl.node_ns) as n:
                for j in range(nnodes):
                    if j != i:
                        n.route("add", dst=f"10.244.{j + 1}.0/24", gateway=node_ip(j))
        identity = BASE_IDENTITY
        for i, nl in enumerate(self.labs):
            name = f"test-lb{self.tag}{i}"
            programs = Programs(name)
            for pod in nl.pods:
                attach(programs, pod.host_if, netns=nl.node_ns)
            nodeport = NodePortProgram(name)
            nodeport.attach(UPLINK, netns=nl.node_ns, node_ip=node_ip(i),
                            dsr=lb_mode == "dsr")
            node = LbNode(name, node_ip(i), nl, programs, nodeport, NodeMaps(name),
                          LbMaps(name), LbNodeState(name, node_ips=[node_ip(i)],
                                                    lb_mode=lb_mode, maglev_size=251))
            self.nodes.append(node)
            for pod in nl.pods:
                identity += 1
                self.servers.append(WhoServer(pod.name, pod.ip))
        for node in self.nodes:
            self.register(node)
        self.configure()

    def register(self, node: LbNode) -> None:
        """Publish a node's Node object with its underlay MAC, as its agent does."""
        obj = {"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": node.name, "annotations": {
                   NODE_MAC_ANNOTATION: device_mac(UPLINK, node.lab.node_ns)}},
               "status": {"addresses": [{"type": "InternalIP", "address": node.ip}]}}
        self.publish(contract.source_subject("Node", "", node.name), "object.upsert",
                     {"kind": "Node", "namespace": "", "name": node.name, "object": obj})

    def set_mode(self, mode: str) -> None:
        """Re-plan every node in ``mode`` from the same folded events, and write the mode into
        its lb_config (an agent restart with CILIA_LB_MODE)."""
        for node in self.nodes:
            fresh = LbNodeState(node.name, node_ips=[node.ip], lb_mode=mode, maglev_size=251)
            fresh.view = node.state.view
            fresh.node_addrs = node.state.node_addrs
            fresh.node_macs = node.state.node_macs
            node.state = fresh
            node.lbmaps.apply(fresh.plan())
            node.nodeport.set_config(node.ip, dsr=mode == "dsr")
        self.configure()

    def _uplink(self, ns: str, ifname: str, port_tag: str, address: str) -> None:
        port = f"clb{self.tag}{port_tag}"
        with NetNS(self.underlay_ns) as u:
            u.link("add", ifname=port, kind="veth", peer=ifname + self.tag)
            u.link("set", index=u.link_lookup(ifname=ifname + self.tag)[0], net_ns_fd=ns)
            idx = u.link_lookup(ifname=port)[0]
            u.link("set", index=idx, master=u.link_lookup(ifname="br0")[0], state="up")
        with NetNS(ns) as n:
            idx = n.link_lookup(ifname=ifname + self.tag)[0]
            n.link("set", index=idx, ifname=ifname)
            n.link("set", index=idx, state="up")
            n.link("set", index=n.link_lookup(ifname="lo")[0], state="up")
            n.addr("add", index=idx, address=address, prefixlen=UNDERLAY_PREFIX)

    # -- maps --------------------------------------------------------------------------------

    def identity(self, pod: Pod) -> int:
        for i, node in enumerate(self.nodes):
            if pod in node.pods:
                return BASE_IDENTITY + 100 * i + node.pods.index(pod) + 1
        raise KeyError(pod.name)

    def configure(self, policy: dict[PolicyKey, Verdict] | None = None,
                  enforce_egress: set[str] | None = None) -> None:
        """Endpoints, ipcache (every pod) and policy on every node; forget flows."""
        everyone = {f"{p.ip}/32": IpcacheEntry(self.identity(p)) for n in self.nodes
                    for p in n.pods}
        for node in self.nodes:
            node.maps.ipcache.reconcile(everyone)
            node.maps.endpoints.reconcile({
                p.ip: EndpointEntry(j + 1, self.identity(p), p.ifindex, False,
                                    p.name in (enforce_egress or set()))
                for j, p in enumerate(node.pods)})
            node.maps.policy.reconcile(policy or {})
            node.maps.conntrack.gc(now_ns=2**64 - 1)
            node.lbmaps.flush_flows()

    def publish(self, subject: str, event_type: str, data: dict[str, Any]) -> None:
        """Deliver one lb event to every node's reducer (checked and typed, as the bus does)
        and reconcile its maps."""
        payload = contract.validate(event_type, data)
        contract.check_subject(event_type, payload, subject)
        for node in self.nodes:
            dirty = node.state.apply(payload)
            if dirty:
                node.lbmaps.apply(node.state.plan(dirty))

    def service(self, sid: int, name: str, **fields: Any) -> None:
        svc = {"namespace": "default", "name": name, "type": "ClusterIP", "cluster_ip": "",
               "ports": [{"name": "", "port": 80, "protocol": "TCP", "node_port": 0}],
               "external_ips": [], "lb_ips": [], "affinity_timeout": 0, "ext_local": False,
               "int_local": False}
        svc.update(fields)
        self.publish(lb_service_subject("default", name), "lb.service", {"id": sid, "service": svc})

    def backends(self, sid: int, pods: list[Pod], removed: list[Pod] | None = None,
                 port: int = WHO_PORT, port_name: str = "") -> None:
        """Backends (id = 10000 + last octets) joining, and leaving, service ``sid``."""
        for pod in pods:
            node = next(n for n in self.nodes if pod in n.pods)
            self.publish(lb_backend_subject(self.bid(pod)), "lb.backend", {
                "id": self.bid(pod), "address": pod.ip, "port": port, "protocol": "TCP",
                "node": node.name, "pod": f"default/{pod.name}", "state": "active"})
        self.publish(lb_members_subject(sid), "lb.backends", {
            "service": sid, "op": "delta", "added": [[port_name, self.bid(p)] for p in pods],
            "removed": [[port_name, self.bid(p)] for p in removed or []]})

    @staticmethod
    def bid(pod: Pod) -> int:
        a, b = pod.ip.split(".")[2:]
        return 10000 + int(a) * 256 + int(b)

    def destroy(self) -> None:
        for srv in self.servers:
            with contextlib.suppress(Exception):
                srv.stop()
        for node in self.nodes:
            for closer in (node.maps.close, node.lbmaps.close, node.programs.close,
                           node.nodeport.close):
                with contextlib.suppress(Exception):
                    closer()
        for nl in self.labs:
            nl.destroy()
        for ns in (self.ext_ns, self.underlay_ns):
            with contextlib.suppress(Exception):
                netns.remove(ns)
        for node in self.nodes:
            unpin(node.name)
        for i in range(len(self.labs)):
            unpin(f"test-lb{self.tag}{i}")


def egress_deny(subject: int, peer: int, port: int) -> dict[PolicyKey, Verdict]:
    return {PolicyKey(subject, peer, Direction.EGRESS, 6, port, port): Verdict.DENY}
