"""The lb service's events folded: :class:`LbView`, what the bus says about services,
backends and memberships. Pure.

The subjects, event types and payloads are the bus contract's
(:mod:`services.common.contract.lb`). Membership is published as deltas; a consumer folds the
whole ``cilia.lb.>`` history in order (``deliver="all"``) to know every service's members.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.contract import (
    OP_SET,
    LbBackend,
    LbBackendDelete,
    LbMembers,
    LbServiceDelete,
    LbServiceEvent,
    LbStatus,
    Payload,
    ServiceRecord,
)

Member = tuple[str, int]    # (service port name, backend id)
Frontend = tuple[str, int, str]   # (address, port, protocol)


def service_frontends(svc: ServiceRecord) -> set[Frontend]:
    """The address frontends of a service record (ClusterIP, externalIPs, LB IPs x ports);
    NodePorts are unique by allocation and not listed."""
    addrs = [a for a in (svc.cluster_ip, *svc.external_ips, *svc.lb_ips) if a]
    return {(a, p.port, p.protocol) for a in addrs for p in svc.ports}


@dataclass
class Touched:
    """What one folded event changed."""

    services: set[int] = field(default_factory=set)
    backends: set[int] = field(default_factory=set)

    def merge(self, other: Touched) -> None:
        self.services |= other.services
        self.backends |= other.backends

    def __bool__(self) -> bool:
        return bool(self.services or self.backends)


class LbView:
    """What the bus says about services, backends and memberships (a fold of ``cilia.lb.>``).

    It keeps the contract's typed records as they arrived (decoded payloads: compare them, do
    not hand them to the codec again).
    """

    def __init__(self) -> None:
        self.services: dict[int, ServiceRecord] = {}
        self.ids: dict[str, int] = {}                 # "ns/name" -> service id
        self.backends: dict[int, LbBackend] = {}
        self.members: dict[int, set[Member]] = {}
        self.status: dict[str, LbStatus] = {}         # "ns/name" -> the last status
        self.frontends: dict[Frontend, int] = {}    # address frontend -> service id

    def apply(self, payload: Payload | None) -> Touched:
        """Fold one event's typed payload (``Event.payload``; other services' payloads are
        ignored); returns the service and backend ids it touched.

        Raises:
            ValueError: no payload (decoding always sets one: a caller's mistake).
        """
        t = Touched()
        match payload:
            case None:
                raise ValueError("an lb event without its typed payload")
            case LbServiceEvent(id=sid, service=svc):
                ref = f"{svc.namespace}/{svc.name}"
                old = self.ids.get(ref)
                if old is not None and old != sid:
                    self._drop(old)
                    t.services.add(old)
                self._drop(sid)
                self.services[sid] = svc
                for fe in service_frontends(svc):
                    self.frontends[fe] = sid
                self.ids[ref] = sid
                t.services.add(sid)
            case LbServiceDelete(id=sid):
                gone = self._drop(sid)
                if gone is not None:
                    self.ids.pop(f"{gone.namespace}/{gone.name}", None)
                self.members.pop(sid, None)
                t.services.add(sid)
            case LbBackend(id=bid):
                self.backends[bid] = payload
                t.backends.add(bid)
                t.services |= self.services_of(bid)
            case LbBackendDelete(id=bid):
                self.backends.pop(bid, None)
                t.backends.add(bid)
                t.services |= self.services_of(bid)
            case LbMembers(service=sid):
                if payload.op == OP_SET:
                    self.members[sid] = set()
                cur = self.members.setdefault(sid, set())
                cur.difference_update(payload.removed)
                cur.update(payload.added)
                t.services.add(sid)
            case LbStatus():
                self.status[f"{payload.namespace}/{payload.name}"] = payload
        return t

    def _drop(self, sid: int) -> ServiceRecord | None:
        svc = self.services.pop(sid, None)
        if svc is not None:
            for fe in service_frontends(svc):
                if self.frontends.get(fe) == sid:
                    del self.frontends[fe]
        return svc

    def services_of(self, backend_id: int) -> set[int]:
        return {sid for sid, mem in self.members.items() if any(b == backend_id for _, b in mem)}

    def referenced_backends(self) -> set[int]:
        return {bid for mem in self.members.values() for _, bid in mem}
