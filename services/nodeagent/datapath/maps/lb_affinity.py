"""The lb_affinity map (``lib/lb.h``): LRU hash, (client IPv4, frontend table) -> the backend
the client is pinned to (``sessionAffinity: ClientIP``) and when it last used it.

The kernel writes it; userspace lists it and purges the entries of addresses that went away.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.nodeagent.datapath._byteorder import be32_to_ip, ip_to_be32
from services.nodeagent.datapath.backend import MapBackend
from services.nodeagent.datapath.maps.spec import GROUP_LB, MapSpec, Twin, u32, u64

NAME = "lb_affinity"
MAX_ENTRIES = 65536            # sessionAffinity ClientIP entries (LRU)


# struct lb_affinity_key (lib/lb.h)
class LbAffinityKey(Twin):
    C_STRUCT, C_HEADER = "lb_affinity_key", "lb.h"
    _fields_ = (("client", u32), ("svc_id", u32))


# struct lb_affinity_value (lib/lb.h)
class LbAffinityValue(Twin):
    C_STRUCT, C_HEADER = "lb_affinity_value", "lb.h"
    _fields_ = (("last_ns", u64), ("backend_id", u32), ("pad", u32))


class LbAffinityMap:
    """Client affinity entries; the kernel writes them, userspace lists and purges."""

    def __init__(self, backend: MapBackend) -> None:
        self.backend = backend

    def entries(self) -> dict[tuple[str, int], int]:
        """(client ip, frontend id << 1 | external) -> backend id."""
        out = {}
        for kb, vb in self.backend.read_all().items():
            k = LbAffinityKey.from_buffer_copy(kb)
            out[(be32_to_ip(k.client), k.svc_id)] = LbAffinityValue.from_buffer_copy(
                vb).backend_id
        return out

    def purge(self, addresses: Iterable[str], backend_ids: set[int]) -> int:
        """Delete the entries of a client in ``addresses`` or pinned to one of
        ``backend_ids``. Returns how many."""
        addrs = {ip_to_be32(a) for a in addresses}
        gone = [kb for kb, vb in self.backend.read_all().items()
                if LbAffinityKey.from_buffer_copy(kb).client in addrs
                or LbAffinityValue.from_buffer_copy(vb).backend_id in backend_ids]
        if gone:
            self.backend.delete(gone)
        return len(gone)

    def flush(self) -> None:
        """Forget every entry (tests; a real agent never does this)."""
        keys = list(self.backend.read_all())
        if keys:
            self.backend.delete(keys)


SPEC: MapSpec[LbAffinityMap] = MapSpec(
    name=NAME, header="lb.h", map_type="lru_hash", key=LbAffinityKey, value=LbAffinityValue,
    max_entries=MAX_ENTRIES, cflags={"CILIA_LB_AFFINITY_MAX": MAX_ENTRIES},
    view=LbAffinityMap, group=GROUP_LB)
