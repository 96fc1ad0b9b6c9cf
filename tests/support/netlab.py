"""Test topology: pod namespaces with veths into a node namespace, and traffic helpers.

Everything is created with unique names and removed by :meth:`NodeLab.destroy`. Traffic runs
only between the namespaces made here: pods route via a link-local gateway (static
neighbours, no ARP) to the node namespace, which forwards between host-side veths.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pyroute2 import NetNS, netns

from services.common.netns import run_in_netns

GATEWAY = "169.254.1.1"
T = TypeVar("T")


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread switched into netns ``name``; sockets made there stay there."""
    return run_in_netns(name, fn)


@dataclass
class Pod:
    name: str          # netns name
    ip: str
    host_if: str       # host-side veth in the node namespace
    ifindex: int = 0   # of host_if


@dataclass
class NodeLab:
    node_ns: str
    pods: list[Pod] = field(default_factory=list)
    _servers: list[EchoServer] = field(default_factory=list)

    @classmethod
    def create(cls, npods: int, subnet: str = "10.244.7") -> NodeLab:
        tag = uuid.uuid4().hex[:6]
        lab = cls(node_ns=f"cdp{tag}n")
        try:
            netns.create(lab.node_ns)
            in_netns(lab.node_ns, _enable_forwarding)
            for i in range(1, npods + 1):
                lab._add_pod(f"cdp{tag}p{i}", f"{subnet}.{i}", f"cdp{tag}h{i}")
        except BaseException:
            lab.destroy()
            raise
        return lab

    def _add_pod(self, name: str, ip: str, host_if: str) -> None:
        netns.create(name)
        self.pods.append(Pod(name, ip, host_if))
        tmp = host_if + "x"
        with NetNS(self.node_ns) as node:
            node.link("add", ifname=host_if, kind="veth", peer=tmp)
            host_idx = node.link_lookup(ifname=host_if)[0]
            host_mac = node.get_links(host_idx)[0].get_attr("IFLA_ADDRESS")
            node.link("set", index=node.link_lookup(ifname=tmp)[0], net_ns_fd=name)
        with NetNS(name) as pod:
            idx = pod.link_lookup(ifname=tmp)[0]
            pod.link("set", index=idx, ifname="eth0")
            pod.link("set", index=idx, state="up")
            pod.link("set", index=pod.link_lookup(ifname="lo")[0], state="up")
            pod.addr("add", index=idx, address=ip, prefixlen=32)
            pod.route("add", dst=f"{GATEWAY}/32", oif=idx, scope=253)
            pod.route("add", dst="0.0.0.0/0", gateway=GATEWAY, oif=idx)
            pod.neigh("add", dst=GATEWAY, lladdr=host_mac, ifindex=idx, state=0x80)
            pod_mac = pod.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        with NetNS(self.node_ns) as node:
            node.link("set", index=host_idx, state="up")
            node.route("add", dst=f"{ip}/32", oif=host_idx, scope=253)
            node.neigh("add", dst=ip, lladdr=pod_mac, ifindex=host_idx, state=0x80)
        self.pods[-1].ifindex = host_idx

    def server(self, pod: Pod, ports: list[int]) -> EchoServer:
        srv = EchoServer(pod.name, pod.ip, ports)
        self._servers.append(srv)
        return srv

    def destroy(self) -> None:
        for srv in self._servers:
            srv.stop()
        for pod in self.pods:
            with contextlib.suppress(Exception):
                netns.remove(pod.name)
        with contextlib.suppress(Exception):
            netns.remove(self.node_ns)


def _enable_forwarding() -> None:
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")


