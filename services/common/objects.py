"""Validation of ordinary Kubernetes objects entering the bus (pure code).

Each supported kind has a validator that raises :class:`ObjectError` naming the field at fault.
:data:`KINDS` holds the core kinds; the parts that own other kinds keep their entries
(``services.lb.kinds.KINDS``: Service, EndpointSlice), and ``cilia apply`` joins them with the
policy kinds into one registry (:mod:`services.cli.manifests`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from services.common.errors import CiliaError
from services.common.policytypes import MAX_PORT

MAX_DNS_LABEL = 63
MAX_DNS_SUBDOMAIN = 253
MAX_LABEL_VALUE = 63
MAX_PORT_NAME = 15
DEFAULT_NAMESPACE = "default"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PROTOCOLS = ("TCP", "UDP", "SCTP")


class ObjectError(CiliaError):
    """An object is invalid; ``path`` is the field at fault (``spec.containers[0].ports``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class KindSpec:
    api_versions: tuple[str, ...]
    namespaced: bool
    validate: Callable[[Mapping[str, Any]], None]


def require_map(obj: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise ObjectError(path, f"must be a map, got {type(obj).__name__}")
    return obj


def require_list(obj: Any, path: str) -> list[Any]:
    if not isinstance(obj, list):
        raise ObjectError(path, f"must be a list, got {type(obj).__name__}")
    return obj


def require_str(obj: Any, path: str) -> str:
    if not isinstance(obj, str):
        raise ObjectError(path, f"must be a string, got {type(obj).__name__}")
    return obj


def validate_dns_label(value: Any, path: str) -> str:
    text = require_str(value, path)
    if len(text) > MAX_DNS_LABEL or not _DNS_LABEL.fullmatch(text):
        raise ObjectError(path, f"{text!r} is not a valid DNS label (lower case alphanumerics "
                                f"and '-', at most {MAX_DNS_LABEL} characters)")
    return text


def validate_dns_subdomain(value: Any, path: str) -> str:
    text = require_str(value, path)
    if len(text) > MAX_DNS_SUBDOMAIN or not _DNS_SUBDOMAIN.fullmatch(text):
        raise ObjectError(path, f"{text!r} is not a valid DNS subdomain name")
    return text


def validate_label_key(key: Any, path: str) -> None:
    text = require_str(key, path)
    prefix, _, name = text.rpartition("/")
    if prefix and (len(prefix) > MAX_DNS_SUBDOMAIN or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise ObjectError(path, f"label key {text!r} has an invalid prefix {prefix!r}")
    if not name or len(name) > MAX_DNS_LABEL or not _LABEL_NAME.fullmatch(name):
        raise ObjectError(path, f"label key {text!r} is not a valid qualified name")


def validate_labels(labels: Any, path: str) -> None:
    for key, value in require_map(labels, path).items():
        validate_label_key(key, f"{path}.{key}")
        text = require_str(value, f"{path}.{key}")
        if len(text) > MAX_LABEL_VALUE or not _LABEL_VALUE.fullmatch(text):
            raise ObjectError(f"{path}.{key}", f"label value {text!r} is not valid")


def validate_ip(value: Any, path: str) -> str:
    text = require_str(value, path)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ObjectError(path, f"{text!r} is not an IP address") from None
    return text


def validate_ipv4(value: Any, path: str) -> str:
    text = require_str(value, path)
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        raise ObjectError(path, f"{text!r} is not an IPv4 address") from None
    return text


def validate_port(value: Any, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_PORT:
        raise ObjectError(path, f"must be a port number 1-{MAX_PORT}, got {value!r}")
    return value


def validate_metadata(obj: Mapping[str, Any], namespaced: bool, dns_label: bool) -> None:
    meta = require_map(obj.get("metadata"), "metadata")
    if "name" not in meta:
        raise ObjectError("metadata.name", "is required")
    if dns_label:
        validate_dns_label(meta["name"], "metadata.name")
    else:
        validate_dns_subdomain(meta["name"], "metadata.name")
    if "namespace" in meta:
        if not namespaced:
            raise ObjectError("metadata.namespace", "must not be set on a cluster-scoped object")
        validate_dns_label(meta["namespace"], "metadata.namespace")
    if "labels" in meta and meta["labels"] is not None:
        validate_labels(meta["labels"], "metadata.labels")


def validate_namespace(obj: Mapping[str, Any]) -> None:
    validate_metadata(obj, namespaced=False, dns_label=True)


def validate_container_ports(ports: Any, path: str) -> None:
    names: set[str] = set()
    for i, port in enumerate(require_list(ports, path)):
        p = f"{path}[{i}]"
        port = require_map(port, p)
        if "containerPort" not in port:
            raise ObjectError(f"{p}.containerPort", "is required")
        validate_port(port["containerPort"], f"{p}.containerPort")
        proto = port.get("protocol", "TCP")
        if proto not in PROTOCOLS:
            raise ObjectError(f"{p}.protocol", f"must be one of {', '.join(PROTOCOLS)}, "
                                               f"got {proto!r}")
        if "name" in port:
            name = require_str(port["name"], f"{p}.name")
            if len(name) > MAX_PORT_NAME or not _PORT_NAME.fullmatch(name) or name.isdigit():
                raise ObjectError(f"{p}.name", f"{name!r} is not a valid port name")
            if name in names:
                raise ObjectError(f"{p}.name", f"duplicate port name {name!r}")
            names.add(name)


def validate_pod_spec(spec: Any, path: str) -> None:
    spec = require_map(spec, path)
    containers = require_list(spec.get("containers"), f"{path}.containers")
    if not containers:
        raise ObjectError(f"{path}.containers", "must have at least one container")
    for i, container in enumerate(containers):
        p = f"{path}.containers[{i}]"
        container = require_map(container, p)
        if "name" not in container:
            raise ObjectError(f"{p}.name", "is required")
        validate_dns_label(container["name"], f"{p}.name")
        if "ports" in container and container["ports"] is not None:
            validate_container_ports(container["ports"], f"{p}.ports")
    for field in ("serviceAccountName", "nodeName"):
        if field in spec:
            validate_dns_subdomain(spec[field], f"{path}.{field}")


def validate_pod(obj: Mapping[str, Any]) -> None:
    validate_metadata(obj, namespaced=True, dns_label=False)
    validate_pod_spec(obj.get("spec"), "spec")
    status = obj.get("status")
    if status is not None:
        status = require_map(status, "status")
        for field in ("podIP", "hostIP"):   # the datapath is IPv4 only
            if field in status:
                validate_ipv4(status[field], f"status.{field}")


def validate_node(obj: Mapping[str, Any]) -> None:
    validate_metadata(obj, namespaced=False, dns_label=False)
    spec = obj.get("spec") or {}
    if "podCIDR" in require_map(spec, "spec"):
        text = require_str(spec["podCIDR"], "spec.podCIDR")
        try:
            ipaddress.ip_network(text)
        except ValueError:
            raise ObjectError("spec.podCIDR", f"{text!r} is not a CIDR") from None
    status = require_map(obj.get("status") or {}, "status")
    for i, addr in enumerate(require_list(status.get("addresses") or [], "status.addresses")):
        addr = require_map(addr, f"status.addresses[{i}]")
        require_str(addr.get("type"), f"status.addresses[{i}].type")
        validate_ip(addr.get("address"), f"status.addresses[{i}].address")


def validate_deployment(obj: Mapping[str, Any]) -> None:
    validate_metadata(obj, namespaced=True, dns_label=False)
    spec = require_map(obj.get("spec"), "spec")
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise ObjectError("spec.replicas", f"must be a non-negative integer, got {replicas!r}")
    selector = require_map(spec.get("selector"), "spec.selector")
    if set(selector) - {"matchLabels"}:
        raise ObjectError("spec.selector", "only matchLabels is supported, got "
                                           f"{', '.join(sorted(set(selector) - {'matchLabels'}))}")
    match = selector.get("matchLabels") or {}
    validate_labels(match, "spec.selector.matchLabels")
    if not match:
        raise ObjectError("spec.selector.matchLabels", "must not be empty")
    template = require_map(spec.get("template"), "spec.template")
    meta = require_map(template.get("metadata") or {}, "spec.template.metadata")
    labels = meta.get("labels") or {}
    validate_labels(labels, "spec.template.metadata.labels")
    for key, value in match.items():
        if labels.get(key) != value:
            raise ObjectError("spec.template.metadata.labels",
                              f"must match spec.selector.matchLabels ({key}={value})")
    validate_pod_spec(template.get("spec"), "spec.template.spec")


KINDS: dict[str, KindSpec] = {
    "Namespace": KindSpec(("v1",), namespaced=False, validate=validate_namespace),
    "Pod": KindSpec(("v1",), namespaced=True, validate=validate_pod),
    "Node": KindSpec(("v1",), namespaced=False, validate=validate_node),
    "Deployment": KindSpec(("apps/v1",), namespaced=True, validate=validate_deployment),
}

