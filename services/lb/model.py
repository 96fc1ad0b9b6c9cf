"""Service and EndpointSlice objects as the lb service reads them (pure).

:func:`parse_service` turns a ``v1/Service`` into a :class:`ServiceSpec` and
:func:`parse_endpointslice` a ``discovery.k8s.io/v1/EndpointSlice`` into an
:class:`EndpointSlice`; both raise :class:`ServiceSpecError` naming the object and the field.
What cannot be known offline (a ClusterIP or NodePort taken by another Service) is checked by
the lb service at allocation time.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.common.contract.lb import Protocol, ServiceType
from services.common.policytypes import MAX_PORT
from services.lb.errors import ServiceSpecError

# Where ClusterIPs come from when a Service gives none (Kubernetes' kubeadm default range).
SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/16")
NODEPORT_MIN, NODEPORT_MAX = 30000, 32767     # kube-apiserver --service-node-port-range
DEFAULT_AFFINITY_TIMEOUT_S = 10800            # sessionAffinityConfig.clientIP default (3 h)
MAX_AFFINITY_TIMEOUT_S = 86400
PROTOCOLS: tuple[Protocol, ...] = ("TCP", "UDP", "SCTP")
SERVICE_TYPES: tuple[ServiceType, ...] = ("ClusterIP", "NodePort", "LoadBalancer")
HEADLESS = "None"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"   # EndpointSlice -> its Service
MAX_NAME = 253                                      # an object name (DNS subdomain)
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    protocol: Protocol
    target_port: int | str        # a number, or the name of a container port
    node_port: int | None         # None: allocate one (NodePort/LoadBalancer) / not exposed


@dataclass(frozen=True)
class ServiceSpec:
    namespace: str
    name: str
    type: ServiceType
    cluster_ip: str | None        # None: allocate one; "None": headless (no frontend)
    ports: tuple[ServicePort, ...]
    selector: tuple[tuple[str, str], ...] | None
    external_ips: tuple[str, ...]
    lb_ips: tuple[str, ...]       # spec.loadBalancerIP and status.loadBalancer.ingress[].ip
    affinity_timeout: int         # seconds; 0 = no session affinity
    ext_local: bool               # externalTrafficPolicy: Local
    int_local: bool               # internalTrafficPolicy: Local

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def headless(self) -> bool:
        return self.cluster_ip == HEADLESS

    @property
    def exposes_node_ports(self) -> bool:
        return self.type in ("NodePort", "LoadBalancer")


@dataclass(frozen=True)
class SliceEndpoint:
    address: str
    ready: bool
    serving: bool
    terminating: bool
    node: str
    pod: str


@dataclass(frozen=True)
class SlicePort:
    name: str
    port: int
    protocol: Protocol


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    service: str
    ports: tuple[SlicePort, ...]
    endpoints: tuple[SliceEndpoint, ...]


def _map(obj: Any, path: str, ref: str) -> Mapping[str, Any]:
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise ServiceSpecError(f"must be a map, got {type(obj).__name__}", path, ref)
    return obj


def _list(obj: Any, path: str, ref: str) -> list[Any]:
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise ServiceSpecError(f"must be a list, got {type(obj).__name__}", path, ref)
    return obj


def _port(value: Any, path: str, ref: str, lo: int = 1, hi: int = MAX_PORT) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ServiceSpecError(f"must be a port number {lo}-{hi}, got {value!r}", path, ref)
    return value


def _ipv4(value: Any, path: str, ref: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ValueError, TypeError):
        raise ServiceSpecError(f"{value!r} is not an IPv4 address", path, ref) from None


def _protocol(value: Any, path: str, ref: str) -> Protocol:
    proto = "TCP" if value is None else value
    for known in PROTOCOLS:
        if proto == known:
            return known
    raise ServiceSpecError(f"must be one of {', '.join(PROTOCOLS)}, got {proto!r}", path, ref)


def _meta(obj: Mapping[str, Any], kind: str) -> tuple[str, str, str]:
    meta = _map(obj.get("metadata"), "metadata", kind)
    name = meta.get("name")
    ns = meta.get("namespace") or "default"
    if not isinstance(name, str) or not name:
        raise ServiceSpecError("is required", "metadata.name", kind)
    return str(ns), name, f"{kind} {ns}/{name}"


def _target_port(value: Any, default: int, path: str, ref: str) -> int | str:
    if value is None:
        return default
    if isinstance(value, str):
        if value.isdigit():
            return _port(int(value), path, ref)
        if not value or len(value) > 15:
            raise ServiceSpecError(f"{value!r} is not a valid port name", path, ref)
        return value
    return _port(value, path, ref)


def _ports(spec: Mapping[str, Any], svc_type: str, ref: str) -> tuple[ServicePort, ...]:
    raw = _list(spec.get("ports"), "spec.ports", ref)
    out: list[ServicePort] = []
    seen_names: set[str] = set()
    seen_ports: set[tuple[int, str]] = set()
    for i, item in enumerate(raw):
        p = f"spec.ports[{i}]"
        item = _map(item, p, ref)
        port = _port(item.get("port"), f"{p}.port", ref)
        proto = _protocol(item.get("protocol"), f"{p}.protocol", ref)
        name = item.get("name") or ""
        if not isinstance(name, str):
            raise ServiceSpecError("must be a string", f"{p}.name", ref)
        if len(raw) > 1 and not name:
            raise ServiceSpecError("is required when a Service has several ports", f"{p}.name",
                                   ref)
        if name in seen_names:
            raise ServiceSpecError(f"duplicate port name {name!r}", f"{p}.name", ref)
        if (port, proto) in seen_ports:
            raise ServiceSpecError(f"duplicate port {port}/{proto}", f"{p}.port", ref)
        seen_names.add(name)
        seen_ports.add((port, proto))
        node_port = item.get("nodePort")
        if node_port is not None:
            if svc_type == "ClusterIP":
                raise ServiceSpecError("may only be set on NodePort or LoadBalancer Services",
                                       f"{p}.nodePort", ref)
            node_port = _port(node_port, f"{p}.nodePort", ref, NODEPORT_MIN, NODEPORT_MAX)
        out.append(ServicePort(name, port, proto,
                               _target_port(item.get("targetPort"), port, f"{p}.targetPort",
                                            ref), node_port))
    return tuple(out)


def _affinity(spec: Mapping[str, Any], ref: str) -> int:
    mode = spec.get("sessionAffinity") or "None"
    if mode == "None":
        return 0
    if mode != "ClientIP":
        raise ServiceSpecError(f"must be None or ClientIP, got {mode!r}", "spec.sessionAffinity",
                               ref)
    cfg = _map(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig", ref)
    client = _map(cfg.get("clientIP"), "spec.sessionAffinityConfig.clientIP", ref)
    timeout = client.get("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT_S)
    path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
    if not isinstance(timeout, int) or isinstance(timeout, bool) or \
            not 1 <= timeout <= MAX_AFFINITY_TIMEOUT_S:
        raise ServiceSpecError(f"must be 1-{MAX_AFFINITY_TIMEOUT_S} seconds, got {timeout!r}",
                               path, ref)
    return timeout


def _policy(spec: Mapping[str, Any], field: str, ref: str) -> bool:
    value = spec.get(field) or "Cluster"
    if value not in ("Cluster", "Local"):
        raise ServiceSpecError(f"must be Cluster or Local, got {value!r}", f"spec.{field}", ref)
    return bool(value == "Local")


def parse_service(obj: Mapping[str, Any]) -> ServiceSpec:
    """Validate a ``v1/Service`` and return what load balancing needs of it.

    Raises:
        ServiceSpecError: naming the Service and the field at fault.
    """
    ns, name, ref = _meta(obj, "Service")
    spec = _map(obj.get("spec"), "spec", ref)
    svc_type = spec.get("type") or "ClusterIP"
    if svc_type not in SERVICE_TYPES:
        hint = " (ExternalName is not supported)" if svc_type == "ExternalName" else ""
        raise ServiceSpecError(f"must be one of {', '.join(SERVICE_TYPES)}, got "
                               f"{svc_type!r}{hint}", "spec.type", ref)
    ports = _ports(spec, svc_type, ref)
    cluster_ip = spec.get("clusterIP") or None
    if cluster_ip is not None and cluster_ip != HEADLESS:
        cluster_ip = _ipv4(cluster_ip, "spec.clusterIP", ref)
        if ipaddress.IPv4Address(cluster_ip) not in SERVICE_CIDR:
            raise ServiceSpecError(f"{cluster_ip} is not in the service CIDR {SERVICE_CIDR}",
                                   "spec.clusterIP", ref)
    if cluster_ip == HEADLESS and svc_type != "ClusterIP":
        raise ServiceSpecError(f"a {svc_type} Service cannot be headless", "spec.clusterIP", ref)
    if not ports and cluster_ip != HEADLESS:   # as the API server: only headless may have none
        raise ServiceSpecError("is required (at least one port)", "spec.ports", ref)
    selector_raw = spec.get("selector")
    selector = None
    if selector_raw is not None:
        sel = _map(selector_raw, "spec.selector", ref)
        for k, v in sel.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ServiceSpecError("keys and values must be strings", "spec.selector", ref)
        selector = tuple(sorted(sel.items()))
    external = tuple(_ipv4(ip, f"spec.externalIPs[{i}]", ref)
                     for i, ip in enumerate(_list(spec.get("externalIPs"), "spec.externalIPs",
                                                  ref)))
    lb_ips: list[str] = []
    if spec.get("loadBalancerIP"):
        if svc_type != "LoadBalancer":
            raise ServiceSpecError("may only be set on LoadBalancer Services",
                                   "spec.loadBalancerIP", ref)
        lb_ips.append(_ipv4(spec["loadBalancerIP"], "spec.loadBalancerIP", ref))
    status = _map(obj.get("status"), "status", ref)
    lb_status = _map(status.get("loadBalancer"), "status.loadBalancer", ref)
    for i, ing in enumerate(_list(lb_status.get("ingress"), "status.loadBalancer.ingress", ref)):
        ing = _map(ing, f"status.loadBalancer.ingress[{i}]", ref)
        if ing.get("ip"):
            ip = _ipv4(ing["ip"], f"status.loadBalancer.ingress[{i}].ip", ref)
            if ip not in lb_ips:
                lb_ips.append(ip)
    ext_local = _policy(spec, "externalTrafficPolicy", ref)
    if ext_local and svc_type == "ClusterIP":
        raise ServiceSpecError("Local needs a NodePort or LoadBalancer Service",
                               "spec.externalTrafficPolicy", ref)
    return ServiceSpec(ns, name, svc_type, cluster_ip, ports, selector, external, tuple(lb_ips),
                       _affinity(spec, ref), ext_local,
                       _policy(spec, "internalTrafficPolicy", ref))


def _name(value: Any, path: str, ref: str) -> str:
    """An object name (DNS subdomain), or "" when absent."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or len(value) > MAX_NAME or not _NAME.fullmatch(value):
        raise ServiceSpecError(f"{value!r} is not a valid object name", path, ref)
    return value


