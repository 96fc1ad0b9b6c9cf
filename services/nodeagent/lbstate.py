"""The node agent's load-balancing reducer: lb bus events in, one node's lb maps out. Pure.

It folds ``cilia.lb.>`` (the lb service's output, in stream order) and Node objects
(``cilia.src.node.>``, for the addresses NodePorts listen on) and computes what the node's
``lb_services``, ``lb_backends`` and ``lb_maglev`` maps should hold. Maglev tables are built
here, on the agent, from the backend set: the bus carries only membership deltas, never
tables. Agent use::

    lb = LbNodeState("node1", node_ips=["172.31.0.11"], lb_mode="snat")
    maps = LbMaps("node1")                      # services.nodeagent.datapath.lb
    for each event on cilia.lb.> and cilia.src.node.> (in order, deliver="all"):
        dirty = lb.apply(event.payload)
        if dirty:                               # or batch several and merge the Dirty sets
            maps.apply(lb.plan(dirty))
    maps.apply(lb.plan())                       # full reconcile (start, periodic resync)

Frontend ids and table ids: a service id ``S`` (from the lb service) and the index ``i`` of the
service port give the frontend id ``S << 8 | i`` (the datapath's ``svc_id``: LB conntrack and
affinity are per frontend); its Maglev tables are ``(S << 8 | i) << 1`` for traffic from pods
and ``... | 1`` for traffic from outside, the latter only when it differs
(``externalTrafficPolicy: Local``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.contract import KIND_NODE, ObjectDelete, ObjectUpsert, Payload
from services.lb.events import LbView, Touched
from services.lb.maglev import DEFAULT_TABLE_SIZE, build_table
from services.lb.resolve import STATE_ACTIVE, STATE_TERMINATING
from services.nodeagent.datapath.errors import EncodeError
from services.nodeagent.datapath.lb import LbPlan
from services.nodeagent.datapath.maps.lb_backends import LbBackendEntry
from services.nodeagent.datapath.maps.lb_maglev_slots import table_id
from services.nodeagent.datapath.maps.lb_node_macs import mac_bytes
from services.nodeagent.datapath.maps.lb_services import LbFrontend, LbServiceEntry

LB_MODES = ("snat", "dsr")
LB_MODE_ENV = "CILIA_LB_MODE"    # the agent's mode, like Cilium's loadBalancer.mode (snat default)
PORT_INDEX_BITS = 8              # service ports per service in a frontend id
MAX_PORTS = 1 << PORT_INDEX_BITS
NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")
# The Node annotation in which each agent publishes its underlay interface's MAC address: the
# Ethernet source its frames carry, by which other nodes recognise its DSR options.
NODE_MAC_ANNOTATION = "cilia.io/underlay-mac"


def frontend_id(service_id: int, port_index: int) -> int:
    return (service_id << PORT_INDEX_BITS) | port_index


@dataclass
class LbDirty:
    """Services whose tables or frontends may have changed; ``nodes``: NodePort addresses."""

    services: set[int] = field(default_factory=set)
    backends: set[int] = field(default_factory=set)
    nodes: bool = False

    def merge(self, other: LbDirty) -> None:
        self.services |= other.services
        self.backends |= other.backends
        self.nodes |= other.nodes

    def __bool__(self) -> bool:
        return bool(self.services or self.backends or self.nodes)


class LbNodeState:
    """What one node's lb maps should hold, folded from the bus (no I/O)."""

    def __init__(self, node: str, *, node_ips: list[str] | None = None, lb_mode: str = "snat",
                 maglev_size: int = DEFAULT_TABLE_SIZE) -> None:
        if lb_mode not in LB_MODES:
            raise ValueError(f"lb mode {lb_mode!r} is not one of {', '.join(LB_MODES)}")
        self.node = node
        self.lb_mode = lb_mode
        self.maglev_size = maglev_size
        self.view = LbView()
        self.node_addrs: dict[str, list[str]] = {node: list(node_ips or [])}
        self.node_macs: dict[str, str] = {}        # node name -> underlay MAC (annotation)
        self._tables_of: dict[int, set[int]] = {}     # service id -> its table ids (last plan)
        # Tables built during one plan() (the int and ext tables of a frontend are often the
        # same set); dropped afterwards: a table is 4 * maglev_size bytes in the kernel and
        # far more as Python objects.
        self._cache: dict[tuple[int, ...], list[int]] = {}
        self._plans: dict[int, dict[LbFrontend, LbServiceEntry]] = {}   # frontends per service

    # -- folding ------------------------------------------------------------------------------

    def apply(self, payload: Payload | None) -> LbDirty:
        """Fold one event's typed payload (an lb event's, or a Node's ``object.upsert`` or
        ``object.delete``; others are ignored).

        Raises:
            ValueError: no payload (decoding always sets one: a caller's mistake).
        """
        match payload:
            case ObjectUpsert(kind=kind, name=name, object=obj) if kind == KIND_NODE:
                return self._fold_node(name, obj)
            case ObjectDelete(kind=kind, name=name) if kind == KIND_NODE:
                return self._fold_node(name, None)
        t: Touched = self.view.apply(payload)
        return LbDirty(set(t.services), set(t.backends))

    def _fold_node(self, name: str, obj: Mapping[str, Any] | None) -> LbDirty:
        """A Node object (None: deleted): the addresses its NodePorts listen on, its MAC."""
        addrs: list[str] = []
        if obj is not None:
            status = obj.get("status") or {}
            addrs = [a["address"] for a in status.get("addresses") or []
                     if a.get("type") in NODE_ADDRESS_TYPES and "." in a["address"]]
        if name == self.node:
            addrs = sorted(set(addrs) | set(self.node_addrs.get(name, [])))
        macs_changed = self._fold_mac(name, obj or {})
        if self.node_addrs.get(name) != addrs:
            if addrs or name == self.node:
                self.node_addrs[name] = addrs
            else:
                self.node_addrs.pop(name, None)
            return LbDirty(nodes=True)
        if macs_changed:
            return LbDirty(nodes=True)
        return LbDirty()

    def _fold_mac(self, name: str, obj: Mapping[str, Any]) -> bool:
        """Record a Node's underlay MAC (a malformed one is ignored: it could never match a
        frame); True if it changed."""
        meta = obj.get("metadata") or {}
        mac = str((meta.get("annotations") or {}).get(NODE_MAC_ANNOTATION) or "").lower()
        try:
            mac_bytes(f"node {name}", mac)
        except EncodeError:
            mac = ""
        if self.node_macs.get(name, "") == mac:
            return False
        if mac:
            self.node_macs[name] = mac
        else:
            self.node_macs.pop(name, None)
        return True

    def desired_node_macs(self) -> dict[str, str]:
        """Underlay MAC -> node IP of every node that published one (the DSR senders)."""
        return {mac: (self.node_addrs.get(name) or ["0.0.0.0"])[0]
                for name, mac in sorted(self.node_macs.items())}

    # -- desired state -------------------------------------------------------------------------

    def all_node_ips(self) -> list[str]:
        return sorted({ip for ips in self.node_addrs.values() for ip in ips})

    def _members(self, sid: int, port_name: str, local_only: bool) -> list[tuple[str, int]]:
        out = []
        for name, bid in self.view.members.get(sid, ()):
            be = self.view.backends.get(bid)
            if name != port_name or be is None or (be.state or STATE_ACTIVE) != STATE_ACTIVE:
                continue
            if local_only and be.node != self.node:
                continue
            out.append((f"{be.address}:{be.port}/{be.protocol}", bid))
        return sorted(out)

    def _table(self, members: list[tuple[str, int]]) -> list[int]:
        """One slot for a single backend (every slot would name it), else a Maglev table."""
        if not members:
            return []
        if len(members) == 1:
            return [members[0][1]]
        key = tuple(b for _, b in members)
        table = self._cache.get(key)
        if table is None:
            table = build_table(members, self.maglev_size)
            self._cache[key] = table
        return table

    def service_plan(self, sid: int) -> tuple[dict[LbFrontend, LbServiceEntry],
                                              dict[int, list[int]]]:
        """The frontends and Maglev tables of one service."""
        svc = self.view.services.get(sid)
        fronts: dict[LbFrontend, LbServiceEntry] = {}
        tables: dict[int, list[int]] = {}
        if svc is None:
            return fronts, tables
        node_ips = self.all_node_ips()
        dsr = self.lb_mode == "dsr"
        for idx, port in enumerate(svc.ports[:MAX_PORTS]):
            fid = frontend_id(sid, idx)
            t_int = self._table(self._members(sid, port.name, svc.int_local))
            t_ext = self._table(self._members(sid, port.name, svc.ext_local))
            tid_int = table_id(fid, False)
            tid_ext = tid_int if t_ext == t_int else table_id(fid, True)
            tables[tid_int] = t_int
            tables[tid_ext] = t_ext
            proto = port.protocol
            internal = LbServiceEntry(fid, tid_int, len(t_int), tid_ext, len(t_ext),
                                      svc.affinity_timeout)
            external = internal._replace(external=True, dsr=dsr)
            if svc.cluster_ip:
                fronts[LbFrontend(svc.cluster_ip, port.port, proto)] = internal
            for ip in [*svc.external_ips, *svc.lb_ips]:
                fronts[LbFrontend(ip, port.port, proto)] = external
            if port.node_port:
                for ip in node_ips:
                    fronts[LbFrontend(ip, port.node_port, proto)] = external
        return fronts, {t: s for t, s in tables.items() if s}

    def backends(self) -> dict[int, LbBackendEntry]:
        """Every backend some service refers to (terminating ones too: they keep flows)."""
        out = {}
        for bid in self.view.referenced_backends():
            be = self.view.backends.get(bid)
            if be is None:
                continue
            out[bid] = LbBackendEntry(be.address, be.port, be.protocol,
                                      local=be.node == self.node,
                                      terminating=be.state == STATE_TERMINATING)
        return out

    def plan(self, dirty: LbDirty | None = None) -> LbPlan:
        """Desired map contents. Frontends and backends are always complete (diffed by the
        reconciler); only dirty services are recomputed (all of them without ``dirty``, and
        every frontend when node addresses changed), and the Maglev part is limited to the
        dirty services' tables (``table_scope``)."""
        full = dirty is None
        wanted = set(self.view.services) if full else set(dirty.services) if dirty else set()
        if dirty is not None and dirty.nodes:
            wanted |= set(self.view.services)
        tables: dict[int, list[int]] = {}
        scope: set[int] = set()
        for sid in sorted(wanted):
            fronts, stabs = self.service_plan(sid)
            if sid in self.view.services:
                self._plans[sid] = fronts
            else:
                self._plans.pop(sid, None)
            tables.update(stabs)
            scope |= set(stabs) | self._tables_of.get(sid, set())
            self._tables_of[sid] = set(stabs)
        for sid in list(self._tables_of):
            if sid not in self.view.services:
                scope |= self._tables_of.pop(sid)
                self._plans.pop(sid, None)
        services: dict[LbFrontend, LbServiceEntry] = {}
        for sid in sorted(self._plans):
            services.update(self._plans[sid])
        self._cache.clear()
        return LbPlan(services, self.backends(), tables, None if full else scope,
                      self.desired_node_macs())
