"""The ipcache map (``lib/ipcache.h``): LPM trie, IPv4 prefix -> identity, tunnel endpoint.

Written by the agent from the bus (pod, node and CIDR identities); the datapath reads it for
the peer identity of every packet, and in tunnel mode for the node behind a destination.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from services.nodeagent.datapath._byteorder import be32_to_ip, ip_to_be32
from services.nodeagent.datapath.errors import EncodeError
from services.nodeagent.datapath.maps._codec import (
    U8_MAX,
    U32_MAX,
    check_range,
    encode_all,
    network,
)
from services.nodeagent.datapath.maps.spec import (
    GROUP_NODE,
    FlatContext,
    FlatMap,
    MapSpec,
    Renderer,
    Row,
    Twin,
    u8,
    u32,
)
from services.nodeagent.datapath.maps.view import ReconciledMap
from services.nodeagent.datapath.reconciler import ReconcileResult

NAME = "ipcache"
MAX_ENTRIES = 65536
NO_TUNNEL = "0.0.0.0"       # how `bpf ipcache list` shows "no tunnel endpoint" (Cilium's)


# struct ipcache_key (lib/ipcache.h)
class IpcacheKey(Twin):
    C_STRUCT, C_HEADER = "ipcache_key", "ipcache.h"
    _fields_ = (("prefixlen", u32), ("addr", u32))  # addr: network byte order


# struct ipcache_value (lib/ipcache.h)
class IpcacheValue(Twin):
    C_STRUCT, C_HEADER = "ipcache_value", "ipcache.h"
    _fields_ = (("identity", u32), ("tunnel_endpoint", u32), ("flags", u8), ("pad", u8 * 3))


class IpcacheEntry(NamedTuple):
    """What the ipcache says about a prefix."""

    identity: int
    tunnel_endpoint: str = ""   # IPv4 of the node hosting the prefix; "" for none/local
    flags: int = 0


def _key(prefix: str) -> bytes:
    net = network(prefix, f"ipcache entry {prefix!s}")
    return IpcacheKey(prefixlen=net.prefixlen, addr=ip_to_be32(net.network_address)).to_bytes()


def _entry(prefix: str, entry: IpcacheEntry) -> tuple[bytes, bytes]:
    what = f"ipcache entry {prefix!s}"
    key = _key(prefix)
    check_range(what, "identity", entry.identity, 1, U32_MAX)
    check_range(what, "flags", entry.flags, 0, U8_MAX)
    try:
        tunnel = ip_to_be32(entry.tunnel_endpoint) if entry.tunnel_endpoint else 0
    except ValueError as exc:
        raise EncodeError(f"{what}: field tunnel_endpoint: {exc}") from exc
    val = IpcacheValue(identity=entry.identity, tunnel_endpoint=tunnel, flags=entry.flags)
    return key, val.to_bytes()


def encode_ipcache(desired: Mapping[str, IpcacheEntry],
                   errors: list[EncodeError] | None = None) -> dict[bytes, bytes]:
    """ipcache entries (``"10.0.1.5/32"`` or ``"10.0.0.0/8"`` -> entry) as map bytes.

    Args:
        errors: collect malformed entries here and leave them out (else the first raises).
    """
    return encode_all(desired, _entry, errors)


def ipcache_keys(prefixes: Iterable[str]) -> list[bytes]:
    """The map keys of some prefixes (to scope an incremental reconcile)."""
    return [_key(prefix) for prefix in prefixes]


def decode_ipcache(raw: Mapping[bytes, bytes]) -> dict[str, IpcacheEntry]:
    out: dict[str, IpcacheEntry] = {}
    for kb, vb in raw.items():
        key = IpcacheKey.from_buffer_copy(kb)
        val = IpcacheValue.from_buffer_copy(vb)
        prefix = f"{be32_to_ip(key.addr)}/{key.prefixlen}"
        tunnel = be32_to_ip(val.tunnel_endpoint) if val.tunnel_endpoint else ""
        out[prefix] = IpcacheEntry(val.identity, tunnel, val.flags)
    return out


def held_identity(view: IpcacheMap, ip: str, default: int) -> int:
    """The identity the datapath resolves ``ip`` to by longest prefix, per what the agent wrote
    to the map (its mirror); ``default`` when no prefix holds it (lib/ipcache.h: world)."""
    net = ipaddress.ip_address(ip)
    for plen in range(32, -1, -1):
        prefix = ipaddress.ip_network(f"{net}/{plen}", strict=False)
        raw = view.reconciler.held(_key(str(prefix)))
        if raw is not None:
            return int(IpcacheValue.from_buffer_copy(raw).identity)
    return default


class IpcacheMap(ReconciledMap):
    """prefix -> identity and hosting node."""

    def reconcile(self, desired: Mapping[str, IpcacheEntry],
                  prefixes: Iterable[str] | None = None) -> ReconcileResult:
        """Make the ipcache hold exactly ``desired`` (``"10.0.1.5/32"`` -> entry).

        With ``prefixes``, only those prefixes are reconciled (an incremental patch: a prefix
        listed there but absent from ``desired`` is deleted); others are left alone.
        """
        keys = None if prefixes is None else ipcache_keys(prefixes)
        return self.write(encode_ipcache, desired, keys=keys)

    def entries(self) -> dict[str, IpcacheEntry]:
        """What the kernel map holds (read from the map, not the mirror)."""
        return decode_ipcache(self.reconciler.backend.read_all())


def rows(view: IpcacheMap) -> list[Row]:
    return [{"prefix": prefix, "identity": entry.identity,
             "tunnel_endpoint": entry.tunnel_endpoint or NO_TUNNEL}
            for prefix, entry in sorted(view.entries().items())]


def cells(r: Row) -> list[Any]:
    return [r["prefix"], f"identity={r['identity']} encryptkey=0 "
            f"tunnelendpoint={r['tunnel_endpoint']}", r["node"]]


def flat(entries: Mapping[str, IpcacheEntry], _ctx: FlatContext) -> FlatMap:
    return {p: {"identity": e.identity, "tunnel_endpoint": e.tunnel_endpoint}
            for p, e in sorted(entries.items())}


SPEC: MapSpec[IpcacheMap] = MapSpec(
    name=NAME, header="ipcache.h", map_type="lpm_trie", key=IpcacheKey, value=IpcacheValue,
    max_entries=MAX_ENTRIES, cflags={"CILIA_IPCACHE_MAX": MAX_ENTRIES}, view=IpcacheMap,
    group=GROUP_NODE, part=NAME,
    renderer=Renderer("ipcache", "The ipcache map (prefix -> identity).",
                      "List the ipcache of each node, from the kernel.", rows,
                      ("IP PREFIX/ADDRESS", "IDENTITY", "NODE"), cells),
    flat=flat)
