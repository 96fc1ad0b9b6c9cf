"""The node agent: bus events in, eBPF maps patched, flows and realized revisions out.

One per node. It folds the bus into :class:`~services.nodeagent.state.NodeState`, and after
each batch computes what its maps should hold and lets each map's reconciler write only the
difference. Maps and programs stay pinned and attached while the agent is down; on start it
replays the bus, reads what the maps hold and patches the difference (never flushes).
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
from pathlib import Path
from typing import Any

import msgpack
from opentelemetry import trace as otel
from prometheus_client import Counter, Gauge

from services.common import subjects
from services.common.bus import Bus, Delivery, Outgoing, Subscription
from services.common.codec import encode
from services.common.identities import ID_INIT
from services.common.runner import STATE_DEGRADED, STATE_OK, STATE_STARTING
from services.common.tracing import tracer
from services.nodeagent.cniserver import CniServer
from services.nodeagent.datapath import (
    DatapathError,
    FlowReader,
    FlowRecord,
    NodeMaps,
    Programs,
    ReconcileResult,
    attach,
    detach,
)
from services.nodeagent.datapath.lbmaps import LbMaps
from services.nodeagent.datapath.lbnodeport import NodePortProgram
from services.nodeagent.datapath.overlay import setup_overlay
from services.nodeagent.endpoints import Endpoint, NodeConfig
from services.nodeagent.lbstate import LbDirty, LbNodeState
from services.nodeagent.state import Dirty, LocalEndpoint, NodeState

log = logging.getLogger(__name__)

INPUTS = ["cilia.identity.>", "cilia.ipcache.>", "cilia.policy.rules.>",
          "cilia.policy.selector.>", subjects.source_filter("Pod"),
          subjects.source_filter("Node")]
MAX_BATCH = 2048            # events folded before patching the maps under load
FLOW_BATCH_S = 0.1          # flows are published in batches this often
FLOW_RATE_LIMIT = 2000      # flows per second published at most; the rest are counted
FLOW_BUFFER = 4096          # recent flows kept for `cilia observe` without --follow
CT_GC_INTERVAL_S = 10.0     # expired conntrack entries are collected this often
LB_INPUTS = ["cilia.lb.>", subjects.source_filter("Node")]
LB_MODE_ENV = "CILIA_LB_MODE"        # snat (default) or dsr, like Cilium's loadBalancer.mode
DEVICES_ENV = "CILIA_DEVICES"        # the node's external interface, like Cilium's --devices
DEFAULT_DEVICE = "eth0"              # the lab node's underlay interface
SNAPSHOT_FILE = "agent-state.msgpack"   # the durable position: folded state + its sequence
SNAPSHOT_EVERY_S = 1.0      # the position is saved at most this often

MAP_OPS = Counter("cilia_agent_map_ops_total", "Map entries written", ["node", "map", "op"])
FLOWS_DROPPED = Counter("cilia_agent_flows_ratelimited_total", "Flows not published",
                        ["node"])
REALIZED = Gauge("cilia_agent_realized_revision", "Last realized bus sequence", ["node"])
_tracer = tracer("cilia.nodeagent")


class NodeAgent:
    name = "nodeagent"

    def __init__(self, node: NodeConfig) -> None:
        self.cfg = node
        self.node_state = NodeState(node.name)
        self.lb_state = LbNodeState(node.name, node_ips=[node.node_ip],
                                    lb_mode=os.environ.get(LB_MODE_ENV, "snat"))
        self.lb_maps: LbMaps | None = None
        self.nodeport: NodePortProgram | None = None
        self._lb_dirty: LbDirty | None = None      # None: everything (the first reconcile)
        self.cni = CniServer(node, hooks=self)
        self.bus: Bus | None = None
        self.programs: Programs | None = None
        self.maps: NodeMaps | None = None
        self.error: str | None = None
        self.local: dict[str, LocalEndpoint] = {}
        self._dirty = Dirty(ipcache=True, endpoints=True, all_subjects=True)
        self._policy_subjects: set[int] = set()
        self._lock = asyncio.Lock()
        self._live = False
        self._subs: list[Subscription] = []
        self._core_subs: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_flows = threading.Event()
        self._realized_published = -1
        self._realized_seq = 0
        self._saved_at = 0.0
        self.resumed_from = 0
        self._folded = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=FLOW_BUFFER)
        self.totals: dict[str, int] = {"writes": 0, "reconciles": 0, "flows": 0,
                                       "skipped": 0}   # map entries that could not be encoded

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, bus: Bus) -> None:
        self.bus = bus
        try:
            self.programs = await asyncio.to_thread(Programs, self.cfg.name)
            self.maps = NodeMaps(self.cfg.name)
            self.lb_maps = LbMaps(self.cfg.name)   # ClusterIPs work with or without a device
            # tunnel mode: the VXLAN device's programs (identity in the VNI)
            self.overlay = await asyncio.to_thread(setup_overlay, self.cfg.name,
                                                   self.cfg.netns, self.cfg.routing)
            await self._attach_nodeport()
        except DatapathError as exc:
            # Stay up and say why: the verifier log is in the message.
            self.error = f"datapath unavailable: {exc}"
            log.error("%s", self.error)
        for ep in self.cni.endpoints():
            await self._attach(ep)
        await self.cni.start()
        await self._register_node()
        # Load balancing folds its own inputs from the start (cheap, and independent of the
        # policy state's saved position); its maps are diffed like every other.
        self._subs.append(await bus.consume(LB_INPUTS, self._on_lb_event,
                                            name=f"agent-lb {self.cfg.name}",
                                            idle=self._on_lb_idle))
        start = await self._resume(bus)
        sub = await bus.consume(INPUTS, self._on_event, name=f"agent {self.cfg.name}",
                                start_seq=start, idle=self._on_idle)
        self._subs.append(sub)
        if sub.caught_up.is_set():
            self._live = True
            await self.reconcile()
        self._core_subs.append(await bus.nc.subscribe(subjects.FLOWS_REQUEST,
                                                      cb=self._on_flows_req))
        if self.maps is not None:
            self._tasks.append(asyncio.create_task(self._flows()))
            self._tasks.append(asyncio.create_task(self._ct_gc()))

    async def stop(self) -> None:
        self._stop_flows.set()
        for sub in self._subs:
            await sub.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for core in self._core_subs:
            with contextlib.suppress(Exception):
                await core.unsubscribe()
        await self.cni.stop()
        for closable in (self.nodeport, self.lb_maps):
            if closable is not None:
                closable.close()
        if self.maps is not None:
            if self._live and not self.error:
                self._saved_at = 0.0
                await asyncio.to_thread(self._save_position)
            self.maps.close()

    def state(self) -> str:
        if self.error:
            return STATE_DEGRADED
        return STATE_OK if self._live else STATE_STARTING

    def stats(self) -> dict[str, Any]:
        return {"node": self.cfg.name, "endpoints": len(self.local),
                "revision": self.node_state.revision,
                "realized": self._realized_seq, "resumed_from": self.resumed_from,
                "policy_revisions": {str(k): v for k, v in
                                     self.node_state.realized(self._policy_subjects).items()},
                "error": self.error or "", **self.totals,
                **(self.bus.rejections.stats() if self.bus else {})}

    async def _attach_nodeport(self) -> None:
        """NodePort/LoadBalancer from outside: programs on the node's external device."""
        device = os.environ.get(DEVICES_ENV)
        if device is None and self.cfg.netns is None:
            # Never touch the root namespace's interfaces unless told which one.
            log.info("no %s and no node netns: NodePort programs not attached", DEVICES_ENV)
            return
        self.nodeport = await asyncio.to_thread(NodePortProgram, self.cfg.name)
        await asyncio.to_thread(self.nodeport.attach, device or DEFAULT_DEVICE, self.cfg.netns,
                                self.cfg.node_ip)

    async def _on_lb_event(self, d: Delivery) -> None:
        dirty = self.lb_state.apply(d.subject, d.event.type, d.event.data)
        if self._lb_dirty is not None:
            self._lb_dirty.merge(dirty)
        if d.pending == 0:
            await self.reconcile_lb()

    async def _on_lb_idle(self, _seq: int) -> None:
        await self.reconcile_lb()

    async def reconcile_lb(self) -> None:
        """Make the lb maps hold what the lb state says (services, backends, Maglev)."""
        async with self._lock:
            dirty, self._lb_dirty = self._lb_dirty, LbDirty()
            if self.lb_maps is None or (dirty is not None and not dirty):
                return
            plan = self.lb_state.plan(dirty)
            lb_maps = self.lb_maps
            try:
                await asyncio.to_thread(self._patch_span, "lb", lambda: lb_maps.apply(plan))
            except DatapathError as exc:
                self.error = f"lb map update failed: {exc}"
                log.error("%s", self.error)
                self._lb_dirty = None       # full retry on the next change

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

    def _save_position(self) -> None:
        """Write the folded state and its sequence, atomically (called after a patch)."""
        now = time.monotonic()
        if now - self._saved_at < SNAPSHOT_EVERY_S:
            return
        self._saved_at = now
        path = self._snapshot_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgpack.packb(self.node_state.snapshot()))
        os.replace(tmp, path)

    async def _register_node(self) -> None:
        """Publish this node's Node object, as a kubelet registers its node."""
        assert self.bus is not None
        obj = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.cfg.name},
               "spec": {"podCIDR": self.cfg.pod_cidr},
               "status": {"addresses": [{"type": "InternalIP", "address": self.cfg.node_ip}]}}
        subject = subjects.source("Node", "", self.cfg.name)
        have = await self.bus.last_event(subject)
        if have is not None and have.type == "object.upsert" and have.data["object"] == obj:
            return      # registered already (an agent restart)
        await self.bus.publish(
            subject, "object.upsert",
            {"kind": "Node", "namespace": "", "name": self.cfg.name, "object": obj},
            msg_id=f"node/{self.cfg.name}/{uuid.uuid4()}")

    # -- endpoints (CNI hooks) -------------------------------------------------------------

    async def _attach(self, ep: Endpoint) -> None:
        if self.programs is not None:
            await asyncio.to_thread(attach, self.programs, ep.host_ifname, ep.node_netns)
        self.local[ep.ipv4] = LocalEndpoint(ep.id, ep.ipv4, ep.host_ifindex, ep.host_ifname,
                                            f"{ep.pod_namespace}/{ep.pod_name}")

    async def on_endpoint_created(self, ep: Endpoint) -> None:
        await self._attach(ep)
        self._dirty.endpoints = True
        self._dirty.all_subjects = True
        await self.reconcile()

    async def on_endpoint_deleted(self, ep: Endpoint) -> None:
        self.local.pop(ep.ipv4, None)
        if self.programs is not None:
            await asyncio.to_thread(detach, ep.host_ifname, ep.node_netns)
        self._dirty.endpoints = True
        self._dirty.all_subjects = True
        await self.reconcile()

    # -- bus -------------------------------------------------------------------------------

    async def _on_event(self, d: Delivery) -> None:
        self._dirty.merge(self.node_state.apply(d.subject, d.event.type, d.event.data, d.seq))
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

    async def reconcile(self) -> None:
        """Make the maps hold what the state says, writing only the difference."""
        async with self._lock:
            dirty, self._dirty = self._dirty, Dirty()
            if self.maps is None or not dirty:
                # Nothing for this node: it has realized this revision all the same.
                self._realized_seq = self.node_state.revision
                return
            try:
                await asyncio.to_thread(self._patch, dirty)
            except DatapathError as exc:
                self.error = f"map update failed: {exc}"
                log.error("%s", self.error)
                self._dirty.merge(dirty)    # retried on the next change
                return
            self.error = None
            self._realized_seq = self.node_state.revision
            await asyncio.to_thread(self._save_position)
        await self._publish_realized()

    def _patch(self, dirty: Dirty) -> None:
        assert self.maps is not None
        maps = self.maps
        eps = list(self.local.values())
        local_ids = self.node_state.local_identities(eps) - {ID_INIT}
        if dirty.ipcache:
            self._span("ipcache", lambda: maps.ipcache.reconcile(self.node_state.desired_ipcache()))
        if dirty.endpoints:
            self._span("endpoints",
                       lambda: maps.endpoints.reconcile(self.node_state.desired_endpoints(eps)))
        gone = self._policy_subjects - local_ids
        touched = local_ids if dirty.all_subjects else dirty.subjects & local_ids
        if touched or gone:
            subjects_now = touched | gone
            desired = self.node_state.desired_policy(touched)
            self._span("policy", lambda: maps.policy.reconcile(desired,
                                                                subjects=sorted(subjects_now)))
        self._policy_subjects = local_ids

    def _span(self, name: str, patch: Any) -> ReconcileResult:
        """One map patched inside a ``map patch <name>`` span."""
        return self._patch_span(name, lambda: {name: patch()})[name]

    def _patch_span(self, name: str, patch: Any) -> dict[str, ReconcileResult]:
        """Run ``patch`` (-> map name: result) in a span with what it wrote; count it."""
        with _tracer.start_as_current_span(f"map patch {name}") as span:
            results: dict[str, ReconcileResult] = patch()
            span.set_attributes({
                "cilia.node": self.cfg.name, "cilia.map": name,
                "cilia.revision": self.node_state.revision,
                "cilia.added": sum(r.added for r in results.values()),
                "cilia.updated": sum(r.updated for r in results.values()),
                "cilia.deleted": sum(r.deleted for r in results.values())})
        for map_name, r in results.items():
            for op, n in (("add", r.added), ("update", r.updated), ("delete", r.deleted)):
                if n:
                    MAP_OPS.labels(self.cfg.name, map_name, op).inc(n)
            self.totals["writes"] += r.writes
            self.totals["skipped"] += r.skipped
        self.totals["reconciles"] += 1
        return results

    async def _publish_realized(self) -> None:
        if self.bus is None or not self._live:
            return
        rev = self.node_state.revision
        if rev == self._realized_published:
            return
        self._realized_published = rev
        REALIZED.labels(self.cfg.name).set(rev)
        data = {"node": self.cfg.name, "revision": rev,
                "identities": {str(k): v for k, v in
                               self.node_state.realized(self._policy_subjects).items()}}
        subject = subjects.agent_realized(self.cfg.name)
        await self.bus.publish_batch([Outgoing(subject, "agent.realized", data,
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
            with FlowReader(node) as fr:
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
                self.recent.extend(batch)
                if batch and self.bus is not None:
                    self.totals["flows"] += len(batch)
                    await self.bus.publish_core(subjects.flows(node), "flow",
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

    async def _on_flows_req(self, msg: Any) -> None:
        """Answer `cilia observe` (without --follow) with the recent flows of this node."""
        assert self.bus is not None
        if msg.reply:
            await self.bus.nc.publish(msg.reply, encode("flow", {
                "node": self.cfg.name, "flows": list(self.recent)}))

    async def _ct_gc(self) -> None:
        while True:
            await asyncio.sleep(CT_GC_INTERVAL_S)
            for gc in (self.maps.conntrack.gc if self.maps else None,
                       self.lb_maps.gc if self.lb_maps else None):
                if gc is None:
                    continue
                try:
                    await asyncio.to_thread(gc)
                except DatapathError as exc:
                    log.warning("conntrack GC failed: %s", exc)
