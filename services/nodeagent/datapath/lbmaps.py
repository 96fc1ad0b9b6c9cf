"""Typed views of the node's load-balancing maps (``lib/lb.h``), driven by reconcilers.

The agent hands them desired contents in domain terms (from
:mod:`services.nodeagent.lbstate`): frontends -> :class:`LbServiceEntry`, backend ids ->
:class:`LbBackendEntry`, logical Maglev table ids -> backend id per slot. Encoding is pure and
happens before any write; the reconcilers apply only the difference. Tables go into the slot
array through :class:`~services.nodeagent.datapath.lbmaglev.MaglevSlots`, which writes only
the slots that changed, and frontends are written with their tables' base slots.
"""

from __future__ import annotations

import ctypes as ct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath._byteorder import (
    be16_to_port,
    be32_to_ip,
    ip_to_be32,
    port_to_be16,
)
from services.nodeagent.datapath.backend import MapBackend, PinnedMapBackend
from services.nodeagent.datapath.encode import EncodeError
from services.nodeagent.datapath.lbmaglev import MaglevSlots, read_slots, table_id
from services.nodeagent.datapath.maps import check_pins
from services.nodeagent.datapath.reconciler import Reconciler, ReconcileResult
from services.nodeagent.datapath.twins import (
    LbAffinityKey,
    LbAffinityValue,
    LbBackendKey,
    LbBackendValue,
    LbCtKey,
    LbCtValue,
    LbMaglevValue,
    LbNodeMacKey,
    LbNodeMacValue,
    LbSvcKey,
    LbSvcValue,
    Twin,
)

# lb_svc_value.flags / lb_backend_value.flags / lb_ct_key.kind (lib/lb.h)
LB_SVC_F_AFFINITY = 0x1
LB_SVC_F_EXTERNAL = 0x2
LB_SVC_F_DSR = 0x4
LB_BE_F_LOCAL = 0x1
LB_BE_F_TERMINATING = 0x2
LB_CT_SERVICE, LB_CT_REVNAT, LB_CT_SNAT, LB_CT_SNAT_FWD = 1, 2, 3, 4
LB_CT_KINDS = {LB_CT_SERVICE: "service", LB_CT_REVNAT: "revnat", LB_CT_SNAT: "snat",
               LB_CT_SNAT_FWD: "snat-fwd"}
MAC_BYTES = 6
PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}
U32_MAX = (1 << 32) - 1


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


class LbBackendEntry(NamedTuple):
    address: str
    port: int
    protocol: str = "TCP"
    local: bool = False
    terminating: bool = False


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


