"""VXLAN frames seen on the underlay: an AF_PACKET socket in a lab netns and a pure parser."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from services.nodeagent.endpoints import entered_netns

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


def drain(sock: socket.socket, port: int) -> list[VxlanPacket]:
    """Every VXLAN packet the socket has queued so far."""
    out: list[VxlanPacket] = []
    while True:
        try:
            frame = sock.recv(FRAME_MAX)
        except BlockingIOError:
            return out
        pkt = parse_vxlan(frame, port)
        if pkt is not None:
            out.append(pkt)
