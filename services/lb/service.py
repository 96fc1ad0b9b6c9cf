"""The lb service: Service, EndpointSlice and Pod objects in; frontends, backends and
membership deltas out.

State is rebuilt from the bus on start: the service folds its own earlier output (an
:class:`LbView`), replays the source history, and publishes only the difference. Once live,
each source event re-resolves only the Services it can affect, and publishes only what changed
for them: a new backend is one ``lb.backend`` event and one ``lb.backends`` delta on the
service's members subject. Numbers (service ids, backend ids, ClusterIPs, NodePorts) live in the
``cilia-lb-ids`` KV bucket, so restarts and replicas keep them.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
from collections import defaultdict
from typing import Any

import msgspec
from prometheus_client import Counter

from services.common.bus import Bus, Delivery, Outgoing
from services.common.contract import (
    EVENTS,
    KV_SERVICES,
    LB_INPUTS,
    LB_OUTPUTS,
    OP_DELTA,
    LbBackend,
    LbBackendDelete,
    LbMembers,
    LbServiceDelete,
    LbServiceEvent,
    LbStatus,
    ObjectDelete,
    ObjectUpsert,
    Payload,
    ServicePortRecord,
    ServiceRecord,
)
from services.common.kvstore import JetStreamStore
from services.common.runner import BusConsumer
from services.lb.errors import AllocationError, LbError
from services.lb.events import LbView, Member, service_frontends
from services.lb.ids import BACKENDS, NODEPORTS, SERVICES, LbIds, cluster_ip_pool
from services.lb.model import (
    SERVICE_NAME_LABEL,
    EndpointSlice,
    ServiceSpec,
    parse_endpointslice,
    parse_service,
)
from services.lb.resolve import Backend, resolve_backends, selects

log = logging.getLogger(__name__)

MAX_BATCH = 256                 # source events folded into one reconciliation under load

ERRORS = Counter("cilia_lb_errors_total", "Services rejected (invalid or conflicting)")

Ref = str   # "ns/name"
_EVENT_TYPES = {payload: event_type for event_type, payload in EVENTS.items()}   # one each
_ENCODER = msgspec.msgpack.Encoder()


def _digest(payload: Payload) -> str:
    return hashlib.sha1(_ENCODER.encode(payload)).hexdigest()[:12]


class LbService(BusConsumer):
    """The ``lb`` control-plane service."""

    name = "lb"

    def __init__(self) -> None:
        super().__init__()
        self.bus: Bus | None = None
        self.ids: LbIds | None = None
        self.view = LbView()
        self.services: dict[Ref, dict[str, Any]] = {}
        self.specs: dict[Ref, ServiceSpec] = {}           # parsed; absent when invalid
        self.by_ns: dict[str, set[Ref]] = {}
        self.pods: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.slices: dict[Ref, EndpointSlice] = {}
        self.bad_slices: set[Ref] = set()
        self.node_port_owners: dict[Ref, set[str]] = {}
        self._dirty: set[Ref] = set()
        self._outbox: list[Outgoing] = []
        self.published = 0
        self.errors = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, bus: Bus) -> None:
        self.bus = bus
        self.ids = LbIds(JetStreamStore(await bus.key_value(KV_SERVICES)))
        outputs = await bus.consume(LB_OUTPUTS, self._on_output, traced=False)
        self._subs.append(outputs)
        await outputs.caught_up.wait()
        sources = await bus.consume(LB_INPUTS, self._on_source, idle=self._settle)
        self._subs.append(sources)
        if sources.caught_up.is_set():
            await self._go_live("start")

    def stats(self) -> dict[str, Any]:
        return {"services": len(self.view.services), "backends": len(self.view.backends),
                "published": self.published, "errors": self.errors,
                "conflicts": self.ids.conflicts if self.ids else 0,
                **(self.bus.rejections.stats() if self.bus else {})}

    # -- inputs ----------------------------------------------------------------------------

    async def _on_output(self, d: Delivery) -> None:
        self.view.apply(d.event.payload)

    async def _on_source(self, d: Delivery) -> None:
        p = d.event.payload
        assert isinstance(p, ObjectUpsert | ObjectDelete)     # the source objects' subjects
        kind, ns, name = p.kind, p.namespace, p.name
        obj = p.object if isinstance(p, ObjectUpsert) else None     # None: deleted
        ref = f"{ns}/{name}"
        if kind == "Service":
            self.specs.pop(ref, None)
            if obj is None:
                self.services.pop(ref, None)
                self.by_ns.get(ns, set()).discard(ref)
            else:
                self.services[ref] = obj
                self.by_ns.setdefault(ns, set()).add(ref)
                with contextlib.suppress(LbError):
                    self.specs[ref] = parse_service(obj)
            self._dirty.add(ref)
        elif kind == "Pod":
            old_pod = self.pods[ns].pop(name, None)
            if obj is not None:
                self.pods[ns][name] = obj
            self._dirty.update(self._selecting(ns, [old_pod, obj]))
        elif kind == "EndpointSlice":
            old = self.slices.pop(ref, None)
            if old is not None:
                self._dirty.add(f"{ns}/{old.service}")
            self.bad_slices.discard(ref)
            if obj is not None:
                try:
                    sl = parse_endpointslice(obj)
                except LbError as exc:
                    log.warning("lb: ignoring %s", exc)
                    self.bad_slices.add(ref)
                else:
                    self.slices[ref] = sl
                    self._dirty.add(f"{ns}/{sl.service}")
        if d.pending == 0 or (self._live and len(self._dirty) >= MAX_BATCH):
            await self._settle(d.seq)

    async def _settle(self, seq: int) -> None:
        """End of a batch (also after a bad last message): live, and the dirty Services
        reconciled. A failed reconcile keeps them dirty for the next batch."""
        if not self._live:
            await self._go_live(str(seq))
            return
        dirty, self._dirty = self._dirty, set()
        try:
            await self.reconcile(dirty, str(seq))
        except BaseException:
            self._dirty |= dirty
            raise

    def _selecting(self, ns: str, pods: list[dict[str, Any] | None]) -> set[Ref]:
        """Services of ``ns`` whose selector matches any of ``pods`` (or that cannot be
        parsed, so that their error is reported again)."""
        labels = [(p.get("metadata") or {}).get("labels") or {} for p in pods if p]
        out = set()
        for ref in self.by_ns.get(ns, ()):
            spec = self.specs.get(ref)
            if spec is None or (spec.selector is not None
                                and any(selects(spec.selector, lb) for lb in labels)):
                out.add(ref)
        return out

    async def _go_live(self, cause: str) -> None:
        """First reconciliation: every known Service, and every published one that is gone."""
        self._live = True
        self._dirty = set()
        await self.reconcile(set(self.services) | set(self.view.ids) | set(self.view.status),
                             f"resync-{cause}")

    # -- reconciliation --------------------------------------------------------------------

    async def reconcile(self, refs: set[Ref], cause: str) -> None:
        """Bring the bus in line with the sources for ``refs``; publish the difference.

        When a Service goes away, Services rejected for a conflict are tried again (what
        they asked for may be free now)."""
        if any(ref not in self.services for ref in refs):
            refs = set(refs) | {r for r, st in self.view.status.items()
                                if st.op == "error" and r in self.services}
        for ref in sorted(refs, key=lambda r: (r in self.services, r)):
            obj = self.services.get(ref)
            try:
                if obj is None:
                    await self._remove(ref, cause)
                else:
                    await self._upsert(ref, obj, cause)
            except Exception as exc:    # one Service's error never holds back the others
                self.errors += 1
                ERRORS.inc()
                ns, _, name = ref.partition("/")
                if isinstance(exc, LbError):
                    log.warning("lb: %s", exc)
                else:
                    log.exception("lb: Service %s", ref)
                # an error status needs words: an exception without any is named by its type
                status = LbStatus(namespace=ns, name=name, op="error",
                                  error=str(exc) or type(exc).__name__)
                if self.view.status.get(ref) != status:
                    self._publish(status, cause)
        self._collect_backends(cause)
        await self._flush()

    async def _upsert(self, ref: Ref, obj: dict[str, Any], cause: str) -> None:
        assert self.ids is not None
        spec = parse_service(obj)
        sid = await self.ids.allocate(SERVICES, ref)
        svc = await self._frontends(spec)
        self._check_frontends(ref, sid, svc)
        ns, name = spec.namespace, spec.name
        slices = [s for s in self.slices.values() if s.namespace == ns and s.service == name]
        backends = resolve_backends(spec, self.pods.get(ns, {}), slices)
        desired: set[Member] = set()
        for port_name, items in backends.items():
            for be in items:
                bid = await self.ids.allocate(BACKENDS, be.addr.key())
                desired.add((port_name, bid))
                self._publish_backend(bid, be, cause)
        old_id = self.view.ids.get(ref)
        if old_id is not None and old_id != sid:
            self._publish(LbServiceDelete(id=old_id, namespace=ns, name=name), cause)
        if self.view.services.get(sid) != svc:
            self._publish(LbServiceEvent(id=sid, service=svc), cause)
        current = self.view.members.get(sid, set())
        added, removed = desired - current, current - desired
        if added or removed:
            self._publish(LbMembers(service=sid, added=sorted(added), removed=sorted(removed),
                                    op=OP_DELTA), cause)
        status = LbStatus(namespace=ns, name=name, op="ok", id=sid)
        if self.view.status.get(ref) != status:
            self._publish(status, cause)

    async def _frontends(self, spec: ServiceSpec) -> ServiceRecord:
        """The published service record, with ClusterIP and NodePorts allocated."""
        assert self.ids is not None
        ref = spec.ref
        cluster_ip = ""
        if not spec.headless:
            pool = cluster_ip_pool()
            want = None if spec.cluster_ip is None else int(ipaddress.IPv4Address(
                spec.cluster_ip))
            try:
                cluster_ip = str(ipaddress.IPv4Address(await self.ids.allocate(pool, ref, want)))
            except LbError as exc:
                raise type(exc)(f"Service {ref}: spec.clusterIP: {exc}") from exc
        ports = []
        owners: set[str] = set()
        for i, p in enumerate(spec.ports):
            node_port = 0
            if spec.exposes_node_ports:
                owner = f"{ref}/{p.name or p.port}/{p.protocol}"
                owners.add(owner)
                try:
                    node_port = await self.ids.allocate(NODEPORTS, owner, p.node_port)
                except LbError as exc:
                    raise type(exc)(f"Service {ref}: spec.ports[{i}].nodePort: {exc}") from exc
            ports.append(ServicePortRecord(name=p.name, port=p.port, protocol=p.protocol,
                                           node_port=node_port))
        for stale in self.node_port_owners.get(ref, set()) - owners:
            await self.ids.release(NODEPORTS, stale)
        self.node_port_owners[ref] = owners
        return ServiceRecord(namespace=spec.namespace, name=spec.name, type=spec.type,
                             cluster_ip=cluster_ip, ports=ports,
                             external_ips=list(spec.external_ips), lb_ips=list(spec.lb_ips),
                             affinity_timeout=spec.affinity_timeout, ext_local=spec.ext_local,
                             int_local=spec.int_local)

    def _check_frontends(self, ref: Ref, sid: int, svc: ServiceRecord) -> None:
        """An address:port/protocol serves one service only (Kubernetes does not check
        externalIPs or LoadBalancer IPs across Services; a datapath must)."""
        for addr, port, proto in sorted(service_frontends(svc)):
            owner = self.view.frontends.get((addr, port, proto))
            if owner is not None and owner != sid:
                other = self.view.services[owner]   # a frontend's owner is a known service
                raise AllocationError(
                    f"Service {ref}: frontend {addr}:{port}/{proto} is already used by "
                    f"Service {other.namespace}/{other.name}")

    def _publish_backend(self, bid: int, be: Backend, cause: str) -> None:
        backend = LbBackend(id=bid, address=be.addr.ip, port=be.addr.port,
                            protocol=be.addr.protocol, node=be.node, pod=be.pod, state=be.state)
        if self.view.backends.get(bid) != backend:
            self._publish(backend, cause)

    async def _remove(self, ref: Ref, cause: str) -> None:
        assert self.ids is not None
        ns, _, name = ref.partition("/")
        sid = self.view.ids.get(ref)
        if sid is not None:
            self._publish(LbServiceDelete(id=sid, namespace=ns, name=name), cause)
        st = self.view.status.get(ref)
        if st is not None and st.op != "delete":
            self._publish(LbStatus(namespace=ns, name=name, op="delete"), cause)
        await self.ids.release(SERVICES, ref)
        await self.ids.release(cluster_ip_pool(), ref)
        owners = self.node_port_owners.pop(ref, None)
        if owners is None:   # not seen since start: find its ports in the bucket
            owners = {o for o in await self.ids.owned(NODEPORTS) if o.startswith(f"{ref}/")}
        for owner in owners:
            await self.ids.release(NODEPORTS, owner)

    def _collect_backends(self, cause: str) -> None:
        """Backends no service refers to any more are deleted (after the membership change)."""
        used = self.view.referenced_backends()
        for bid in sorted(set(self.view.backends) - used):
            self._publish(LbBackendDelete(id=bid), cause)

    # -- publishing ------------------------------------------------------------------------

    def _publish(self, payload: Payload, cause: str) -> None:
        """Queue one event on its subject and fold it into the view at once (the view is what
        we published).

        The message id is deterministic per cause and content: replicas handling the same
        source event publish the same ids, and JetStream stores each once.
        """
        event_type = _EVENT_TYPES[type(payload)]
        subject = payload.subjects()[0]
        self._outbox.append(Outgoing(subject, event_type, payload,
                                     f"lb/{cause}/{subject}/{event_type}/{_digest(payload)}"))
        self.view.apply(payload)

    async def _flush(self) -> None:
        assert self.bus is not None
        outbox, self._outbox = self._outbox, []
        if outbox:
            await self.bus.publish_batch(outbox)
            self.published += len(outbox)


__all__ = ["SERVICE_NAME_LABEL", "LbService"]
