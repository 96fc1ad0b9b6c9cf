"""The conntrack map (``lib/conntrack.h``): LRU hash, 5-tuple + admitting direction ->
expiry, flags.

The kernel writes it (a passing new flow gets an entry; replies of an entry pass); userspace
lists it, collects expired entries and purges the flows of addresses that changed owner.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from services.common.policytypes import PROTO_NAMES, Direction
from services.nodeagent.datapath._byteorder import be16_to_port, be32_to_ip, ip_to_be32
from services.nodeagent.datapath.backend import MapBackend
from services.nodeagent.datapath.constants import NS_PER_SEC
from services.nodeagent.datapath.maps.spec import (
    GROUP_NODE,
    MapSpec,
    Renderer,
    Row,
    Twin,
    u8,
    u16,
    u32,
    u64,
)

NAME = "conntrack"
MAX_ENTRIES = 131072
# Lifetimes in seconds, and how coarse the kernel's deadline refresh is.
CT_LIFETIME_TCP = 21600        # established TCP (Cilium's default: 6 h)
CT_LIFETIME_SYN = 60           # TCP not yet answered
CT_LIFETIME_NONTCP = 60        # UDP, ICMP and other protocols
CT_LIFETIME_CLOSE = 10         # TCP after FIN or RST
CT_REFRESH_MS = 1000           # deadline moves only when it would move by more than this
# ct_value.flags (lib/conntrack.h)
CT_F_SEEN_REPLY = 0x1
CT_F_CLOSING = 0x2
_FLAG_NAMES = ((CT_F_SEEN_REPLY, "seen-reply"), (CT_F_CLOSING, "closing"))


# struct ct_key (lib/conntrack.h)
class CtKey(Twin):
    C_STRUCT, C_HEADER = "ct_key", "conntrack.h"
    _fields_ = (("saddr", u32), ("daddr", u32), ("sport", u16), ("dport", u16), ("proto", u8),
                ("direction", u8), ("pad", u16))  # addresses, ports: network byte order


# struct ct_value (lib/conntrack.h)
class CtValue(Twin):
    C_STRUCT, C_HEADER = "ct_value", "conntrack.h"
    _fields_ = (("expires_ns", u64), ("created_ns", u64), ("flags", u8), ("pad", u8 * 7))


class CtEntry(NamedTuple):
    src: str
    dst: str
    sport: int
    dport: int
    proto: int
    direction: int
    expires_ns: int
    created_ns: int
    flags: int


def decode_entry(kb: bytes, vb: bytes) -> CtEntry:
    k = CtKey.from_buffer_copy(kb)
    v = CtValue.from_buffer_copy(vb)
    return CtEntry(be32_to_ip(k.saddr), be32_to_ip(k.daddr), be16_to_port(k.sport),
                   be16_to_port(k.dport), k.proto, k.direction, v.expires_ns, v.created_ns,
                   v.flags)


class ConntrackMap:
    """Connection tracking entries; the kernel writes them, userspace lists and collects."""

    def __init__(self, backend: MapBackend) -> None:
        self.backend = backend

    def entries(self) -> list[CtEntry]:
        return [decode_entry(kb, vb) for kb, vb in self.backend.read_all().items()]

    def gc(self, now_ns: int | None = None) -> int:
        """Delete expired entries; returns how many. ``now_ns`` is CLOCK_MONOTONIC time."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        expired = [kb for kb, vb in self.backend.read_all().items()
                   if CtValue.from_buffer_copy(vb).expires_ns <= now]
        if expired:
            self.backend.delete(expired)
        return len(expired)

    def purge(self, addresses: Iterable[str]) -> int:
        """Delete every entry with one of ``addresses`` at either end: the flows of an
        endpoint that went away, so that a new endpoint on a reused address starts clean.
        Returns how many."""
        addrs = {ip_to_be32(a) for a in addresses}
        if not addrs:
            return 0
        dead = [kb for kb in self.backend.read_all()
                if {CtKey.from_buffer_copy(kb).saddr, CtKey.from_buffer_copy(kb).daddr} & addrs]
        if dead:
            self.backend.delete(dead)
        return len(dead)

    def expire_all(self) -> int:
        """Set every entry's deadline to the past (they stop matching at once)."""
        items = []
        for kb, vb in self.backend.read_all().items():
            v = CtValue.from_buffer_copy(vb)
            v.expires_ns = 0
            items.append((kb, v.to_bytes()))
        if items:
            self.backend.update(items)
        return len(items)


def rows(view: ConntrackMap) -> list[Row]:
    now = time.monotonic_ns()
    return [{"proto": PROTO_NAMES.get(e.proto, str(e.proto)),
             "direction": Direction(e.direction).name.lower() if e.direction in (0, 1)
             else str(e.direction),
             "src": f"{e.src}:{e.sport}", "dst": f"{e.dst}:{e.dport}",
             "expires_in_s": max(0, (e.expires_ns - now) // NS_PER_SEC),
             "flags": [name for bit, name in _FLAG_NAMES if e.flags & bit]}
            for e in sorted(view.entries())]


def cells(r: Row) -> list[Any]:
    return [r["proto"], r["direction"].upper(), f"{r['src']} -> {r['dst']}",
            f"expires={r['expires_in_s']}s flags={','.join(r['flags']) or '-'}", r["node"]]


SPEC: MapSpec[ConntrackMap] = MapSpec(
    name=NAME, header="conntrack.h", map_type="lru_hash", key=CtKey, value=CtValue,
    max_entries=MAX_ENTRIES,
    cflags={"CILIA_CT_MAX": MAX_ENTRIES, "CILIA_CT_LIFETIME_TCP": CT_LIFETIME_TCP,
            "CILIA_CT_LIFETIME_SYN": CT_LIFETIME_SYN,
            "CILIA_CT_LIFETIME_NONTCP": CT_LIFETIME_NONTCP,
            "CILIA_CT_LIFETIME_CLOSE": CT_LIFETIME_CLOSE, "CILIA_CT_REFRESH_MS": CT_REFRESH_MS},
    view=ConntrackMap, group=GROUP_NODE,
    renderer=Renderer("ct", "The connection tracking map.",
                      "List the tracked connections of each node, from the kernel.", rows,
                      ("PROTO", "DIRECTION", "FLOW", "STATE", "NODE"), cells,
                      numparse=False))
