"""Ask the loaded programs for a verdict on a synthetic packet (BPF_PROG_TEST_RUN).

Nothing is sent anywhere: the kernel runs the program once on the given bytes against the
live maps. Tests use it for differential checks at scale, and ``policy trace`` may use it to
ask the kernel itself. Note that an allowed packet creates a conntrack entry like real
traffic does.
"""

from __future__ import annotations

import ipaddress
import struct

from services.common.policytypes import PROTO_ICMP, PROTO_TCP
from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath.errors import DatapathError
from services.nodeagent.datapath.kernel import _bpfsys
from services.nodeagent.datapath.kernel.programs import Programs

TC_ACT_OK = 0
TC_ACT_SHOT = 2
_ETH_P_IP = 0x0800
_IPV4_VERSION_IHL = 0x45
_DEFAULT_TTL = 64
_TCP_SYN = 0x02
_TCP_DATA_OFFSET = 5 << 4       # 20-byte header, no options
_ICMP_ECHO = 8
_LOCAL_MAC = bytes.fromhex("020000000001")
_PEER_MAC = bytes.fromhex("020000000002")


def ipv4_packet(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0,
                tcp_flags: int = _TCP_SYN) -> bytes:
    """An Ethernet + IPv4 packet with a minimal L4 header (checksums are not filled in)."""
    if proto == PROTO_TCP:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, _TCP_DATA_OFFSET, tcp_flags,
                         0xFFFF, 0, 0)
    elif proto == PROTO_ICMP:
        l4 = struct.pack("!BBHHH", _ICMP_ECHO, 0, 0, sport, 1)
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8, 0)
    total = 20 + len(l4)
    ip = struct.pack("!BBHHHBBH4s4s", _IPV4_VERSION_IHL, 0, total, 0, 0, _DEFAULT_TTL, proto,
                     0, ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    eth = _PEER_MAC + _LOCAL_MAC + struct.pack("!H", _ETH_P_IP)
    return eth + ip + l4


def run_packet(programs: Programs, program: str, packet: bytes) -> int:
    """Run ``program`` (``cil_from_pod`` or ``cil_to_pod``) on ``packet``; its tc verdict."""
    if program not in (c.PROG_FROM_POD, c.PROG_TO_POD):
        raise DatapathError(f"program {program!r} is not one of the veth programs")
    try:
        return _bpfsys.prog_test_run(programs.fds[program], packet)
    except OSError as exc:
        raise DatapathError(f"program {program!r}: test run failed: {exc.strerror}") from exc


def passes(programs: Programs, program: str, packet: bytes) -> bool:
    """True if the program lets ``packet`` through."""
    return run_packet(programs, program, packet) == TC_ACT_OK
