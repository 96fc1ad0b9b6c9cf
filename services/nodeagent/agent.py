"""The node agent: bus events in, eBPF maps patched, flows and realized revisions out.

One per node. It folds the bus into :class:`~services.nodeagent.state.NodeState`, and after
each batch computes what its maps should hold and lets each map's reconciler write only the
difference. Maps and programs stay pinned and attached while the agent is down; on start it
replays the bus, reads what the maps hold and patches the difference (never flushes).

Who touches what (one owner):

- The event loop alone folds: bus events into ``node_state`` and ``lb_state``, CNI hooks into
  ``local``. Nothing else reads them.
- ``_lock`` serialises the datapath: whoever holds it plans and writes the maps the agent
  writes (ipcache, endpoints, policy, lb services, backends and Maglev slots); those maps,
  their reconcilers and mirrors are touched by no one else. A plan
  (:func:`~services.nodeagent.patchplan.plan_node`, ``lb_state.plan``) is computed on the loop
  under the lock, as of one revision, and holds fresh read-only copies; the worker thread gets
  the plan and the maps, never the state. (The conntrack collectors only delete entries the
  kernel wrote, in maps nobody mirrors, on a thread of their own.)
- ``realized`` is the revision of the last plan whose every part was written: the maps hold
  exactly that state, never one folded later.

Each part of the datapath (:mod:`services.nodeagent.health`: ipcache, endpoints, policy, lb,
conntrack collectors, NodePort programs, the datapath itself) has its own error; a success
clears only its own. A failed part is retried with backoff without waiting for an event, and
rewritten whole. Every ``DRIFT_INTERVAL_S`` each map the agent writes is read back and compared
with what the agent wrote (the reconciler's mirror); what differs is put back and counted.

Where to hook in:

- ``_on_realized(plan)``: after a successful patch of revision ``plan.revision``, on the loop,
  outside the lock. The maps then hold that revision's state: each local endpoint's identity
  (``plan.endpoint_identities``, ``ID_INIT`` while it has none) and the policy of each local
  subject (``plan.policy_revisions``).
- ``on_endpoint_created`` / ``on_endpoint_deleted``: the CNI's endpoint hooks; they change
  ``local`` and wait for the patch that writes the change.
- ``_open_datapath``: programs, maps, overlay and NodePort programs come up here, at start and
  again on each retry until they do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
from opentelemetry import trace as otel
from prometheus_client import Counter, Gauge

from services.common import control
from services.common.bus import Bus, Delivery, Outgoing, Subscription
from services.common.codec import encode
from services.common.contract import (
    AGENT_INPUTS,
    AGENT_LB_INPUTS,
    FLOWS_CONTROL,
    KIND_NODE,
    AgentEvent,
    AgentRealized,
    FlowEvent,
    FqdnNames,
    ObjectEvent,
    ObjectUpsert,
    agent_fqdn_filter,
    agent_fqdn_subject,
    agent_realized_subject,
    flows_subject,
    source_subject,
)
from services.common.runner import STATE_DEGRADED, STATE_OK, STATE_STARTING
from services.common.tracing import tracer
from services.nodeagent import datapath, readiness, reports
from services.nodeagent.cniserver import CniServer
from services.nodeagent.datapath import (
    DatapathError,
    FlowRecord,
    LbMaps,
    NodeMaps,
    ReconcileResult,
    check_pins,
)
from services.nodeagent.datapath.maps import registry
from services.nodeagent.datapath.maps.conntrack import CT_F_CLOSING
from services.nodeagent.datapath.overlay import setup_overlay
from services.nodeagent.dnsservice import NodeDns, dns_proxy_enabled
from services.nodeagent.endpoints import NODE_SOURCE_ENV, Endpoint, NodeConfig
from services.nodeagent.health import (
    NODE_PARTS,
    PART_CONNTRACK,
    PART_DATAPATH,
    PART_IPCACHE,
    PART_LB,
    PART_LB_CT,
    PART_NODEPORT,
    PART_POLICY,
    DatapathHealth,
)
from services.nodeagent.lbstate import LB_MODE_ENV, NODE_MAC_ANNOTATION, LbDirty, LbNodeState
from services.nodeagent.patchplan import NodePlan, address_owners, plan_node, reassigned
from services.nodeagent.state import Dirty, LocalEndpoint, NodeState

log = logging.getLogger(__name__)

MAX_BATCH = 2048            # events folded before patching the maps under load
FLOW_BATCH_S = 0.1          # flows are published in batches this often
FLOW_RATE_LIMIT = 2000      # flows per second published at most; the rest are counted
FLOW_BUFFER = 4096          # recent flows kept for `cilia observe` without --follow
CT_GC_INTERVAL_S = 10.0     # expired conntrack entries are collected this often
DRIFT_INTERVAL_S = 60.0     # each written map is compared with the agent's mirror this often
DRIFT_INTERVAL_ENV = "CILIA_AGENT_DRIFT_INTERVAL_S"   # overrides DRIFT_INTERVAL_S (tests)
DEVICES_ENV = "CILIA_DEVICES"        # the node's external interface, like Cilium's --devices
DEFAULT_DEVICE = "eth0"              # the lab node's underlay interface
SNAPSHOT_FILE = "agent-state.msgpack"   # the durable position: folded state + its sequence
SNAPSHOT_EVERY_S = 1.0      # the position is saved at most this often
RETRY_NODE = "node maps"    # retry slots: the node maps (one plan), the lb maps, ...
RETRY_PARTS = {RETRY_NODE: NODE_PARTS, PART_LB: (PART_LB,), PART_NODEPORT: (PART_NODEPORT,),
               PART_DATAPATH: (PART_DATAPATH,)}

MAP_OPS = Counter("cilia_agent_map_ops_total", "Map entries written", ["node", "map", "op"])
DRIFT = Counter("cilia_agent_drift_repaired_total",
                "Map entries found different from what the agent wrote, and put back",
                ["node", "map"])
FLOWS_DROPPED = Counter("cilia_agent_flows_ratelimited_total", "Flows not published",
                        ["node"])
REALIZED = Gauge("cilia_agent_realized_revision", "Last realized bus sequence", ["node"])
_tracer = tracer("cilia.nodeagent")
WriteOutcome = ReconcileResult | DatapathError    # what writing one part of a plan did


def drift_interval() -> float:
    """Seconds between drift checks: ``$CILIA_AGENT_DRIFT_INTERVAL_S`` or the default.

    Raises:
        ValueError: the variable is not a positive number.
    """
    raw = os.environ.get(DRIFT_INTERVAL_ENV)
    if raw is None:
        return DRIFT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"{DRIFT_INTERVAL_ENV}={raw!r} is not a positive number of seconds")
    return value


class NodeAgent:
    name = "nodeagent"

    def __init__(self, node: NodeConfig) -> None:
        self.cfg = node
        self.node_state = NodeState(node.name)
        self.lb_state = LbNodeState(node.name, node_ips=[node.node_ip],
                                    lb_mode=os.environ.get(LB_MODE_ENV, "snat"))
        self.lb_maps: LbMaps | None = None
        self.nodeport: datapath.NodePortProgram | None = None
        self.underlay_mac = ""      # of the NodePort device: other nodes trust its DSR options
        self._lb_dirty: LbDirty | None = None      # None: everything (the first reconcile)
        self.cni = CniServer(node, hooks=self)
        # CNI ADD waits until a new endpoint is enforced (readiness.py)
        self.readiness = readiness.Readiness(
            node.name, lambda ep: readiness.missing(self.node_state, self.maps, ep))
        self.bus: Bus | None = None
        self.programs: datapath.Programs | None = None
        self.maps: NodeMaps | None = None
        self.overlay: datapath.Programs | None = None
        self.health = DatapathHealth()
        self.local: dict[str, LocalEndpoint] = {}
        self._dirty = Dirty(ipcache=True, endpoints=True, all_subjects=True)
        self._full: set[str] = set()                   # node parts to rewrite whole
        self._owners: Mapping[str, tuple[int, str]] = {}   # pod addresses the ipcache map holds
        self._policy_subjects: frozenset[int] | None = None   # None: unknown, rewrite whole
        self._realized_policy: dict[int, int] = {}
        self._lock = asyncio.Lock()
        self._live = False
        self._subs: list[Subscription] = []
        self._core_subs: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._purges: set[asyncio.Task[None]] = set()   # flows of reassigned addresses
        self._retries: dict[str, asyncio.Task[None]] = {}
        self._drift_s = drift_interval()
        self._stop_flows = threading.Event()
        self._realized_published = -1
        self._realized_seq = 0
        self._saved_at = 0.0
        self.resumed_from = 0
        self._folded = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=FLOW_BUFFER)
        self._dns_flows: list[dict[str, Any]] = []   # the DNS proxy's, for the next batch
        self.dns: NodeDns | None = None
        if dns_proxy_enabled():
            self.dns = NodeDns(node.name, node.netns, state=lambda: self.node_state,
                               maps=lambda: self.maps, endpoint_of=self._endpoint_of,
                               publish=self._publish_fqdn, emit=self._dns_flows.append,
                               live_addresses=self._live_addresses)
        self.totals: dict[str, int] = {"writes": 0, "reconciles": 0, "flows": 0,
                                       "skipped": 0}   # map entries that could not be encoded

    @property
    def realized(self) -> int:
        """The bus revision whose state the node maps hold."""
        return self._realized_seq

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, bus: Bus) -> None:
        self.bus = bus
        await self._open_datapath()
        for ep in self.cni.endpoints():
            await self._attach(ep)
        await self.cni.start()
        await self._register_node()
        await reports.resync(bus, self.cfg.name, self.cni.endpoints())
        # Load balancing folds its own inputs from the start (cheap, and independent of the
        # policy state's saved position); its maps are diffed like every other.
        self._subs.append(await bus.consume(AGENT_LB_INPUTS, self._on_lb_event,
                                            name=f"agent-lb {self.cfg.name}",
                                            idle=self._on_lb_idle))
        start = await self._resume(bus)
        self._owners = address_owners(self.node_state)
        sub = await bus.consume(AGENT_INPUTS, self._on_event, name=f"agent {self.cfg.name}",
                                start_seq=start, idle=self._on_idle)
        self._subs.append(sub)
        if sub.caught_up.is_set():
            self._live = True
            await self.reconcile()
        self._core_subs.append(await control.serve(
            bus, FLOWS_CONTROL, control.responder_role(bus, "nodeagent", self.cfg.name),
            self._flows_reply))
        self._tasks.append(asyncio.create_task(self._drift_loop()))
        if self.dns is not None:
            # what this node learned before a restart keeps expiring on time
            mine = await bus.snapshot([agent_fqdn_filter(self.cfg.name)])
            await self.dns.start(d.event.payload for d in mine.values()
                                 if isinstance(d.event.payload, FqdnNames))

    async def stop(self) -> None:
        self._stop_flows.set()
        for sub in self._subs:
            await sub.stop()
        for task in [*self._tasks, *self._retries.values(), *self._purges]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._retries.values(), *self._purges,
                             return_exceptions=True)
        for core in self._core_subs:
            with contextlib.suppress(Exception):
                await core.unsubscribe()
        await self.cni.stop()
        if self.dns is not None:
            await self.dns.stop()
        for closable in (self.nodeport, self.lb_maps):
            if closable is not None:
                closable.close()
        if self.maps is not None:
            if self._live and not self.health.degraded:
                self._saved_at = 0.0
                await self._save_position()
            self.maps.close()

    def state(self) -> str:
        if self.health.degraded:
            return STATE_DEGRADED
        return STATE_OK if self._live else STATE_STARTING

    def stats(self) -> dict[str, Any]:
        return {"node": self.cfg.name, "endpoints": len(self.local),
                "revision": self.node_state.revision,
                "realized": self._realized_seq, "resumed_from": self.resumed_from,
                "policy_revisions": {str(k): v for k, v in self._realized_policy.items()},
                **self.health.stats(), **self.totals,
                **(self.bus.rejections.stats() if self.bus else {})}

    async def _open_datapath(self) -> bool:
        """Load the programs and open the pinned maps; on failure the agent stays up, says
        why (the verifier log is in the message) and tries again later. True when up."""
        node = self.cfg.name
        programs: datapath.Programs | None = None
        maps: NodeMaps | None = None
        lb_maps: LbMaps | None = None
        try:
            # A stale pin from an incompatible build fails here, before anything compiles.
            await asyncio.to_thread(check_pins, node)
            programs = await asyncio.to_thread(datapath.Programs, node)
            maps = NodeMaps(node)
            lb_maps = LbMaps(node)   # ClusterIPs work with or without a device
            # tunnel mode: the VXLAN device's programs (identity in the VNI)
            self.overlay = await asyncio.to_thread(setup_overlay, node, self.cfg.netns,
                                                   self.cfg.routing)
        except DatapathError as exc:
            for opened in (lb_maps, maps, programs):
                if opened is not None:
                    opened.close()
            message = f"datapath unavailable: {exc}"
            log.error("%s", message)
            self._retry_later(PART_DATAPATH, self.health.failed(PART_DATAPATH, message),
                              self._retry_datapath)
            return False
        self.programs, self.maps, self.lb_maps = programs, maps, lb_maps
        self.health.succeeded([PART_DATAPATH])
        await self._attach_nodeport()
        self._tasks.append(asyncio.create_task(self._flows()))
        self._tasks.append(asyncio.create_task(self._ct_gc()))
        return True

    async def _retry_datapath(self) -> None:
        if not await self._open_datapath():
            return
        for ep in self.cni.endpoints():     # their veths got no programs at start
            await self._attach(ep)
        async with self._lock:
            self._full.update(NODE_PARTS)
            self._policy_subjects = None
            self._lb_dirty = None
        await self.reconcile_lb()
        if self._live:       # else the catch-up with the bus patches, once, at its end
            await self.reconcile()

    async def _attach_nodeport(self) -> None:
        """NodePort/LoadBalancer from outside: programs on the node's external device."""
        device = os.environ.get(DEVICES_ENV)
        if device is None and self.cfg.netns is None:
            # Never touch the root namespace's interfaces unless told which one.
            log.info("no %s and no node netns: NodePort programs not attached", DEVICES_ENV)
            return
        try:
            if self.nodeport is None:
                self.nodeport = await asyncio.to_thread(datapath.NodePortProgram, self.cfg.name)
            await asyncio.to_thread(self.nodeport.attach, device or DEFAULT_DEVICE,
                                    self.cfg.netns, self.cfg.node_ip,
                                    self.lb_state.lb_mode == "dsr")
            self.underlay_mac = await asyncio.to_thread(datapath.device_mac,
                                                        device or DEFAULT_DEVICE, self.cfg.netns)
        except DatapathError as exc:
            message = f"NodePort programs not attached: {exc}"
            log.error("%s", message)
            self._retry_later(PART_NODEPORT, self.health.failed(PART_NODEPORT, message),
                              self._attach_nodeport)
            return
        self.health.succeeded([PART_NODEPORT])

    # -- retries and drift -----------------------------------------------------------------

    def _retry_later(self, slot: str, delay: float, again: Callable[[], Awaitable[Any]]) -> None:
        """Run ``again`` in ``delay`` seconds (one pending retry per slot of RETRY_PARTS)."""
        if not self._retry_pending(slot):
            self._retries[slot] = asyncio.create_task(self._retry(slot, delay, again))

    def _retry_pending(self, slot: str) -> bool:
        task = self._retries.get(slot)
        return task is not None and not task.done()

    async def _retry(self, slot: str, delay: float, again: Callable[[], Awaitable[Any]]) -> None:
        await asyncio.sleep(delay)
        del self._retries[slot]            # a failing retry schedules the next one
        for part in self.health.failing(RETRY_PARTS[slot]):
            self.health.retrying(part)
        log.info("retrying %s", slot)
        try:
            await again()
        except Exception:
            log.exception("retry of %s failed", slot)

    async def _drift_loop(self) -> None:
        while True:
            await asyncio.sleep(self._drift_s)
            await self.check_drift()

    async def check_drift(self) -> dict[str, int]:
        """Read back every map the agent writes and put back what differs from what it wrote.

        Maps whose part is failing are left to their retry, which rewrites them whole.
        Returns the entries put back per map.
        """
        checks: list[tuple[str, str, Callable[[], int]]] = []
        for mapset in (self.maps, self.lb_maps):
            if mapset is not None:      # each written map, with the part it belongs to
                checks += [(registry.spec(name).part, name, repair)
                           for name, repair in mapset.repairers().items()]
        repaired: dict[str, int] = {}
        for part, name, repair in checks:
            async with self._lock:      # one map at a time: patches go on in between
                pending = part in self._full or (part == PART_LB and self._lb_dirty is None)
                if part in self.health.errors or pending:
                    continue
                try:
                    repaired[name] = await asyncio.to_thread(repair)
                except DatapathError as exc:
                    self._part_failed(part, f"map {name} drift check failed: {exc}")
                    continue
            if repaired[name]:
                log.warning("map %s had drifted: %d entries put back", name, repaired[name])
                DRIFT.labels(self.cfg.name, name).inc(repaired[name])
        self.health.repaired(repaired)
        return repaired

    def _part_failed(self, part: str, message: str) -> None:
        """A map part failed: rewrite it whole, after a backoff (called under the lock)."""
        log.error("%s", message)
        delay = self.health.failed(part, message)
        if part == PART_LB:
            if self.lb_maps is not None:
                self.lb_maps.invalidate()
            self._lb_dirty = None
            self._retry_later(PART_LB, delay, self.reconcile_lb)
            return
        if self.maps is not None:
            self.maps.written()[part].invalidate()   # a partial write: read it again
        self._full.add(part)
        self._retry_later(RETRY_NODE, delay, self.reconcile)

    # -- load balancing --------------------------------------------------------------------

    async def _on_lb_event(self, d: Delivery) -> None:
        dirty = self.lb_state.apply(d.event.payload)
        if self._lb_dirty is not None:
            self._lb_dirty.merge(dirty)
        if d.pending == 0:
            await self.reconcile_lb()

    async def _on_lb_idle(self, _seq: int) -> None:
        await self.reconcile_lb()

    async def reconcile_lb(self) -> bool:
        """Make the lb maps hold what the lb state says (services, backends, Maglev).

        Returns True when they do."""
        async with self._lock:
            if self.lb_maps is None:
                return False
            if PART_LB in self.health.errors and self._retry_pending(PART_LB):
                return False    # its retry rewrites the lb maps whole, after the backoff
            dirty, self._lb_dirty = self._lb_dirty, LbDirty()
            if dirty is not None and not dirty:
                return True
            plan = self.lb_state.plan(dirty)
            lb_maps = self.lb_maps
            try:
                results = await asyncio.to_thread(self._traced, PART_LB, None,
                                                  lambda: lb_maps.apply(plan))
            except DatapathError as exc:
                self._part_failed(PART_LB, f"lb map update failed: {exc}")
                return False
            self._count(results)
            self.health.succeeded([PART_LB])
            return True

    # -- durable position ------------------------------------------------------------------

    @property
    def _snapshot_path(self) -> Path:
        return Path(self.cfg.state_dir) / SNAPSHOT_FILE

    async def _resume(self, bus: Bus) -> int | None:
        """Load the saved state; returns the sequence to resume at, None to replay all."""
        try:
            data = msgpack.unpackb(self._snapshot_path.read_bytes(), strict_map_key=False)
            state = NodeState.from_snapshot(data)
        except FileNotFoundError:
            return None
        except Exception as exc:   # a corrupt or foreign snapshot: replay from the bus
            log.warning("ignoring saved agent state %s: %s", self._snapshot_path, exc)
            return None
        info = await bus.ensure_history()
        first, last = info.state.first_seq, info.state.last_seq
        if state.node != self.cfg.name or state.revision > last or state.revision + 1 < first:
            log.warning("saved agent state at %s does not fit the stream (%s..%s); replaying",
                        state.revision, first, last)
            return None
        self.node_state = state
        self.resumed_from = state.revision
        log.info("resuming at stream sequence %s", state.revision + 1)
        return state.revision + 1

    async def _save_position(self) -> None:
        """Write the folded state and its sequence, atomically (called after a patch)."""
        now = time.monotonic()
        if now - self._saved_at < SNAPSHOT_EVERY_S:
            return
        self._saved_at = now
        snapshot = self.node_state.snapshot()     # taken on the loop: the loop folds
        await asyncio.to_thread(self._write_snapshot, snapshot)

    def _write_snapshot(self, snapshot: dict[str, Any]) -> None:
        path = self._snapshot_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgpack.packb(snapshot))
        os.replace(tmp, path)

    async def _register_node(self) -> None:
        """Publish this node's Node object, as a kubelet registers its node (unless a
        Kubernetes API server holds the Node: the watcher publishes it then)."""
        assert self.bus is not None
        if os.environ.get(NODE_SOURCE_ENV) == "k8s":
            return
        meta: dict[str, Any] = {"name": self.cfg.name}
        if self.underlay_mac:
            meta["annotations"] = {NODE_MAC_ANNOTATION: self.underlay_mac}
        obj = {"apiVersion": "v1", "kind": "Node", "metadata": meta,
               "spec": {"podCIDR": self.cfg.pod_cidr},
               "status": {"addresses": [{"type": "InternalIP", "address": self.cfg.node_ip}]}}
        subject = source_subject(KIND_NODE, "", self.cfg.name)
        have = await self.bus.last_event(subject)
        if have is not None and isinstance(have.payload, ObjectUpsert) \
                and have.payload.object == obj:
            return      # registered already (an agent restart)
        await self.bus.publish(
            subject, ObjectEvent.UPSERT,
            ObjectUpsert(kind=KIND_NODE, namespace="", name=self.cfg.name, object=obj),
            msg_id=f"node/{self.cfg.name}/{uuid.uuid4()}")

    # -- endpoints (CNI hooks) -------------------------------------------------------------

    async def _attach(self, ep: Endpoint) -> None:
        if self.programs is not None:
            await asyncio.to_thread(datapath.attach, self.programs, ep.host_ifname,
                                    ep.node_netns)
        self.local[ep.ipv4] = LocalEndpoint(ep.id, ep.ipv4, ep.host_ifindex, ep.host_ifname,
                                            f"{ep.pod_namespace}/{ep.pod_name}")

    def _purge_flows(self, ips: Sequence[str]) -> dict[str, str]:
        """Forget the conntrack and LB flows of an address: a deleted endpoint's flows go with
        it, and a new endpoint on a reused address inherits none. Runs in a worker thread;
        returns the failures by part for the loop to record."""
        failed: dict[str, str] = {}
        for part, purge in ((PART_CONNTRACK, self.maps.purge_flows if self.maps else None),
                            (PART_LB_CT, self.lb_maps.purge if self.lb_maps else None)):
            if purge is not None:
                try:
                    purge(ips)
                except DatapathError as exc:
                    failed[part] = f"purging the flows of {', '.join(ips)} failed: {exc}"
        return failed

    async def _purge(self, *ips: str) -> None:
        """:meth:`_purge_flows` off the loop; a failure is its part's error until the next
        successful collection of that map."""
        for part, message in (await asyncio.to_thread(self._purge_flows, ips)).items():
            log.warning("%s", message)
            self.health.failed(part, message)

    async def on_endpoint_created(self, ep: Endpoint) -> None:
        await self._purge(ep.ipv4)
        await self._attach(ep)
        local = self.local[ep.ipv4]
        self.readiness.expect(local)
        try:
            self._dirty.endpoints = True
            self._dirty.all_subjects = True
            await self.reconcile()    # in the map at deny-all (init identity, both enforced)
            # Synchronous regeneration: report the address, answer ADD once enforced.
            if self.bus is not None:
                await reports.publish(self.bus, reports.upsert(ep))
            await self.readiness.wait(local, None if self.maps is not None
                                      else self.health.errors.get(PART_DATAPATH)
                                      or "the node's datapath is not loaded")
        except BaseException:
            self.readiness.forget(local)
            with contextlib.suppress(Exception):
                await self.on_endpoint_deleted(ep)
            raise

    async def on_endpoint_deleted(self, ep: Endpoint) -> None:
        self.local.pop(ep.ipv4, None)
        if self.programs is not None:
            await asyncio.to_thread(datapath.detach, ep.host_ifname, ep.node_netns)
        await self._purge(ep.ipv4)
        self._dirty.endpoints = True
        self._dirty.all_subjects = True
        await self.reconcile()
        if self.bus is not None:
            await reports.publish(self.bus, reports.delete(ep.node, ep.pod_namespace,
                                                           ep.pod_name))

    # -- bus -------------------------------------------------------------------------------

    async def _on_event(self, d: Delivery) -> None:
        self._dirty.merge(self.node_state.apply(d.subject, d.event.payload, d.seq))
        self._folded += 1
        # Patch when idle (nothing pending), or every MAX_BATCH events under load once live;
        # never while replaying history at start, which would write intermediate states.
        # The patch runs inside this event's consume span, so its trace reaches the maps.
        if d.pending == 0 or (self._live and self._folded >= MAX_BATCH):
            self._folded = 0
            self._live = self._live or d.pending == 0
            await self.reconcile()

    async def _on_idle(self, seq: int) -> None:
        """A skipped (bad) last message: the node has still seen everything up to ``seq``;
        end the batch as :meth:`_on_event` would."""
        self.node_state.revision = max(self.node_state.revision, seq)
        self._folded = 0
        self._live = True
        await self.reconcile()

    async def reconcile(self) -> bool:
        """Make the node maps hold what the state says, writing only the difference.

        Returns True when they hold the folded state (``realized`` is its revision); False
        when a part failed (it is retried) or the datapath is unavailable.
        """
        async with self._lock:
            if self.maps is None:
                return False        # nothing written, nothing realized: the datapath says why
            dirty, self._dirty = self._dirty, Dirty()
            # A failing part waits for its retry (backoff), not for the next event.
            waiting = self.health.failing(NODE_PARTS) if self._retry_pending(RETRY_NODE) \
                else set()
            plan = plan_node(self.node_state, dirty, self.local.values(),
                             self._policy_subjects, self._full, skip=waiting)
            if plan:
                maps = self.maps
                outcome = await asyncio.to_thread(self._write_node, maps, plan)
                for part, result in outcome.items():
                    if isinstance(result, DatapathError):
                        self._part_failed(part, f"map update failed: {result}")
                        continue
                    self._count({part: result})
                    self.health.succeeded([part])
                    self._full.discard(part)
                    if part == PART_POLICY:
                        self._policy_subjects = plan.local_subjects
                    if part == PART_IPCACHE and plan.owners is not None:
                        gone = reassigned(self._owners, plan.owners)
                        self._owners = plan.owners
                        if gone:    # off the patch path: it reads the whole flow maps
                            task = asyncio.create_task(self._purge(*gone))
                            self._purges.add(task)
                            task.add_done_callback(self._purges.discard)
            self.readiness.patched()    # settle CNI ADDs waiting for their endpoint
            if self.health.failing(NODE_PARTS):
                return False
            self._realized_seq = plan.revision
            self._realized_policy = dict(plan.policy_revisions)
            await self._save_position()
        await self._publish_realized()
        self._on_realized(plan)
        return True

    def _on_realized(self, plan: NodePlan) -> None:
        """After a successful patch: the node maps hold revision ``plan.revision``."""
        REALIZED.labels(self.cfg.name).set(plan.revision)
        if self.dns is not None:
            self.dns.patched()      # answers held until the maps allow their addresses

    def _write_node(self, maps: NodeMaps, plan: NodePlan) -> dict[str, WriteOutcome]:
        """Write each part of ``plan`` (worker thread: it sees only the plan and the maps).
        A part's failure is returned, not raised: the other parts are written all the same."""
        out: dict[str, WriteOutcome] = {}
        for part, patch in plan.patches().items():
            view = maps.writer(part)

            def write(view: Any = view, patch: Any = patch, part: str = part,
                      ) -> dict[str, ReconcileResult]:
                return {part: view.reconcile(patch.desired, patch.scope)}

            try:
                out[part] = self._traced(part, plan.revision, write)[part]
            except DatapathError as exc:
                out[part] = exc
        return out

    def _traced(self, name: str, revision: int | None,
                patch: Callable[[], dict[str, ReconcileResult]]) -> dict[str, ReconcileResult]:
        """Run ``patch`` (-> map name: result) in a ``map patch <name>`` span with what it
        wrote (worker thread: counting happens on the loop, in :meth:`_count`)."""
        with _tracer.start_as_current_span(f"map patch {name}") as span:
            results = patch()
            attrs: dict[str, Any] = {
                "cilia.node": self.cfg.name, "cilia.map": name,
                "cilia.added": sum(r.added for r in results.values()),
                "cilia.updated": sum(r.updated for r in results.values()),
                "cilia.deleted": sum(r.deleted for r in results.values())}
            if revision is not None:
                attrs["cilia.revision"] = revision
            span.set_attributes(attrs)
        return results

    def _count(self, results: dict[str, ReconcileResult]) -> None:
        for map_name, r in results.items():
            for op, n in (("add", r.added), ("update", r.updated), ("delete", r.deleted)):
                if n:
                    MAP_OPS.labels(self.cfg.name, map_name, op).inc(n)
            self.totals["writes"] += r.writes
            self.totals["skipped"] += r.skipped
        self.totals["reconciles"] += 1

    async def _publish_realized(self) -> None:
        if self.bus is None or not self._live:
            return
        rev = self._realized_seq
        if rev == self._realized_published:
            return
        self._realized_published = rev
        data = AgentRealized(node=self.cfg.name, revision=rev, identities={
            str(k): v for k, v in self._realized_policy.items()})
        subject = agent_realized_subject(self.cfg.name)
        await self.bus.publish_batch([Outgoing(subject, AgentEvent.REALIZED, data,
                                               f"agent/{self.cfg.name}/{rev}")])
        otel.get_current_span().set_attribute("cilia.realized_revision", rev)

    # -- flows and conntrack ---------------------------------------------------------------

    async def _flows(self) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[FlowRecord] = asyncio.Queue()
        node = self.cfg.name

        def push(rec: FlowRecord) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, rec)

        def reader() -> None:
            with datapath.FlowReader(node) as fr:
                fr.run(push, self._stop_flows)

        thread = asyncio.create_task(asyncio.to_thread(reader))
        offset = time.time() - time.monotonic()   # flow times are CLOCK_MONOTONIC
        try:
            while True:
                await asyncio.sleep(FLOW_BATCH_S)
                batch: list[dict[str, Any]] = []
                limit = int(FLOW_RATE_LIMIT * FLOW_BATCH_S)
                while not queue.empty():
                    rec = queue.get_nowait()
                    if len(batch) >= limit:
                        FLOWS_DROPPED.labels(node).inc()
                        continue
                    batch.append(self._flow(rec, offset))
                batch += self._dns_flows[:max(0, limit - len(batch))]
                self._dns_flows.clear()
                self.recent.extend(batch)
                if batch and self.bus is not None:
                    self.totals["flows"] += len(batch)
                    await self.bus.publish_core(flows_subject(node), FlowEvent.FLOW,
                                                {"node": node, "flows": batch})
        finally:
            self._stop_flows.set()
            with contextlib.suppress(Exception):
                await thread

    def _flow(self, rec: FlowRecord, offset: float) -> dict[str, Any]:
        flow = rec.as_dict()
        flow["time"] = rec.time_ns / 1e9 + offset
        for side in ("src", "dst"):
            entry = self.node_state.ipcache.get(f"{flow[side + '_ip']}/32")
            flow[f"{side}_pod"] = entry.pod if entry is not None and entry.pod else ""
        return flow

    # -- DNS proxy -------------------------------------------------------------------------

    def _endpoint_of(self, ip: str) -> LocalEndpoint | None:
        return next((ep for ep in self.local.values() if ep.ip == ip), None)

    async def _publish_fqdn(self, payload: FqdnNames) -> None:
        if self.bus is not None:
            await self.bus.publish(agent_fqdn_subject(self.cfg.name, payload.name),
                                   AgentEvent.FQDN_NAMES, payload, msg_id=uuid.uuid4().hex)

    async def _live_addresses(self) -> set[str]:
        """Addresses a local endpoint has a live connection with (a conntrack entry neither
        expired nor closing)."""
        maps = self.maps
        if maps is None:
            return set()
        entries = await asyncio.to_thread(maps.conntrack.entries)
        now = time.monotonic_ns()
        return {e.dst for e in entries if e.expires_ns > now and not e.flags & CT_F_CLOSING}

    def _flows_reply(self) -> bytes:
        """Answer `cilia observe` (without --follow) with the recent flows of this node."""
        return encode(FlowEvent.FLOW, {"node": self.cfg.name, "flows": list(self.recent)})

    async def _ct_gc(self) -> None:
        while True:
            await asyncio.sleep(CT_GC_INTERVAL_S)
            for part, gc in ((PART_CONNTRACK, self.maps.conntrack.gc if self.maps else None),
                             (PART_LB_CT, self.lb_maps.gc if self.lb_maps else None)):
                if gc is None:
                    continue
                try:
                    await asyncio.to_thread(gc)
                except DatapathError as exc:
                    # The collector's own period is its retry.
                    self.health.failed(part, f"conntrack GC failed: {exc}")
                    log.warning("%s conntrack GC failed: %s", part, exc)
                else:
                    self.health.succeeded([part])