class EchoServer:
    """TCP echo on some ports of a pod, served from a thread of this process."""

    def __init__(self, ns: str, ip: str, ports: list[int]) -> None:
        self._stop = threading.Event()
        self.socks: list[socket.socket] = []
        for port in ports:
            s = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, port))
            s.listen(64)
            s.settimeout(0.1)
            self.socks.append(s)
        self._threads = [threading.Thread(target=self._serve, args=(s,), daemon=True)
                         for s in self.socks]
        for t in self._threads:
            t.start()

    def _serve(self, s: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = s.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        for s in self.socks:
            s.close()


# Allowed traffic gets a generous timeout (the machine may be busy); an expected drop needs
# only long enough to be sure no answer comes.
ALLOWED_TIMEOUT_S = 3.0
DENIED_TIMEOUT_S = 0.5


def tcp_ok(src: Pod, dst_ip: str, port: int, timeout: float = ALLOWED_TIMEOUT_S) -> bool:
    """True if a TCP connection from ``src`` gets its payload echoed back in time."""
    s = in_netns(src.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    s.settimeout(timeout)
    try:
        s.connect((dst_ip, port))
        s.sendall(b"ping")
        return s.recv(16) == b"ping"
    except OSError:
        return False
    finally:
        s.close()


def tcp_blocked(src: Pod, dst_ip: str, port: int) -> bool:
    """True if a TCP connection from ``src`` does not get through."""
    return not tcp_ok(src, dst_ip, port, DENIED_TIMEOUT_S)


def tcp_open(src: Pod, dst_ip: str, port: int,
             timeout: float = ALLOWED_TIMEOUT_S) -> socket.socket:
    """An established connection (for tests that keep it across a policy change)."""
    s = in_netns(src.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    s.settimeout(timeout)
    s.connect((dst_ip, port))
    return s


def roundtrip(s: socket.socket, payload: bytes = b"again") -> bool:
    try:
        s.sendall(payload)
        return s.recv(64) == payload
    except OSError:
        return False


UDP_MAX = 65535   # bytes: the largest datagram (a fragmented one is echoed whole)


class UdpEcho:
    """UDP echo on one port of a pod, served from a thread of this process.

    ``reply``: answer every datagram with these bytes instead of echoing it, or with what this
    function makes of it (None: no answer).
    """

    def __init__(self, ns: str, ip: str, port: int,
                 reply: bytes | Callable[[bytes], bytes | None] | None = None) -> None:
        self.sock = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        self.sock.bind((ip, port))
        self.sock.settimeout(0.1)
        self.reply = reply
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(UDP_MAX)
                answer = self.reply(data) if callable(self.reply) else self.reply
                if answer is None and self.reply is None:
                    answer = data
                if answer is not None:
                    self.sock.sendto(answer, peer)
            except OSError:
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def udp_ok(src: Pod, dst_ip: str, port: int, timeout: float = ALLOWED_TIMEOUT_S) -> bool:
    s = in_netns(src.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    s.settimeout(timeout)
    try:
        s.sendto(b"hello", (dst_ip, port))
        data, _ = s.recvfrom(64)
        return data == b"hello"
    except OSError:
        return False
    finally:
        s.close()


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping_ok(src: Pod, dst_ip: str, timeout: float = ALLOWED_TIMEOUT_S,
            ident: int = 0x4242) -> bool:
    """One ICMP echo request from ``src``; True if the matching reply arrives."""
    s = in_netns(src.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                 socket.IPPROTO_ICMP))
    s.settimeout(timeout)
    body = b"cilia-ping"
    header = bytes([8, 0, 0, 0]) + ident.to_bytes(2, "big") + (1).to_bytes(2, "big")
    csum = _icmp_checksum(header + body)
    packet = header[:2] + csum.to_bytes(2, "big") + header[4:] + body
    try:
        s.sendto(packet, (dst_ip, 0))
        while True:
            data, (addr, _) = s.recvfrom(2048)
            icmp = data[(data[0] & 0x0F) * 4:]
            if addr == dst_ip and icmp[0] == 0 and icmp[4:6] == ident.to_bytes(2, "big"):
                return True
    except OSError:
        return False
    finally:
        s.close()
