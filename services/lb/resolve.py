"""The backends of a Service: from its EndpointSlices, else from its selector over ready pods.

Pure. A backend is an L4 address (``ip:port/proto``), as in Cilium: two Services sending to the
same pod port share one backend (and one backend id).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from services.common.contract.lb import BackendState, Protocol
from services.lb.model import EndpointSlice, ServicePort, ServiceSpec

STATE_ACTIVE: Final = "active"             # ready: takes new connections
STATE_TERMINATING: Final = "terminating"   # serving but terminating: keeps existing ones only
BACKEND_STATES: tuple[BackendState, ...] = (STATE_ACTIVE, STATE_TERMINATING)
_DONE_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True, order=True)
class BackendAddr:
    """An L4 backend address."""

    ip: str
    port: int
    protocol: Protocol

    def key(self) -> str:
        """Stable name: ``10.244.1.5:8080/TCP`` (seeds the Maglev permutation)."""
        return f"{self.ip}:{self.port}/{self.protocol}"


@dataclass(frozen=True)
class Backend:
    addr: BackendAddr
    state: BackendState
    node: str
    pod: str        # namespace/name, "" if unknown


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """A pod is a backend candidate once it has an IP and is neither deleted nor finished."""
    status = pod.get("status") or {}
    meta = pod.get("metadata") or {}
    return bool(status.get("podIP")) and not meta.get("deletionTimestamp") and \
        status.get("phase") not in _DONE_PHASES


def selects(selector: Iterable[tuple[str, str]], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector)


def container_port(pod: Mapping[str, Any], name: str, protocol: str) -> int | None:
    """The number of the pod's container port called ``name`` (and of ``protocol``)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == name and (port.get("protocol") or "TCP") == protocol:
                return int(port["containerPort"])
    return None


def _from_pods(svc: ServiceSpec, sport: ServicePort,
               pods: Mapping[str, Mapping[str, Any]]) -> list[Backend]:
    out = []
    assert svc.selector is not None
    for name, pod in sorted(pods.items()):
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if not pod_ready(pod) or not selects(svc.selector, labels):
            continue
        if isinstance(sport.target_port, int):
            port: int | None = sport.target_port
        else:
            port = container_port(pod, sport.target_port, sport.protocol)
        if port is None:
            continue   # the pod has no container port of that name: not a backend for it
        out.append(Backend(BackendAddr(pod["status"]["podIP"], port, sport.protocol),
                           STATE_ACTIVE, str((pod.get("spec") or {}).get("nodeName") or ""),
                           f"{svc.namespace}/{name}"))
    return out


def _from_slices(svc: ServiceSpec, sport: ServicePort,
                 slices: Iterable[EndpointSlice]) -> list[Backend]:
    out: dict[BackendAddr, Backend] = {}
    state: BackendState
    for sl in slices:
        for p in sl.ports:
            if p.name != sport.name or p.protocol != sport.protocol:
                continue
            for ep in sl.endpoints:
                if ep.ready:
                    state = STATE_ACTIVE
                elif ep.serving and ep.terminating:
                    state = STATE_TERMINATING
                else:
                    continue
                addr = BackendAddr(ep.address, p.port, p.protocol)
                pod = f"{svc.namespace}/{ep.pod}" if ep.pod else ""
                if addr not in out or state == STATE_ACTIVE:
                    out[addr] = Backend(addr, state, ep.node, pod)
    return [out[a] for a in sorted(out)]


def resolve_backends(svc: ServiceSpec, pods: Mapping[str, Mapping[str, Any]],
                     slices: Iterable[EndpointSlice]) -> dict[str, list[Backend]]:
    """Backends per service port name.

    Args:
        svc: the Service.
        pods: pods of the Service's namespace by name (used when no EndpointSlice exists).
        slices: the EndpointSlices labelled with this Service's name.
    """
    slices = list(slices)
    out: dict[str, list[Backend]] = {}
    for sport in svc.ports:
        if slices:
            out[sport.name] = _from_slices(svc, sport, slices)
        elif svc.selector:
            out[sport.name] = _from_pods(svc, sport, pods)
        else:
            out[sport.name] = []
    return out
