"""The fragments map (``lib/frag.h``): LRU hash, (source, destination, IP id, protocol) ->
the ports of the datagram's first fragment.

The kernel writes it when a first fragment passes, so that later fragments follow their flow
through conntrack and policy (Cilium's fragment map); userspace only lists it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from services.common.policytypes import PROTO_NAMES
from services.nodeagent.datapath._byteorder import be16_to_port, be32_to_ip
from services.nodeagent.datapath.backend import MapBackend
from services.nodeagent.datapath.maps.spec import MapSpec, Renderer, Row, Twin, u8, u16, u32

NAME = "fragments"
MAX_ENTRIES = 8192          # datagrams in fragments tracked at once (LRU)


# struct frag_key (lib/frag.h)
class FragKey(Twin):
    C_STRUCT, C_HEADER = "frag_key", "frag.h"
    _fields_ = (("saddr", u32), ("daddr", u32), ("id", u16), ("proto", u8),
                ("pad", u8))  # addresses, id: network byte order


# struct frag_value (lib/frag.h)
class FragValue(Twin):
    C_STRUCT, C_HEADER = "frag_value", "frag.h"
    _fields_ = (("sport", u16), ("dport", u16))  # network byte order


class FragEntry(NamedTuple):
    src: str
    dst: str
    ip_id: int
    proto: int
    sport: int
    dport: int


class FragmentsMap:
    """First fragments' ports; the kernel writes them, userspace lists them."""

    def __init__(self, backend: MapBackend) -> None:
        self.backend = backend

    def entries(self) -> list[FragEntry]:
        out = []
        for kb, vb in self.backend.read_all().items():
            k = FragKey.from_buffer_copy(kb)
            v = FragValue.from_buffer_copy(vb)
            out.append(FragEntry(be32_to_ip(k.saddr), be32_to_ip(k.daddr), be16_to_port(k.id),
                                 k.proto, be16_to_port(v.sport), be16_to_port(v.dport)))
        return sorted(out)


def rows(view: FragmentsMap) -> list[Row]:
    return [{"proto": PROTO_NAMES.get(e.proto, str(e.proto)), "src": e.src, "dst": e.dst,
             "ip_id": e.ip_id, "sport": e.sport, "dport": e.dport} for e in view.entries()]


def cells(r: Row) -> list[Any]:
    return [r["proto"], f"{r['src']} -> {r['dst']} id={r['ip_id']}",
            f"{r['sport']} -> {r['dport']}", r["node"]]


SPEC: MapSpec[FragmentsMap] = MapSpec(
    name=NAME, header="frag.h", map_type="lru_hash", key=FragKey, value=FragValue,
    max_entries=MAX_ENTRIES, cflags={"CILIA_FRAG_MAX": MAX_ENTRIES}, view=FragmentsMap,
    renderer=Renderer("frag", "The IPv4 fragments map (first fragments' ports).",
                      "List the datagrams in fragments each node tracks, from the kernel.",
                      rows, ("PROTO", "DATAGRAM", "PORTS", "NODE"), cells, numparse=False))