def _condition(conds: Mapping[str, Any], key: str, default: bool, path: str, ref: str) -> bool:
    value = conds.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ServiceSpecError("must be true or false", f"{path}.{key}", ref)
    return value


def parse_endpointslice(obj: Mapping[str, Any]) -> EndpointSlice:
    """Validate a ``discovery.k8s.io/v1`` EndpointSlice (IPv4 only).

    Raises:
        ServiceSpecError: naming the slice and the field at fault.
    """
    ns, name, ref = _meta(obj, "EndpointSlice")
    labels = _map(_map(obj.get("metadata"), "metadata", ref).get("labels"), "metadata.labels",
                  ref)
    service = labels.get(SERVICE_NAME_LABEL)
    if not isinstance(service, str) or not service:
        raise ServiceSpecError(f"label {SERVICE_NAME_LABEL} naming the Service is required",
                               "metadata.labels", ref)
    family = obj.get("addressType", "IPv4")
    if family != "IPv4":
        raise ServiceSpecError(f"only IPv4 is supported, got {family!r}", "addressType", ref)
    ports = []
    for i, item in enumerate(_list(obj.get("ports"), "ports", ref)):
        item = _map(item, f"ports[{i}]", ref)
        pname = item.get("name") or ""
        ports.append(SlicePort(str(pname), _port(item.get("port"), f"ports[{i}].port", ref),
                               _protocol(item.get("protocol"), f"ports[{i}].protocol", ref)))
    endpoints = []
    for i, item in enumerate(_list(obj.get("endpoints"), "endpoints", ref)):
        p = f"endpoints[{i}]"
        item = _map(item, p, ref)
        addrs = _list(item.get("addresses"), f"{p}.addresses", ref)
        if not addrs:
            raise ServiceSpecError("must hold at least one address", f"{p}.addresses", ref)
        conds = _map(item.get("conditions"), f"{p}.conditions", ref)
        ready = _condition(conds, "ready", True, f"{p}.conditions", ref)
        target = _map(item.get("targetRef"), f"{p}.targetRef", ref)
        endpoints.append(SliceEndpoint(
            _ipv4(addrs[0], f"{p}.addresses[0]", ref), ready,
            _condition(conds, "serving", ready, f"{p}.conditions", ref),
            _condition(conds, "terminating", False, f"{p}.conditions", ref),
            _name(item.get("nodeName"), f"{p}.nodeName", ref),
            _name(target.get("name"), f"{p}.targetRef.name", ref)))
    return EndpointSlice(ns, name, service, tuple(ports), tuple(endpoints))
