"""The lb_ct map (``lib/lb.h``): LRU hash of the LB conntrack: the backend each service flow
chose, reverse NAT of replies, and NodePort SNAT's port mappings (both directions).

The kernel writes it; userspace lists it, collects idle entries and purges the flows of
addresses that went away.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import NamedTuple

from services.nodeagent.datapath._byteorder import be16_to_port, be32_to_ip, ip_to_be32
from services.nodeagent.datapath.backend import MapBackend
from services.nodeagent.datapath.constants import NS_PER_SEC
from services.nodeagent.datapath.maps.conntrack import CT_LIFETIME_TCP
from services.nodeagent.datapath.maps.spec import GROUP_LB, MapSpec, Twin, u8, u16, u32, u64

NAME = "lb_ct"
MAX_ENTRIES = 131072           # LB conntrack (LRU): chosen backends and reverse NAT
# lb_ct_key.kind (lib/lb.h)
LB_CT_SERVICE, LB_CT_REVNAT, LB_CT_SNAT, LB_CT_SNAT_FWD = 1, 2, 3, 4
LB_CT_KINDS = {LB_CT_SERVICE: "service", LB_CT_REVNAT: "revnat", LB_CT_SNAT: "snat",
               LB_CT_SNAT_FWD: "snat-fwd"}
# Kinds whose entry names the backend it chose.
_CHOSE_BACKEND = (LB_CT_SERVICE, LB_CT_SNAT, LB_CT_SNAT_FWD)


# struct lb_ct_key (lib/lb.h)
class LbCtKey(Twin):
    C_STRUCT, C_HEADER = "lb_ct_key", "lb.h"
    _fields_ = (("saddr", u32), ("daddr", u32), ("sport", u16), ("dport", u16), ("proto", u8),
                ("kind", u8), ("pad", u16))


# struct lb_ct_value (lib/lb.h)
class LbCtValue(Twin):
    C_STRUCT, C_HEADER = "lb_ct_value", "lb.h"
    _fields_ = (("last_ns", u64), ("backend_id", u32), ("svc_id", u32), ("addr", u32),
                ("addr2", u32), ("port", u16), ("port2", u16), ("flags", u32))


class LbCtEntry(NamedTuple):
    kind: str
    src: str
    dst: str
    sport: int
    dport: int
    proto: int
    backend_id: int
    svc_id: int
    nat: str          # REVNAT: frontend ip:port; SNAT: client ip:port -> frontend ip:port;
    last_ns: int      # SNAT_FWD: node ip:allocated port


class LbCtMap:
    """LB conntrack entries; the kernel writes them, userspace lists, collects, purges."""

    def __init__(self, backend: MapBackend) -> None:
        self.backend = backend

    def entries(self) -> list[LbCtEntry]:
        out = []
        for kb, vb in self.backend.read_all().items():
            k = LbCtKey.from_buffer_copy(kb)
            v = LbCtValue.from_buffer_copy(vb)
            nat = f"{be32_to_ip(v.addr)}:{be16_to_port(v.port)}" if v.addr or v.port else ""
            if v.addr2:
                nat += f" -> {be32_to_ip(v.addr2)}:{be16_to_port(v.port2)}"
            out.append(LbCtEntry(LB_CT_KINDS.get(k.kind, str(k.kind)), be32_to_ip(k.saddr),
                                 be32_to_ip(k.daddr), be16_to_port(k.sport),
                                 be16_to_port(k.dport), k.proto, v.backend_id, v.svc_id, nat,
                                 v.last_ns))
        return out

    def gc(self, max_idle_s: float = CT_LIFETIME_TCP, now_ns: int | None = None) -> int:
        """Delete entries unused for ``max_idle_s`` (the kernel refreshes an entry's
        ``last_ns`` at most once a second while packets use it); the map is an LRU as well,
        so this only keeps it from filling with dead flows. Returns how many."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        limit = int(max_idle_s * NS_PER_SEC)
        dead = [kb for kb, vb in self.backend.read_all().items()
                if now - LbCtValue.from_buffer_copy(vb).last_ns > limit]
        if dead:
            self.backend.delete(dead)
        return len(dead)

    def purge(self, addresses: Iterable[str], backend_ids: set[int]) -> int:
        """Delete every entry naming one of ``addresses`` (either end of the key, or the
        translation it records) or having chosen one of ``backend_ids``. Returns how many."""
        addrs = {ip_to_be32(a) for a in addresses}
        dead = []
        for kb, vb in self.backend.read_all().items():
            k = LbCtKey.from_buffer_copy(kb)
            v = LbCtValue.from_buffer_copy(vb)
            if ({k.saddr, k.daddr, v.addr, v.addr2} & addrs
                    or (k.kind in _CHOSE_BACKEND and v.backend_id in backend_ids)):
                dead.append(kb)
        if dead:
            self.backend.delete(dead)
        return len(dead)

    def flush(self) -> None:
        """Forget every entry (tests; a real agent never does this)."""
        keys = list(self.backend.read_all())
        if keys:
            self.backend.delete(keys)


SPEC: MapSpec[LbCtMap] = MapSpec(
    name=NAME, header="lb.h", map_type="lru_hash", key=LbCtKey, value=LbCtValue,
    max_entries=MAX_ENTRIES, cflags={"CILIA_LB_CT_MAX": MAX_ENTRIES}, view=LbCtMap,
    group=GROUP_LB)
