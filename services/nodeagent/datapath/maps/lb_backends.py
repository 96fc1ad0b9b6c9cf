"""The lb_backends map (``lib/lb.h``): hash, backend id -> address, port, protocol, flags.

Written by the agent (through :class:`~services.nodeagent.datapath.lb.LbMaps`: new backends
before the frontends that use them, removed ones after); the Maglev slots name backends by id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from services.nodeagent.datapath._byteorder import (
    be16_to_port,
    be32_to_ip,
    ip_to_be32,
    port_to_be16,
)
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
from services.nodeagent.datapath.maps.lb_services import PART
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

NAME = "lb_backends"
MAX_ENTRIES = 65536
# lb_backend_value.flags (lib/lb.h)
LB_BE_F_LOCAL = 0x1
LB_BE_F_TERMINATING = 0x2


# struct lb_backend_key (lib/lb.h)
class LbBackendKey(Twin):
    C_STRUCT, C_HEADER = "lb_backend_key", "lb.h"
    _fields_ = (("id", u32),)


# struct lb_backend_value (lib/lb.h)
class LbBackendValue(Twin):
    C_STRUCT, C_HEADER = "lb_backend_value", "lb.h"
    _fields_ = (("addr", u32), ("port", u16), ("proto", u8), ("flags", u8))


class LbBackendEntry(NamedTuple):
    address: str
    port: int
    protocol: str = "TCP"
    local: bool = False
    terminating: bool = False


def _entry(bid: int, e: LbBackendEntry) -> tuple[bytes, bytes]:
    what = f"backend {bid}"
    check_range(what, "id", bid, 0, U32_MAX)
    check_range(what, "port", e.port, 0, PORT_MAX)
    flags = (LB_BE_F_LOCAL if e.local else 0) | (LB_BE_F_TERMINATING if e.terminating else 0)
    return LbBackendKey(id=bid).to_bytes(), LbBackendValue(
        addr=address(what, e.address), port=port_to_be16(e.port),
        proto=protocol(what, e.protocol), flags=flags).to_bytes()


def encode_backends(desired: Mapping[int, LbBackendEntry],
                    errors: list[EncodeError] | None = None) -> dict[bytes, bytes]:
    """Backends as map bytes (``errors``: collect malformed ones and leave them out)."""
    return encode_all(desired, _entry, errors)


def decode_backends(raw: Mapping[bytes, bytes]) -> dict[int, LbBackendEntry]:
    out = {}
    for kb, vb in raw.items():
        v = LbBackendValue.from_buffer_copy(vb)
        out[LbBackendKey.from_buffer_copy(kb).id] = LbBackendEntry(
            be32_to_ip(v.addr), be16_to_port(v.port), protocol_name(v.proto),
            bool(v.flags & LB_BE_F_LOCAL), bool(v.flags & LB_BE_F_TERMINATING))
    return out


class LbBackendsMap(ReconciledMap):
    """Backend id -> address, as the Maglev slots and LB conntrack name them."""

    def reconcile(self, desired: Mapping[int, LbBackendEntry],
                  _scope: None = None) -> ReconcileResult:
        """Make the map hold exactly ``desired``; a backend that cannot be encoded is left
        out and counted."""
        return self.write(encode_backends, desired)

    def entries(self) -> dict[int, LbBackendEntry]:
        return decode_backends(self.backend.read_all())

    def ids_at(self, addresses: Iterable[str]) -> set[int]:
        """The ids of the backends (in the kernel map) at one of ``addresses``."""
        addrs = {ip_to_be32(a) for a in addresses}
        return {LbBackendKey.from_buffer_copy(kb).id
                for kb, vb in self.backend.read_all().items()
                if LbBackendValue.from_buffer_copy(vb).addr in addrs}


def flat(entries: Mapping[int, LbBackendEntry], _ctx: FlatContext) -> FlatMap:
    return {str(bid): {"address": f"{b.address}:{b.port}/{b.protocol}", "local": b.local,
                       "terminating": b.terminating} for bid, b in sorted(entries.items())}


SPEC: MapSpec[LbBackendsMap] = MapSpec(
    name=NAME, header="lb.h", map_type="hash", key=LbBackendKey, value=LbBackendValue,
    max_entries=MAX_ENTRIES, cflags={"CILIA_LB_BACKENDS_MAX": MAX_ENTRIES},
    view=LbBackendsMap, group=GROUP_LB, part=PART, flat=flat)
