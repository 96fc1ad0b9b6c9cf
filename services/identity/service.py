"""The identity service: Pod and Namespace events in, identities and ipcache entries out.

A pod's address comes from its node's agent (the ``endpoint.upsert`` report it publishes
while CNI ADD waits, on a subject that names the node), accepted only when the Pod is
scheduled on that node; ``status.podIP`` serves pods without a report. Pod labels that claim
what only other objects may say (namespace, namespace labels, service account, cluster, a
non-k8s source) never reach an identity; they are counted and logged.

State is rebuilt from the bus on start: the last published identity and ipcache events tell what
the bus already says, the source history tells what it should say; the service publishes only
the difference. Numbers live in the KV bucket, so restarts and replicas keep them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from services.common.bus import Bus, Delivery, Outgoing
from services.common.contract import (
    IDENTITY_INPUTS,
    IDENTITY_OUTPUTS,
    KIND_NAMESPACE,
    KIND_POD,
    KV_IDENTITIES,
    EndpointDelete,
    EndpointUpsert,
    IdentityDelete,
    IdentityEvent,
    IdentityUpsert,
    IpcacheDelete,
    IpcacheEvent,
    IpcacheUpsert,
    ObjectDelete,
    ObjectUpsert,
    Payload,
    identity_subject,
    ipcache_subject,
    parse_agent_endpoint,
    token,
)
from services.common.identities import RESERVED, reserved_labels
from services.common.kvstore import JetStreamStore
from services.common.labels import Labels
from services.common.runner import BusConsumer, collect_status, default_replica
from services.common.tracing import tracer
from services.identity.allocator import Allocator
from services.identity.derive import DroppedLabel, LabelFilter, derive_pod_labels

log = logging.getLogger(__name__)

GRACE_ENV = "CILIA_IDENTITY_GRACE"
DEFAULT_GRACE_S = 300.0        # an unused identity is kept this long before release
MAX_GC_TICK_S = 5.0            # GC looks for expired identities at least this often
ALLOC_CONCURRENCY = 64         # allocations in flight in one batch
MEMBERSHIP_REFRESH_S = 1.0     # how often a replica learns which identity replicas run
OWNER_WAIT_S = 0.5             # how long a replica waits for another's allocation
MAX_BATCH = 512                # source events folded into one reconciliation under load

ALLOCATIONS = Counter("cilia_identity_allocations_total", "Identities allocated", ["outcome"])
LABELS_DROPPED = Counter("cilia_identity_pod_labels_dropped_total",
                         "Pod labels kept out of identities: they claim what only the objects "
                         "that own them may say", ["reason"])
REPORTS = Counter("cilia_identity_endpoint_reports_total", "Agent endpoint reports consumed",
                  ["outcome"])
_tracer = tracer("cilia.identity")

PodKey = tuple[str, str]


@dataclass(frozen=True)
class PodInfo:
    obj: dict[str, Any]
    ip: str | None
    host_ip: str | None
    node: str | None


@dataclass(frozen=True)
class EndpointReport:
    """An agent's word on a pod's address (``endpoint.upsert``), by the node it came from."""

    node: str
    ip: str
    endpoint_id: int
    container_id: str


@dataclass(frozen=True)
class PublishedIp:
    """What this service last published on ``cilia.ipcache.k8s.<ip>`` for a pod's address
    (the datapath's ipcache map entry is another thing: ``IpcacheEntry``)."""

    identity: int
    host_ip: str
    pod: str


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


class IdentityService(BusConsumer):
    name = "identity"

    def __init__(self, grace_s: float | None = None,
                 label_filter: LabelFilter | None = None, replica: str | None = None) -> None:
        super().__init__()
        self.replica = replica or default_replica()
        # Replicas split allocation work by label-set digest (each allocates its share and
        # learns the others from the bus); the compare-and-set keeps it right regardless.
        self.peers: list[str] = [self.replica]
        self._learned: dict[str, asyncio.Future[int]] = {}
        self.grace_s = grace_s if grace_s is not None else float(
            os.environ.get(GRACE_ENV, DEFAULT_GRACE_S))
        self.filter = label_filter or LabelFilter.from_env()
        self.bus: Bus | None = None
        self.allocator: Allocator | None = None
        self.namespaces: dict[str, dict[str, str]] = {}
        self.pods: dict[PodKey, PodInfo] = {}
        self.pod_identity: dict[PodKey, tuple[int, Labels]] = {}
        self.pod_prefix: dict[PodKey, str] = {}
        self.usage: dict[int, set[PodKey]] = defaultdict(set)
        self.labels_of: dict[int, Labels] = {}
        self.unused_since: dict[int, float] = {}
        self.published_ids: dict[int, list[str]] = {}
        self.published_ip: dict[str, PublishedIp] = {}
        # (namespace, pod) -> node token -> the report of the agent of that node
        self.reports: dict[PodKey, dict[str, EndpointReport]] = {}
        self.dropped: dict[PodKey, tuple[DroppedLabel, ...]] = {}
        self.dropped_total = 0
        self.reports_rejected = 0
        self._dirty: set[PodKey] = set()
        self._outbox: list[Outgoing] = []
        self._gc_task: asyncio.Task[None] | None = None
        self._members_task: asyncio.Task[None] | None = None
        self.released = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, bus: Bus) -> None:
        self.bus = bus
        self.allocator = Allocator(JetStreamStore(await bus.key_value(KV_IDENTITIES)))
        now = time.monotonic()
        for num, labels in (await self.allocator.load()).items():
            self.labels_of[num] = labels
            self.unused_since[num] = now
        outputs = await bus.consume(IDENTITY_OUTPUTS, self._on_output, traced=False)
        self._subs.append(outputs)
        await outputs.caught_up.wait()
        await self._publish_reserved()
        sources = await bus.consume(IDENTITY_INPUTS, self._on_source, idle=self._settle)
        self._subs.append(sources)
        if sources.caught_up.is_set():
            self._live = True
        self._gc_task = asyncio.create_task(self._gc_loop())
        self._members_task = asyncio.create_task(self._membership_loop())

    async def stop(self) -> None:
        for task in (self._gc_task, self._members_task):
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await super().stop()

    def stats(self) -> dict[str, Any]:
        return {"identities": len(self.published_ids), "pods": len(self.pods),
                "peers": len(self.peers),
                "ipcache": len(self.published_ip), "released": self.released,
                "conflicts": self.allocator.conflicts if self.allocator else 0,
                "endpoint_reports": sum(len(r) for r in self.reports.values()),
                "endpoint_reports_rejected": self.reports_rejected,
                "labels_dropped": self.dropped_total,
                "pods_with_dropped_labels": len(self.dropped),
                **(self.bus.rejections.stats() if self.bus else {})}

    # -- inputs ----------------------------------------------------------------------------

    async def _on_output(self, d: Delivery) -> None:
        self._record(d.event.payload)

    def _record(self, payload: Payload | None) -> None:
        """Remember what the bus says (from the bus, or from our own publish)."""
        match payload:
            case IdentityUpsert(id=num, labels=labels):
                self.published_ids[num] = labels
                waiter = self._learned.get(Labels.parse(labels).digest())
                if waiter is not None and not waiter.done():
                    waiter.set_result(num)
            case IdentityDelete(id=num):
                self.published_ids.pop(num, None)
            case IpcacheUpsert():
                self.published_ip[payload.prefix] = PublishedIp(
                    payload.identity, payload.host_ip or "", payload.pod or "")
            case IpcacheDelete(prefix=prefix):
                self.published_ip.pop(prefix, None)

    async def _on_source(self, d: Delivery) -> None:
        match d.event.payload:
            case EndpointUpsert() | EndpointDelete() as report:
                self._on_report(d, report)
            case ObjectUpsert() | ObjectDelete() as obj:
                self._on_object(obj)
        # Under load (more events pending) fold events into one batch: allocations then run
        # concurrently and publishes are pipelined; when idle, each event is handled at once.
        if d.pending == 0 or (self._live and len(self._dirty) >= MAX_BATCH):
            await self._settle(d.seq)

    async def _settle(self, seq: int) -> None:
        """End of a batch (also after a bad last message): live, and the dirty pods
        reconciled. A failed reconcile keeps them dirty for the next batch."""
        self._live = True
        dirty, self._dirty = self._dirty, set()
        try:
            await self._reconcile(dirty, f"{seq}")
        except BaseException:
            self._dirty |= dirty
            raise

    def _on_report(self, d: Delivery, report: EndpointUpsert | EndpointDelete) -> None:
        """An agent's endpoint report: the subject names the node (the bus lets an agent
        publish only its own node's subjects), so the report counts for that node only."""
        node_tok = self._report_node(d.subject, report)
        if node_tok is None:
            self.reports_rejected += 1
            REPORTS.labels("rejected").inc()
            log.warning("identity: endpoint report on %s (seq %s) is invalid or does not "
                        "match its subject: node %r pod %r/%r ip %r", d.subject, d.seq,
                        report.node, report.namespace, report.pod, getattr(report, "ip", None))
            return
        key = (report.namespace, report.pod)
        if isinstance(report, EndpointUpsert):
            self.reports.setdefault(key, {})[node_tok] = EndpointReport(
                report.node, report.ip, report.endpoint_id, report.container_id)
            REPORTS.labels("upsert").inc()
        else:
            by_node = self.reports.get(key, {})
            by_node.pop(node_tok, None)
            if not by_node:
                self.reports.pop(key, None)
            REPORTS.labels("delete").inc()
        self._dirty.add(key)

    @staticmethod
    def _report_node(subject: str, report: EndpointUpsert | EndpointDelete) -> str | None:
        """The node token of a well-formed report whose payload agrees with its subject."""
        parsed = parse_agent_endpoint(subject)
        if parsed is None:
            return None
        node_tok, ns_tok, pod_tok = parsed
        if (token(report.node), token(report.namespace), token(report.pod)) != \
                (node_tok, ns_tok, pod_tok):
            return None
        if isinstance(report, EndpointUpsert) and not _is_ipv4(report.ip):
            return None
        return node_tok

    def _on_object(self, event: ObjectUpsert | ObjectDelete) -> None:
        kind, ns, name = event.kind, event.namespace, event.name
        if kind == KIND_NAMESPACE:
            labels: dict[str, str] = {} if isinstance(event, ObjectDelete) \
                else dict(event.object["metadata"].get("labels") or {})
            if self.namespaces.get(name) != labels:
                self.namespaces[name] = labels
                self._dirty.update(k for k in self.pods if k[0] == name)
        elif kind == KIND_POD:
            key = (ns, name)
            if isinstance(event, ObjectDelete):
                self.pods.pop(key, None)
                # A pod of the same name created later gets its address from a new report,
                # never from one an agent that went away left behind.
                self.reports.pop(key, None)
            else:
                obj = event.object
                status = obj.get("status") or {}
                self.pods[key] = PodInfo(obj, status.get("podIP"), status.get("hostIP"),
                                         (obj.get("spec") or {}).get("nodeName"))
            self._dirty.add(key)

    # -- reconciliation --------------------------------------------------------------------

    async def _reconcile(self, keys: set[PodKey], cause: str) -> None:
        assert self.allocator is not None
        desired: dict[PodKey, Labels] = {}
        for key in keys:
            pod = self.pods.get(key)
            if pod is not None:
                derived = derive_pod_labels(pod.obj, self.namespaces.get(key[0], {}),
                                            self.filter)
                desired[key] = derived.labels
                self._note_dropped(key, derived.dropped)
            else:
                self.dropped.pop(key, None)
        numbers = await self._allocate_all(set(desired.values()), cause)
        for key in sorted(keys):
            self._reconcile_pod(key, desired.get(key), numbers, cause)
        await self._flush()

    def _note_dropped(self, key: PodKey, dropped: tuple[DroppedLabel, ...]) -> None:
        """Count and log the labels a pod newly carries that it may not (once per label)."""
        old = set(self.dropped.get(key, ()))
        for lbl in dropped:
            if lbl not in old:
                LABELS_DROPPED.labels(lbl.reason).inc()
                self.dropped_total += 1
                log.warning("identity: pod %s/%s: label %s dropped from its identity (%s: "
                            "only its owner may say that)", key[0], key[1], lbl, lbl.reason)
        if dropped:
            self.dropped[key] = dropped
        else:
            self.dropped.pop(key, None)

    def pod_ip(self, key: PodKey) -> str | None:
        """A pod's address: its node's agent report, else ``status.podIP``.

        A report counts only when the Pod is scheduled on the node that sent it.
        """
        pod = self.pods.get(key)
        if pod is None:
            return None
        if pod.node:
            report = self.reports.get(key, {}).get(token(pod.node))
            if report is not None:
                return report.ip
        return pod.ip

    def owns(self, labels: Labels) -> bool:
        """Whether this replica allocates ``labels`` (its share of the digest space)."""
        if len(self.peers) <= 1 or self.replica not in self.peers:
            return True
        return int(labels.digest(), 16) % len(self.peers) == self.peers.index(self.replica)

    async def _allocate_all(self, label_sets: set[Labels], cause: str) -> dict[Labels, int]:
        """Numbers for ``label_sets``: this replica's share first (published at once, so that
        the other replicas learn them), then the others' share, learned from the bus or, if
        their owner does not answer in time, allocated here."""
        assert self.allocator is not None
        allocator = self.allocator
        gate = asyncio.Semaphore(ALLOC_CONCURRENCY)
        known = {tuple(v): k for k, v in self.published_ids.items()}
        out: dict[Labels, int] = {}
        todo = []
        for labels in label_sets:
            num = known.get(tuple(labels.strings()))
            if num is not None:
                out[labels] = num
            else:
                todo.append(labels)

        async def allocate(labels: Labels) -> tuple[Labels, int]:
            async with gate:
                alloc = await allocator.allocate(labels)
            ALLOCATIONS.labels("new" if alloc.new else "existing").inc()
            return labels, alloc.id

        async def learn_or_allocate(labels: Labels) -> tuple[Labels, int]:
            learned = await self._learn(labels)
            return (labels, learned) if learned is not None else await allocate(labels)

        mine = [ls for ls in todo if self.owns(ls)]
        theirs = [ls for ls in todo if not self.owns(ls)]
        waiting = {ls.digest(): self._waiter(ls) for ls in theirs}
        for labels, num in await asyncio.gather(*(allocate(ls) for ls in mine)):
            out[labels] = num
            if self.published_ids.get(num) != labels.strings():
                self._publish(identity_subject(num), IdentityEvent.UPSERT,
                              IdentityUpsert(id=num, labels=labels.strings()), cause)
        await self._flush()
        out.update(await asyncio.gather(*(learn_or_allocate(ls) for ls in theirs)))
        for digest in waiting:
            self._learned.pop(digest, None)
        return out

    def _waiter(self, labels: Labels) -> asyncio.Future[int]:
        fut = self._learned.get(labels.digest())
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._learned[labels.digest()] = fut
        return fut

    async def _learn(self, labels: Labels) -> int | None:
        """Wait for the owning replica's identity event for ``labels``."""
        digest = labels.digest()
        fut = self._waiter(labels)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), OWNER_WAIT_S)
        except TimeoutError:
            return None
        finally:
            self._learned.pop(digest, None)

    async def _membership_loop(self) -> None:
        assert self.bus is not None
        while True:
            try:
                replies = await collect_status(self.bus)
                peers = sorted(r["replica"] for r in replies if r["service"] == self.name)
                self.peers = peers if self.replica in peers else [self.replica]
            except Exception:
                log.exception("identity: membership refresh failed")
            await asyncio.sleep(MEMBERSHIP_REFRESH_S)

    def _reconcile_pod(self, key: PodKey, labels: Labels | None,
                             numbers: dict[Labels, int], cause: str) -> None:
        old = self.pod_identity.get(key)
        num = numbers[labels] if labels is not None else None
        if old is not None and old[0] != num:
            self.usage[old[0]].discard(key)
            if not self.usage[old[0]]:
                self.unused_since[old[0]] = time.monotonic()
        if labels is None or num is None:
            self.pod_identity.pop(key, None)
        else:
            self.pod_identity[key] = (num, labels)
            self.usage[num].add(key)
            self.labels_of[num] = labels
            self.unused_since.pop(num, None)
            if self.published_ids.get(num) != labels.strings():
                self._publish(identity_subject(num), IdentityEvent.UPSERT,
                              IdentityUpsert(id=num, labels=labels.strings()), cause)
        self._reconcile_ipcache(key, num, cause)

    def _reconcile_ipcache(self, key: PodKey, num: int | None, cause: str) -> None:
        pod = self.pods.get(key)
        pod_name = f"{key[0]}/{key[1]}"
        ip = self.pod_ip(key)
        prefix = f"{ip}/32" if pod is not None and ip and num is not None else None
        old_prefix = self.pod_prefix.get(key)
        if old_prefix and old_prefix != prefix:
            self.pod_prefix.pop(key, None)
            owner = self.published_ip.get(old_prefix)
            if owner is not None and owner.pod == pod_name:
                self._publish(ipcache_subject(old_prefix), IpcacheEvent.DELETE,
                              IpcacheDelete(prefix=old_prefix, identity=owner.identity), cause)
        if prefix is None or pod is None or num is None:
            return
        self.pod_prefix[key] = prefix
        want = PublishedIp(num, pod.host_ip or "", pod_name)
        if self.published_ip.get(prefix) != want:
            self._publish(ipcache_subject(prefix), IpcacheEvent.UPSERT, IpcacheUpsert(
                prefix=prefix, identity=num, host_ip=want.host_ip, pod=pod_name,
                node=pod.node or None), cause)

    def _publish(self, subject: str, event_type: str, payload: Payload, cause: str) -> None:
        """Queue one event (sent by :meth:`_flush`) and remember it as published."""
        # Deterministic per (cause, subject, type): replicas handling the same source event
        # publish the same id, and JetStream stores it once.
        self._outbox.append(Outgoing(subject, event_type, payload,
                                     f"identity/{cause}/{subject}/{event_type}"))
        self._record(payload)

    async def _flush(self) -> None:
        assert self.bus is not None
        outbox, self._outbox = self._outbox, []
        if outbox:
            await self.bus.publish_batch(outbox)

    async def _publish_reserved(self) -> None:
        for num in sorted(RESERVED):
            labels = reserved_labels(num).strings()
            if self.published_ids.get(num) != labels:
                self._publish(identity_subject(num), IdentityEvent.UPSERT,
                              IdentityUpsert(id=num, labels=labels), "reserved-v1")
        await self._flush()

    # -- garbage collection ----------------------------------------------------------------

    async def _gc_loop(self) -> None:
        tick = max(0.05, min(self.grace_s / 4, MAX_GC_TICK_S))
        while True:
            await asyncio.sleep(tick)
            if self._live:
                try:
                    await self.collect()
                except Exception:
                    log.exception("identity GC failed; retrying next tick")

    async def collect(self, now: float | None = None) -> list[int]:
        """Release identities unused for longer than the grace period; returns their numbers."""
        assert self.allocator is not None
        now = time.monotonic() if now is None else now
        expired = [n for n, since in self.unused_since.items()
                   if now - since >= self.grace_s and not self.usage.get(n)]
        for num in expired:
            labels = self.labels_of.get(num)
            self.unused_since.pop(num, None)
            if labels is None:
                continue
            with _tracer.start_as_current_span("identity release",
                                               attributes={"cilia.identity": num}):
                released = await self.allocator.release(num, labels)
                if num in self.published_ids:
                    self._publish(identity_subject(num), IdentityEvent.DELETE,
                                  IdentityDelete(id=num, labels=labels.strings()),
                                  f"gc-{labels.digest()}")
                    await self._flush()
            self.labels_of.pop(num, None)
            self.usage.pop(num, None)
            self.released += int(released)
        return expired

