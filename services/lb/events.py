"""The lb service's events folded: :class:`LbView`, what the bus says about services,
backends and memberships. Pure.

The subjects, event types and payloads are the bus contract's
(:mod:`services.common.contract.lb`). Membership is published as deltas; a consumer folds the
whole ``cilia.lb.>`` history in order (``deliver="all"``) to know every service's members.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.common.contract import OP_SET, LbEvent

Member = tuple[str, int]    # (service port name, backend id)
Frontend = tuple[str, int, str]   # (address, port, protocol)


def service_frontends(svc: dict[str, Any]) -> set[Frontend]:
    """The address frontends of a service record (ClusterIP, externalIPs, LB IPs x ports);
    NodePorts are unique by allocation and not listed."""
    addrs = [a for a in [svc.get("cluster_ip") or "", *(svc.get("external_ips") or []),
                         *(svc.get("lb_ips") or [])] if a]
    return {(a, int(p["port"]), str(p["protocol"])) for a in addrs for p in svc["ports"]}


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
    """What the bus says about services, backends and memberships (a fold of ``cilia.lb.>``)."""

    def __init__(self) -> None:
        self.services: dict[int, dict[str, Any]] = {}
        self.ids: dict[str, int] = {}                 # "ns/name" -> service id
        self.backends: dict[int, dict[str, Any]] = {}
        self.members: dict[int, set[Member]] = {}
        self.status: dict[str, dict[str, Any]] = {}
        self.frontends: dict[Frontend, int] = {}    # address frontend -> service id

    def apply(self, event_type: str, data: dict[str, Any]) -> Touched:
        """Fold one event; returns the service and backend ids it touched."""
        t = Touched()
        match event_type:
            case LbEvent.SERVICE:
                svc = data["service"]
                sid = int(data["id"])
                ref = f"{svc['namespace']}/{svc['name']}"
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
            case LbEvent.SERVICE_DELETE:
                sid = int(data["id"])
                svc = self._drop(sid)
                if svc is not None:
                    self.ids.pop(f"{svc['namespace']}/{svc['name']}", None)
                self.members.pop(sid, None)
                t.services.add(sid)
            case LbEvent.BACKEND:
                bid = int(data["id"])
                self.backends[bid] = data
                t.backends.add(bid)
                t.services |= self.services_of(bid)
            case LbEvent.BACKEND_DELETE:
                bid = int(data["id"])
                self.backends.pop(bid, None)
                t.backends.add(bid)
                t.services |= self.services_of(bid)
            case LbEvent.MEMBERS:
                sid = int(data["service"])
                if data.get("op") == OP_SET:
                    self.members[sid] = set()
                cur = self.members.setdefault(sid, set())
                for name, bid in data.get("removed") or ():
                    cur.discard((str(name), int(bid)))
                for name, bid in data.get("added") or ():
                    cur.add((str(name), int(bid)))
                t.services.add(sid)
            case LbEvent.STATUS:
                self.status[f"{data['namespace']}/{data['name']}"] = data
        return t

    def _drop(self, sid: int) -> dict[str, Any] | None:
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
