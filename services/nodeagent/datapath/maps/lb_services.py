"""The lb_services map (``lib/lb.h``): hash, service frontend (VIP, port, protocol) -> its
frontend id, Maglev tables (for pod and for outside traffic) and flags.

Written by the agent (through :class:`~services.nodeagent.datapath.lb.LbMaps`, after the
tables and backends a frontend uses); the programs look every new flow's destination up here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from services.nodeagent.datapath._byteorder import be16_to_port, be32_to_ip, port_to_be16
from services.nodeagent.datapath.errors import EncodeError
from services.nodeagent.datapath.maps._codec import (
    PORT_MAX,
    U32_MAX,
    address,
    check_range,
    encode_all,
    protocol,
    protocol_name,
)
from services.nodeagent.datapath.maps.spec import (
    GROUP_LB,
    FlatContext,
    FlatMap,
    MapSpec,
    Twin,
    u8,
    u16,
    u32,
)
from services.nodeagent.datapath.maps.view import ReconciledMap
from services.nodeagent.datapath.reconciler import ReconcileResult

NAME = "lb_services"
MAX_ENTRIES = 65536            # frontends (VIP, port, protocol)
PART = "lb"                    # the agent writes the lb maps as one part
# lb_svc_value.flags (lib/lb.h)
LB_SVC_F_AFFINITY = 0x1
LB_SVC_F_EXTERNAL = 0x2
LB_SVC_F_DSR = 0x4


# struct lb_svc_key (lib/lb.h)
class LbSvcKey(Twin):
    C_STRUCT, C_HEADER = "lb_svc_key", "lb.h"
    _fields_ = (("addr", u32), ("dport", u16), ("proto", u8), ("pad", u8))


# struct lb_svc_value (lib/lb.h)
class LbSvcValue(Twin):
    C_STRUCT, C_HEADER = "lb_svc_value", "lb.h"
    _fields_ = (("svc_id", u32), ("affinity_timeout", u32), ("table_int", u32),
                ("table_ext", u32), ("size_int", u32), ("size_ext", u32), ("flags", u8),
                ("pad", u8 * 3))


class LbFrontend(NamedTuple):
    """A service frontend: where clients connect."""

    address: str
    port: int
    protocol: str = "TCP"


class LbServiceEntry(NamedTuple):
    """What the datapath knows of a frontend."""

    svc_id: int                 # frontend id (service id and port index, see lbstate)
    table_int: int              # Maglev table for traffic from pods
    size_int: int               # its slots (0: no backend)
    table_ext: int = 0          # Maglev table for traffic from outside
    size_ext: int = 0
    affinity_timeout: int = 0   # seconds; 0: no session affinity
    external: bool = False      # served on the underlay (NodePort, LB IP, externalIP)
    dsr: bool = False           # external traffic to remote backends uses DSR


def frontend_text(fe: LbFrontend) -> str:
    return f"{fe.address}:{fe.port}/{fe.protocol}"


def _entry(fe: LbFrontend, e: LbServiceEntry) -> tuple[bytes, bytes]:
    what = f"frontend {frontend_text(fe)}"
    check_range(what, "port", fe.port, 0, PORT_MAX)
    for fld in ("svc_id", "table_int", "size_int", "table_ext", "size_ext",
                "affinity_timeout"):
        check_range(what, fld, getattr(e, fld), 0, U32_MAX)
    flags = ((LB_SVC_F_AFFINITY if e.affinity_timeout else 0)
             | (LB_SVC_F_EXTERNAL if e.external else 0) | (LB_SVC_F_DSR if e.dsr else 0))
    key = LbSvcKey(addr=address(what, fe.address), dport=port_to_be16(fe.port),
                   proto=protocol(what, fe.protocol))
    val = LbSvcValue(svc_id=e.svc_id, affinity_timeout=e.affinity_timeout,
                     table_int=e.table_int, table_ext=e.table_ext, size_int=e.size_int,
                     size_ext=e.size_ext, flags=flags)
    return key.to_bytes(), val.to_bytes()


def encode_services(desired: Mapping[LbFrontend, LbServiceEntry],
                    errors: list[EncodeError] | None = None) -> dict[bytes, bytes]:
    """Frontends as map bytes (``errors``: collect malformed ones and leave them out).

    The entries' ``table_*`` fields must already hold what the kernel's frontend holds (a
    table's base slot, or its one backend's id; see :class:`~.lb_maglev_slots.MaglevSlots`).
    """
    return encode_all(desired, _entry, errors)


def decode_services(raw: Mapping[bytes, bytes]) -> dict[LbFrontend, LbServiceEntry]:
    out = {}
    for kb, vb in raw.items():
        k = LbSvcKey.from_buffer_copy(kb)
        v = LbSvcValue.from_buffer_copy(vb)
        out[LbFrontend(be32_to_ip(k.addr), be16_to_port(k.dport), protocol_name(k.proto))] = \
            LbServiceEntry(v.svc_id, v.table_int, v.size_int, v.table_ext, v.size_ext,
                           v.affinity_timeout, bool(v.flags & LB_SVC_F_EXTERNAL),
                           bool(v.flags & LB_SVC_F_DSR))
    return out


class LbServicesMap(ReconciledMap):
    """Frontends, as the kernel's frontends hold them (tables resolved to slots)."""

    def reconcile(self, desired: Mapping[LbFrontend, LbServiceEntry],
                  _scope: None = None) -> ReconcileResult:
        """Make the map hold exactly ``desired`` (tables already resolved); a frontend that
        cannot be encoded is left out and counted."""
        return self.write(encode_services, desired)

    def entries(self) -> dict[LbFrontend, LbServiceEntry]:
        return decode_services(self.backend.read_all())


def flat(entries: Mapping[LbFrontend, LbServiceEntry], _ctx: FlatContext) -> FlatMap:
    return {frontend_text(f): {"frontend_id": e.svc_id, "backends": e.size_int,
                               "external": e.external, "affinity_timeout": e.affinity_timeout}
            for f, e in sorted(entries.items())}


SPEC: MapSpec[LbServicesMap] = MapSpec(
    name=NAME, header="lb.h", map_type="hash", key=LbSvcKey, value=LbSvcValue,
    max_entries=MAX_ENTRIES, cflags={"CILIA_LB_SERVICES_MAX": MAX_ENTRIES},
    view=LbServicesMap, group=GROUP_LB, part=PART, flat=flat)
