"""Hand-made frames for the fail-closed tests: Ethernet, IPv4 (fragments, bad headers), UDP,
ICMP errors, VLAN and IPv6, sent and captured on AF_PACKET sockets inside test namespaces.

Only what the tests need; checksums are real so the receiving kernels accept the packets.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Callable

from pyroute2 import NetNS

from tests.support.netlab import in_netns

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
SOL_PACKET = 263
PACKET_VNET_HDR = 15        # frames carry a virtio_net_hdr (10 bytes) before the Ethernet header
VNET_HDR_LEN = 10
IP_MF = 0x2000
ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED = 3, 4


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def mac(ns: str, ifname: str) -> bytes:
    with NetNS(ns) as n:
        link = n.get_links(n.link_lookup(ifname=ifname)[0])[0]
        return bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))


def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 0x4242,
         frag: int = 0, ihl: int | None = None, tot_len: int | None = None, ttl: int = 64,
         options: bytes = b"") -> bytes:
    """An IPv4 header (``ihl``/``tot_len`` may lie, for invalid packets) with ``options``
    (a multiple of 4 bytes) and its payload; ``frag`` is the flags + offset field (offset in
    8-byte units)."""
    hlen = 20 + len(options)
    length = hlen + len(payload) if tot_len is None else tot_len
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | (hlen // 4 if ihl is None else ihl), 0, length,
                      ident, frag, ttl, proto, 0, socket.inet_aton(src),
                      socket.inet_aton(dst)) + options
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + payload


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    length = 8 + len(payload)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, length)
    hdr = struct.pack("!HHHH", sport, dport, length, 0)
    csum = checksum(pseudo + hdr + payload) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, csum) + payload


def icmp(icmp_type: int, code: int, rest: bytes, payload: bytes) -> bytes:
    body = struct.pack("!BBH", icmp_type, code, 0) + rest + payload
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def frag_needed(mtu: int, quoted: bytes) -> bytes:
    """ICMP destination unreachable / fragmentation needed quoting ``quoted`` (an IPv4 header
    and at least 8 bytes of its payload)."""
    return icmp(ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, struct.pack("!HH", 0, mtu), quoted)


def tcp_header(sport: int, dport: int, seq: int, ack: int = 0, flags: int = 0x10) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)


def vlan(tag: int, ethertype: int, payload: bytes) -> bytes:
    """An 802.1Q tag (to follow the addresses of an Ethernet header whose type is 0x8100)."""
    return struct.pack("!HH", tag, ethertype) + payload


def ipv6_udp(src: bytes, dst: bytes, payload: bytes) -> bytes:
    body = struct.pack("!HHHH", 4000, 4001, 8 + len(payload), 0) + payload
    return struct.pack("!IHBB", 6 << 28, len(body), 17, 64) + src + dst + body


def send(ns: str, ifname: str, frame: bytes, nonlinear: bool = False) -> bool:
    """Send a raw frame out of ``ifname`` in netns ``ns``. ``nonlinear``: through a virtio
    header with no header length, so that the kernel keeps only the Ethernet header in the
    skb's linear area and the rest in paged fragments.

    Returns:
        False when the interface's egress dropped the frame (a tc program said so: the
        kernel reports ENOBUFS to the sender), True otherwise.
    """
    s = in_netns(ns, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
    try:
        s.bind((ifname, 0))
        if nonlinear:
            s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            frame = bytes(VNET_HDR_LEN) + frame
        s.send(frame)
    except OSError as exc:
        if exc.errno != errno.ENOBUFS:
            raise
        return False
    finally:
        s.close()
    return True


class Capture:
    """Frames received on an interface (AF_PACKET, all protocols) while open."""

    def __init__(self, ns: str, ifname: str) -> None:
        self.sock = in_netns(ns, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                                       socket.htons(ETH_P_ALL)))
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.05)

    def frames(self, wait_s: float = 0.5,
               until: Callable[[bytes], bool] | None = None) -> list[bytes]:
        """Incoming frames seen within ``wait_s`` (stops early once ``until`` matches)."""
        out: list[bytes] = []
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            out.append(data)
            if until is not None and until(data):
                break
        return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
