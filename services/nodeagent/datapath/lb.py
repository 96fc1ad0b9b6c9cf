"""The node's load-balancing maps (``lib/lb.h``) opened together, and the one place that
orders their writes.

The agent hands them desired contents in domain terms (from
:mod:`services.nodeagent.lbstate`): frontends -> :class:`~.maps.lb_services.LbServiceEntry`,
backend ids -> :class:`~.maps.lb_backends.LbBackendEntry`, logical Maglev table ids ->
backend id per slot, node MACs -> node IPs. Encoding is pure and happens before any write; the
reconcilers apply only the difference. Tables go into the slot array through
:class:`~.maps.lb_maglev_slots.MaglevSlots`, which writes only the slots that changed, and
frontends are written with their tables' base slots.

Ordering (:meth:`LbMaps.apply`): new backends and tables before the frontends that use them,
removed tables and backends after the frontends stopped using them, so that a packet never
meets a frontend naming a slot or backend that is not there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.nodeagent.datapath.errors import EncodeError
from services.nodeagent.datapath.maps import (
    lb_affinity,
    lb_backends,
    lb_ct,
    lb_maglev_slots,
    lb_node_macs,
    lb_services,
)
from services.nodeagent.datapath.maps.conntrack import CT_LIFETIME_TCP
from services.nodeagent.datapath.maps.lb_backends import LbBackendEntry
from services.nodeagent.datapath.maps.lb_ct import LbCtEntry
from services.nodeagent.datapath.maps.lb_maglev_slots import read_slots, table_id
from services.nodeagent.datapath.maps.lb_services import PART as PART_LB
from services.nodeagent.datapath.maps.lb_services import (
    LbFrontend,
    LbServiceEntry,
    frontend_text,
)
from services.nodeagent.datapath.maps.spec import GROUP_LB
from services.nodeagent.datapath.nodemaps import BackendFactory, MapSet
from services.nodeagent.datapath.reconciler import ReconcileResult

__all__ = ["PART_LB", "LbMaps", "LbPlan"]


@dataclass
class LbPlan:
    """Desired contents of the lb maps; ``table_scope`` limits the Maglev reconcile to those
    tables (None: the whole map)."""

    services: dict[LbFrontend, LbServiceEntry] = field(default_factory=dict)
    backends: dict[int, LbBackendEntry] = field(default_factory=dict)
    tables: dict[int, list[int]] = field(default_factory=dict)
    table_scope: set[int] | None = None
    node_macs: dict[str, str] | None = None     # underlay MAC -> node IP; None: unchanged


class LbMaps(MapSet):
    """The node's lb maps, opened from their pins (created by loading either program)."""

    def __init__(self, node: str, factory: BackendFactory | None = None) -> None:
        super().__init__(node, GROUP_LB, factory)
        self.services = self.view(lb_services.SPEC)
        self.backends = self.view(lb_backends.SPEC)
        self.maglev = self.view(lb_maglev_slots.SPEC)
        self.node_macs = self.view(lb_node_macs.SPEC)
        self.ct = self.view(lb_ct.SPEC)
        self.affinity = self.view(lb_affinity.SPEC)
        for entry in self.service_entries().values():     # a restarted agent's placement
            self.maglev.adopt(table_id(entry.svc_id, False), entry.table_int, entry.size_int)
            shared = (entry.table_ext, entry.size_ext) == (entry.table_int, entry.size_int)
            self.maglev.adopt(table_id(entry.svc_id, not shared), entry.table_ext,
                              entry.size_ext)

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
                    f"frontend {frontend_text(fe)}: table {exc} is in no "
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
        bes = lb_backends.encode_backends(plan.backends, be_errors)
        macs = (None if plan.node_macs is None
                else lb_node_macs.encode_node_macs(plan.node_macs))
        backends = self.backends.reconciler
        # first pass: add and change backends, remove none (frontends may still use them).
        # Scoped to the wanted keys, so a retry after a full map re-reads the map and never
        # writes back entries someone else deleted meanwhile.
        out = {"backends": backends.reconcile(bes, keys=set(bes))}
        mag = ReconcileResult()
        for logical, slots in sorted(plan.tables.items()):
            self.maglev.put(logical, slots, mag)
        scope = self.maglev.known() if plan.table_scope is None else set(plan.table_scope)
        gone = scope - set(plan.tables)
        out["maglev"] = mag
        fe_errors: list[EncodeError] = []
        fronts = lb_services.encode_services(self._resolve(plan.services, fe_errors),
                                             fe_errors)
        services = self.services.reconciler
        out["services"] = services.skip(fe_errors, services.reconcile(fronts))
        for logical in gone:
            self.maglev.release(logical)
        mag.deleted = len(gone)
        # second pass: drop backends no longer wanted (after the frontends stopped using them)
        out["backends"] = backends.skip(be_errors, backends.reconcile(bes))
        if macs is not None:
            out["node_macs"] = self.node_macs.reconciler.reconcile(macs)
        return out

    def invalidate(self) -> None:
        """Forget what the maps hold (after a failed apply): the next apply reads them."""
        for view in self.written().values():
            view.invalidate()

    def node_mac_entries(self) -> dict[str, str]:
        """Underlay MAC -> node IP, as the kernel holds them."""
        return self.node_macs.entries()

    def service_entries(self) -> dict[LbFrontend, LbServiceEntry]:
        return self.services.entries()

    def backend_entries(self) -> dict[int, LbBackendEntry]:
        return self.backends.entries()

    def maglev_tables(self, tables: Iterable[int] | None = None) -> dict[int, list[int]]:
        """Logical table id -> backend id per slot, as the kernel holds them."""
        return self.maglev.tables(tables)

    def kernel_table(self, value: int, size: int) -> list[int]:
        """The slots a frontend's ``table_*`` field and size name (what ``bpf lb list``
        shows)."""
        if size <= 1:
            return [value] if size else []
        return read_slots(self.maglev.backend, value, size)

    def ct_entries(self) -> list[LbCtEntry]:
        return self.ct.entries()

    def affinity_entries(self) -> dict[tuple[str, int], int]:
        """(client ip, frontend id << 1 | external) -> backend id."""
        return self.affinity.entries()

    def gc(self, max_idle_s: float = CT_LIFETIME_TCP, now_ns: int | None = None) -> int:
        """Delete LB conntrack entries unused for ``max_idle_s`` (see
        :meth:`~.maps.lb_ct.LbCtMap.gc`). Returns how many."""
        return self.ct.gc(max_idle_s, now_ns)

    def purge(self, addresses: Iterable[str]) -> int:
        """Forget every LB conntrack and affinity entry that names one of ``addresses`` (an
        endpoint that went away, or a new one on a reused address): as either end of the
        key, in the translation it records, or as the address of the backend it chose.
        Returns how many entries were deleted."""
        addrs = set(addresses)
        if not addrs:
            return 0
        bids = self.backends.ids_at(addrs)
        return self.ct.purge(addrs, bids) + self.affinity.purge(addrs, bids)

    def flush_flows(self) -> None:
        """Forget LB conntrack and affinity (tests; a real agent never does this)."""
        self.ct.flush()
        self.affinity.flush()

    def __enter__(self) -> LbMaps:
        return self
