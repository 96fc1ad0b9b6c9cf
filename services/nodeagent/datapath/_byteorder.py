"""Every host/network byte order conversion of the datapath lives here.

Kernel structs keep addresses and ports in network byte order inside plain ``u32``/``u16``
fields; their ctypes twins use native integers, so the integer stored in a twin is the
native-order reading of the network-order bytes.
"""

from __future__ import annotations

import ipaddress
import socket
import sys


def ip_to_be32(addr: str | ipaddress.IPv4Address) -> int:
    """An IPv4 address as the integer a network-order ``u32`` field holds."""
    return int.from_bytes(ipaddress.IPv4Address(addr).packed, sys.byteorder)


def be32_to_ip(value: int) -> str:
    """The dotted IPv4 address held in a network-order ``u32`` field."""
    return str(ipaddress.IPv4Address(value.to_bytes(4, sys.byteorder)))


def port_to_be16(port: int) -> int:
    """A port number as the integer a network-order ``u16`` field holds."""
    return socket.htons(port)


def be16_to_port(value: int) -> int:
    """The port number held in a network-order ``u16`` field."""
    return socket.ntohs(value)