def _check(what: str, fld: str, value: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi:
        raise EncodeError(f"{what}: field {fld}={value!r} is not an integer in [0, {hi}]")


def _addr(what: str, value: str) -> int:
    try:
        return ip_to_be32(value)
    except ValueError as exc:
        raise EncodeError(f"{what}: field address: {exc}") from exc


def _proto(what: str, value: str) -> int:
    if value not in PROTO_NUMBERS:
        raise EncodeError(f"{what}: field protocol={value!r} is not TCP, UDP or SCTP")
    return PROTO_NUMBERS[value]


def encode_services(desired: Mapping[LbFrontend, LbServiceEntry],
                    errors: list[EncodeError] | None = None) -> dict[bytes, bytes]:
    """Frontends as map bytes (``errors``: collect malformed ones and leave them out)."""
    out: dict[bytes, bytes] = {}
    for fe, e in desired.items():
        try:
            key, val = _service_entry(fe, e)
        except EncodeError as exc:
            if errors is None:
                raise
            errors.append(exc)
        else:
            out[key] = val
    return out


def _service_entry(fe: LbFrontend, e: LbServiceEntry) -> tuple[bytes, bytes]:
    what = f"frontend {fe.address}:{fe.port}/{fe.protocol}"
    _check(what, "port", fe.port, 65535)
    for fld in ("svc_id", "table_int", "size_int", "table_ext", "size_ext",
                "affinity_timeout"):
        _check(what, fld, getattr(e, fld), U32_MAX)
    flags = ((LB_SVC_F_AFFINITY if e.affinity_timeout else 0)
             | (LB_SVC_F_EXTERNAL if e.external else 0) | (LB_SVC_F_DSR if e.dsr else 0))
    key = LbSvcKey(addr=_addr(what, fe.address), dport=port_to_be16(fe.port),
                   proto=_proto(what, fe.protocol))
    val = LbSvcValue(svc_id=e.svc_id, affinity_timeout=e.affinity_timeout,
                     table_int=e.table_int, table_ext=e.table_ext, size_int=e.size_int,
                     size_ext=e.size_ext, flags=flags)
    return key.to_bytes(), val.to_bytes()


def decode_services(raw: Mapping[bytes, bytes]) -> dict[LbFrontend, LbServiceEntry]:
    out = {}
    for kb, vb in raw.items():
        k = LbSvcKey.from_buffer_copy(kb)
        v = LbSvcValue.from_buffer_copy(vb)
        out[LbFrontend(be32_to_ip(k.addr), be16_to_port(k.dport),
                       PROTO_NAMES.get(k.proto, str(k.proto)))] = LbServiceEntry(
            v.svc_id, v.table_int, v.size_int, v.table_ext, v.size_ext, v.affinity_timeout,
            bool(v.flags & LB_SVC_F_EXTERNAL), bool(v.flags & LB_SVC_F_DSR))
    return out


def encode_backends(desired: Mapping[int, LbBackendEntry],
                    errors: list[EncodeError] | None = None) -> dict[bytes, bytes]:
    """Backends as map bytes (``errors``: collect malformed ones and leave them out)."""
    out: dict[bytes, bytes] = {}
    for bid, e in desired.items():
        try:
            key, val = _backend_entry(bid, e)
        except EncodeError as exc:
            if errors is None:
                raise
            errors.append(exc)
        else:
            out[key] = val
    return out


def mac_bytes(what: str, mac: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` as 6 bytes.

    Raises:
        EncodeError: not a MAC address (the message names ``what``).
    """
    try:
        raw = bytes.fromhex(mac.replace(":", ""))
    except (ValueError, AttributeError):
        raw = b""
    if len(raw) != MAC_BYTES or mac.count(":") != MAC_BYTES - 1:
        raise EncodeError(f"{what}: field mac={mac!r} is not a MAC address")
    return raw


def encode_node_macs(desired: Mapping[str, str]) -> dict[bytes, bytes]:
    """Underlay MAC -> node IP of the cluster's nodes (the DSR senders it trusts)."""
    out: dict[bytes, bytes] = {}
    for mac, ip in desired.items():
        what = f"node mac {mac}"
        key = LbNodeMacKey()
        key.mac[:] = list(mac_bytes(what, mac))
        out[key.to_bytes()] = LbNodeMacValue(node_ip=_addr(what, ip)).to_bytes()
    return out


def decode_node_macs(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {":".join(f"{b:02x}" for b in LbNodeMacKey.from_buffer_copy(kb).mac):
            be32_to_ip(LbNodeMacValue.from_buffer_copy(vb).node_ip) for kb, vb in raw.items()}


def _backend_entry(bid: int, e: LbBackendEntry) -> tuple[bytes, bytes]:
    what = f"backend {bid}"
    _check(what, "id", bid, U32_MAX)
    _check(what, "port", e.port, 65535)
    flags = (LB_BE_F_LOCAL if e.local else 0) | (LB_BE_F_TERMINATING if e.terminating else 0)
    return LbBackendKey(id=bid).to_bytes(), LbBackendValue(
        addr=_addr(what, e.address), port=port_to_be16(e.port),
        proto=_proto(what, e.protocol), flags=flags).to_bytes()


def decode_backends(raw: Mapping[bytes, bytes]) -> dict[int, LbBackendEntry]:
    out = {}
    for kb, vb in raw.items():
        v = LbBackendValue.from_buffer_copy(vb)
        out[LbBackendKey.from_buffer_copy(kb).id] = LbBackendEntry(
            be32_to_ip(v.addr), be16_to_port(v.port), PROTO_NAMES.get(v.proto, str(v.proto)),
            bool(v.flags & LB_BE_F_LOCAL), bool(v.flags & LB_BE_F_TERMINATING))
    return out


@dataclass
class LbPlan:
    """Desired contents of the lb maps; ``table_scope`` limits the Maglev reconcile to those
    tables (None: the whole map)."""

    services: dict[LbFrontend, LbServiceEntry] = field(default_factory=dict)
    backends: dict[int, LbBackendEntry] = field(default_factory=dict)
    tables: dict[int, list[int]] = field(default_factory=dict)
    table_scope: set[int] | None = None
    node_macs: dict[str, str] | None = None     # underlay MAC -> node IP; None: unchanged


BackendFactory = Callable[[str, int, int], MapBackend]


class _SlotKey(Twin):
    """The u32 index of the lb_maglev_slots array."""

    _fields_ = (("slot", ct.c_uint32),)

_LB_TWINS: dict[str, tuple[type[Twin], type[Twin]]] = {
    c.MAP_LB_SERVICES: (LbSvcKey, LbSvcValue),
    c.MAP_LB_BACKENDS: (LbBackendKey, LbBackendValue),
    c.MAP_LB_MAGLEV: (_SlotKey, LbMaglevValue),
    c.MAP_LB_CT: (LbCtKey, LbCtValue),
    c.MAP_LB_AFFINITY: (LbAffinityKey, LbAffinityValue),
    c.MAP_LB_NODE_MACS: (LbNodeMacKey, LbNodeMacValue),
}


def check_lb_pins(node: str) -> None:
    """:func:`~services.nodeagent.datapath.maps.check_pins` for the lb maps."""
    check_pins(node, _LB_TWINS)


class LbMaps:
    """The node's lb maps, opened from their pins (created by loading either program)."""

    def __init__(self, node: str, factory: BackendFactory | None = None) -> None:
        self.node = node
        self.pin_dir: Path = c.pin_dir(node)
        make = factory or self._pinned
        self._backends = {name: make(name, ct.sizeof(k), ct.sizeof(v))
                          for name, (k, v) in _LB_TWINS.items()}
        self.services = Reconciler(self._backends[c.MAP_LB_SERVICES])
        self.backends = Reconciler(self._backends[c.MAP_LB_BACKENDS])
        self.maglev = MaglevSlots(self._backends[c.MAP_LB_MAGLEV])
        self.node_macs = Reconciler(self._backends[c.MAP_LB_NODE_MACS])
        for entry in self.service_entries().values():     # a restarted agent's placement
            self.maglev.adopt(table_id(entry.svc_id, False), entry.table_int, entry.size_int)
            shared = (entry.table_ext, entry.size_ext) == (entry.table_int, entry.size_int)
            self.maglev.adopt(table_id(entry.svc_id, not shared), entry.table_ext,
                              entry.size_ext)

    def _pinned(self, name: str, key_size: int, value_size: int) -> MapBackend:
        return PinnedMapBackend(self.pin_dir / name, key_size, value_size)

    def _resolve(self, services: Mapping[LbFrontend, LbServiceEntry],
                 errors: list[EncodeError]) -> dict[LbFrontend, LbServiceEntry]:
        """Logical table ids -> what the kernel's frontend holds (base slot or backend id);
        a frontend whose table is in no plan is left out (collected in ``errors``)."""
        out = {}
        for fe, e in services.items():
            try:
                t_int = self.maglev.value_of(e.table_int) if e.size_int else 0
                t_ext = self.maglev.value_of(e.table_ext) if e.size_ext else 0
            except KeyError as exc:
                errors.append(EncodeError(
                    f"frontend {fe.address}:{fe.port}/{fe.protocol}: table {exc} is in no "
                    f"plan (apply a full plan first)"))
                continue
            out[fe] = e._replace(table_int=t_int, table_ext=t_ext)
        return out

    def apply(self, plan: LbPlan) -> dict[str, ReconcileResult]:
        """Reconcile the maps to ``plan``: tables and backends before the frontends that use
        them, removed ones after.

        A frontend or backend that cannot be encoded is left out and counted
        (``skipped``); the others are written.

        Raises:
            MapFullError: no room for a table, frontend or backend.
        """
        be_errors: list[EncodeError] = []
        bes = encode_backends(plan.backends, be_errors)
        macs = None if plan.node_macs is None else encode_node_macs(plan.node_macs)
        out = {"backends": self.backends.reconcile({**self.backends.actual(), **bes})}
        mag = ReconcileResult()
        for logical, slots in sorted(plan.tables.items()):
            self.maglev.put(logical, slots, mag)
        scope = self.maglev.known() if plan.table_scope is None else set(plan.table_scope)
        gone = scope - set(plan.tables)
        out["maglev"] = mag
        fe_errors: list[EncodeError] = []
        fronts = encode_services(self._resolve(plan.services, fe_errors), fe_errors)
        out["services"] = self.services.skip(fe_errors, self.services.reconcile(fronts))
        for logical in gone:
            self.maglev.release(logical)
        mag.deleted = len(gone)
        # second pass: drop backends no longer wanted (after the frontends stopped using them)
        out["backends"] = self.backends.skip(be_errors, self.backends.reconcile(bes))
        if macs is not None:
            out["node_macs"] = self.node_macs.reconcile(macs)
        return out

    def invalidate(self) -> None:
        """Forget what the maps hold (after a failed apply): the next apply reads them."""
        self.services.invalidate()
        self.backends.invalidate()
        self.maglev.invalidate()
        self.node_macs.invalidate()

    def repairers(self) -> dict[str, Callable[[], int]]:
        """Drift repair of each map the agent writes, by map name: each call puts back what
        differs from what was written and returns how many entries or slots it wrote."""
        return {c.MAP_LB_SERVICES: self.services.repair, c.MAP_LB_BACKENDS: self.backends.repair,
                c.MAP_LB_MAGLEV: self.maglev.repair, c.MAP_LB_NODE_MACS: self.node_macs.repair}

    def node_mac_entries(self) -> dict[str, str]:
        """Underlay MAC -> node IP, as the kernel holds them."""
        return decode_node_macs(self._backends[c.MAP_LB_NODE_MACS].read_all())

    def service_entries(self) -> dict[LbFrontend, LbServiceEntry]:
        return decode_services(self._backends[c.MAP_LB_SERVICES].read_all())

    def backend_entries(self) -> dict[int, LbBackendEntry]:
        return decode_backends(self._backends[c.MAP_LB_BACKENDS].read_all())

    def maglev_tables(self, tables: Iterable[int] | None = None) -> dict[int, list[int]]:
        """Logical table id -> backend id per slot, as the kernel holds them."""
        return self.maglev.tables(tables)

    def kernel_table(self, value: int, size: int) -> list[int]:
        """The slots a frontend's ``table_*`` field and size name (what ``bpf lb list``
        shows)."""
        if size <= 1:
            return [value] if size else []
        return read_slots(self._backends[c.MAP_LB_MAGLEV], value, size)

    def ct_entries(self) -> list[LbCtEntry]:
        out = []
        for kb, vb in self._backends[c.MAP_LB_CT].read_all().items():
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

    def affinity_entries(self) -> dict[tuple[str, int], int]:
        """(client ip, frontend id << 1 | external) -> backend id."""
        out = {}
        for kb, vb in self._backends[c.MAP_LB_AFFINITY].read_all().items():
            k = LbAffinityKey.from_buffer_copy(kb)
            out[(be32_to_ip(k.client), k.svc_id)] = LbAffinityValue.from_buffer_copy(
                vb).backend_id
        return out

    def gc(self, max_idle_s: float = c.CT_LIFETIME_TCP, now_ns: int | None = None) -> int:
        """Delete LB conntrack entries unused for ``max_idle_s`` (the kernel refreshes an
        entry's ``last_ns`` at most once a second while packets use it); the map is an LRU
        as well, so this only keeps it from filling with dead flows. Returns how many."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        limit = int(max_idle_s * c.NS_PER_SEC)
        backend = self._backends[c.MAP_LB_CT]
        dead = [kb for kb, vb in backend.read_all().items()
                if now - LbCtValue.from_buffer_copy(vb).last_ns > limit]
        if dead:
            backend.delete(dead)
        return len(dead)

    def purge(self, addresses: Iterable[str]) -> int:
        """Forget every LB conntrack and affinity entry that names one of ``addresses`` (an
        endpoint that went away, or a new one on a reused address): as either end of the
        key, in the translation it records, or as the address of the backend it chose.
        Returns how many entries were deleted."""
        addrs = {ip_to_be32(a) for a in addresses}
        if not addrs:
            return 0
        bids = {LbBackendKey.from_buffer_copy(kb).id
                for kb, vb in self._backends[c.MAP_LB_BACKENDS].read_all().items()
                if LbBackendValue.from_buffer_copy(vb).addr in addrs}
        ct_b = self._backends[c.MAP_LB_CT]
        dead = []
        for kb, vb in ct_b.read_all().items():
            k = LbCtKey.from_buffer_copy(kb)
            v = LbCtValue.from_buffer_copy(vb)
            if ({k.saddr, k.daddr, v.addr, v.addr2} & addrs
                    or (k.kind in (LB_CT_SERVICE, LB_CT_SNAT, LB_CT_SNAT_FWD)
                        and v.backend_id in bids)):
                dead.append(kb)
        aff_b = self._backends[c.MAP_LB_AFFINITY]
        gone = [kb for kb, vb in aff_b.read_all().items()
                if LbAffinityKey.from_buffer_copy(kb).client in addrs
                or LbAffinityValue.from_buffer_copy(vb).backend_id in bids]
        for backend, keys in ((ct_b, dead), (aff_b, gone)):
            if keys:
                backend.delete(keys)
        return len(dead) + len(gone)

    def flush_flows(self) -> None:
        """Forget LB conntrack and affinity (tests; a real agent never does this)."""
        for name in (c.MAP_LB_CT, c.MAP_LB_AFFINITY):
            b = self._backends[name]
            keys = list(b.read_all())
            if keys:
                b.delete(keys)

    def close(self) -> None:
        for b in self._backends.values():
            close = getattr(b, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> LbMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
