"""VXLAN frames seen on the underlay: an AF_PACKET socket in a lab netns and a pure parser."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from services.common.netns import entered_netns

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_HLEN = 14
IPPROTO_UDP = 17
UDP_HLEN = 8
VXLAN_HLEN = 8
VXLAN_FLAG_VNI = 0x08          # the I flag: the VNI field is valid
FRAME_MAX = 65535


@dataclass(frozen=True)
class VxlanPacket:
    """One VXLAN-encapsulated IPv4 packet: outer addresses, VNI, inner addresses."""

    outer_src: str
    outer_dst: str
    dport: int
    vni: int
    inner_src: str
    inner_dst: str
    inner_proto: int


def _ipv4(frame: bytes, off: int) -> tuple[str, str, int, int] | None:
    """(src, dst, protocol, payload offset) of the IPv4 header at ``off``."""
    if len(frame) < off + 20 or frame[off] >> 4 != 4:
        return None
    ihl = (frame[off] & 0x0F) * 4
    src = str(ipaddress.IPv4Address(frame[off + 12:off + 16]))
    dst = str(ipaddress.IPv4Address(frame[off + 16:off + 20]))
    return src, dst, frame[off + 9], off + ihl


def parse_vxlan(frame: bytes, port: int) -> VxlanPacket | None:
    """The VXLAN packet in an Ethernet frame sent to UDP ``port``, else None (pure)."""
    if len(frame) < ETH_HLEN or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    outer = _ipv4(frame, ETH_HLEN)
    if outer is None or outer[2] != IPPROTO_UDP:
        return None
    udp = outer[3]
    if len(frame) < udp + UDP_HLEN + VXLAN_HLEN + ETH_HLEN:
        return None
    dport = struct.unpack_from("!H", frame, udp + 2)[0]
    vx = udp + UDP_HLEN
    if dport != port or not frame[vx] & VXLAN_FLAG_VNI:
        return None
    vni = int.from_bytes(frame[vx + 4:vx + 7], "big")
    inner_eth = vx + VXLAN_HLEN
    if struct.unpack_from("!H", frame, inner_eth + 12)[0] != ETH_P_IP:
        return None
    inner = _ipv4(frame, inner_eth + ETH_HLEN)
    if inner is None:
        return None
    return VxlanPacket(outer[0], outer[1], dport, vni, inner[0], inner[1], inner[2])


@contextmanager
def sniff(netns: str, ifname: str) -> Iterator[socket.socket]:
    """A non-blocking AF_PACKET socket on ``ifname`` inside ``netns`` (all protocols)."""
    with entered_netns(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.bind((ifname, ETH_P_ALL))
        sock.setblocking(False)
        yield sock
    finally:
        sock.close()


def drain(sock: socket.socket) -> list[bytes]:
    """Every frame the socket has queued so far."""
    out: list[bytes] = []
    while True:
        try:
            out.append(sock.recv(FRAME_MAX))
        except BlockingIOError:
            return out


def vxlan_packets(frames: list[bytes], port: int) -> list[VxlanPacket]:
    return [p for p in (parse_vxlan(f, port) for f in frames) if p is not None]


def outer_ipv4_sources(frames: list[bytes]) -> list[ipaddress.IPv4Address]:
    """The source address of every IPv4 frame, as the underlay sees it (outer header)."""
    out = []
    for frame in frames:
        if len(frame) >= ETH_HLEN + 20 and struct.unpack_from("!H", frame, 12)[0] == ETH_P_IP:
            out.append(ipaddress.IPv4Address(frame[ETH_HLEN + 12:ETH_HLEN + 16]))
    return out


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def vxlan_payload(vni: int, dst_mac: str, src: str, dst: str, dport: int) -> bytes:
    """A VXLAN UDP payload carrying a TCP SYN from ``src`` to ``dst:dport`` (what a node's
    VXLAN device would send; for forging tests)."""
    tcp = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x02, 0xFFFF, 0, 0)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    ip = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex("020000000099") + \
        struct.pack("!H", ETH_P_IP)
    return struct.pack("!B3xI", VXLAN_FLAG_VNI, vni << 8) + eth + ip + tcp


def send_udp(netns: str, host: str, port: int, payload: bytes) -> None:
    """Send one datagram from inside a lab netns."""
    with entered_netns(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.sendto(payload, (host, port))
    finally:
        sock.close()
