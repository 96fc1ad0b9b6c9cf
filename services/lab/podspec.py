"""Pure handling of Pod and Deployment objects for the lab kubelet (no I/O).

Validation covers what the kubelet uses (names, labels, container ports); errors name the
object and the field. Deployment pods are named like Kubernetes names them:
``<deployment>-<pod-template-hash>-<5 random characters>``.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.common.policytypes import MAX_PORT
from services.lab.errors import PodSpecError
from services.workload.client import parse_target

DEFAULT_NAMESPACE = "default"
TEMPLATE_HASH_LABEL = "pod-template-hash"
# Kubernetes' rand.SafeEncodeString alphabet (no vowels, no look-alike characters)
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
POD_SUFFIX_LEN = 5
FNV32_OFFSET = 0x811C9DC5
FNV32_PRIME = 0x01000193
MAX_NAME = 253
MAX_DNS_LABEL = 63
PROTOCOLS = ("TCP", "UDP", "SCTP")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class PodPort:
    port: int
    protocol: str


@dataclass(frozen=True)
class PodSpec:
    """The validated essentials of a Pod."""

    namespace: str
    name: str
    labels: dict[str, str]
    ports: tuple[PodPort, ...]
    node_name: str | None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _ref(obj: Mapping[str, Any], kind: str) -> str:
    raw = obj.get("metadata")
    meta: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    ns = meta.get("namespace") or DEFAULT_NAMESPACE
    return f"{kind} {ns}/{meta.get('name', '?')}"


def _map(value: Any, where: str, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PodSpecError(f"{where}: {field}: must be a map")
    return value


def _labels(value: Any, where: str, field: str) -> dict[str, str]:
    labels = _map(value if value is not None else {}, where, field)
    out = {}
    for key, val in labels.items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise PodSpecError(f"{where}: {field}.{key}: label keys and values must be strings")
        out[key] = val
    return out


def _ports(spec: Mapping[str, Any], where: str, prefix: str) -> tuple[PodPort, ...]:
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise PodSpecError(f"{where}: {prefix}containers: must be a non-empty list")
    ports: list[PodPort] = []
    for ci, container in enumerate(containers):
        cpath = f"{prefix}containers[{ci}]"
        _map(container, where, cpath)
        raw_ports = container.get("ports") or []
        if not isinstance(raw_ports, list):
            raise PodSpecError(f"{where}: {cpath}.ports: must be a list")
        for pi, port in enumerate(raw_ports):
            ppath = f"{cpath}.ports[{pi}]"
            _map(port, where, ppath)
            num = port.get("containerPort")
            if not isinstance(num, int) or isinstance(num, bool) or not 1 <= num <= MAX_PORT:
                raise PodSpecError(f"{where}: {ppath}.containerPort: must be a port number "
                                   f"1-{MAX_PORT}, got {num!r}")
            proto = port.get("protocol", "TCP")
            if proto not in PROTOCOLS:
                raise PodSpecError(f"{where}: {ppath}.protocol: must be one of "
                                   f"{', '.join(PROTOCOLS)}, got {proto!r}")
            ports.append(PodPort(num, proto))
    return tuple(dict.fromkeys(ports))


def client_targets(pod: Mapping[str, Any]) -> list[str]:
    """The ``HOST:PORT`` targets of a ``cilia/client`` pod (its first container's ``args``).

    Raises:
        PodSpecError: no targets, or one that is not HOST:PORT.
    """
    where = _ref(pod, "Pod")
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    args = (containers[0] or {}).get("args")
    if not isinstance(args, list) or not args:
        raise PodSpecError(f"{where}: spec.containers[0].args: a client pod needs HOST:PORT "
                           "targets")
    for i, arg in enumerate(args):
        try:
            parse_target(arg if isinstance(arg, str) else repr(arg))
        except ValueError as exc:
            raise PodSpecError(f"{where}: spec.containers[0].args[{i}]: {exc}") from None
    return [str(a) for a in args]


def _name(meta: Mapping[str, Any], where: str) -> tuple[str, str]:
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > MAX_NAME or not _DNS_SUBDOMAIN.match(name):
        raise PodSpecError(f"{where}: metadata.name: {name!r} is not a valid name (lower case "
                           "alphanumerics, '-' and '.')")
    namespace = meta.get("namespace") or DEFAULT_NAMESPACE
    if (not isinstance(namespace, str) or len(namespace) > MAX_DNS_LABEL
            or not _DNS_LABEL.match(namespace)):
        raise PodSpecError(f"{where}: metadata.namespace: {namespace!r} is not a valid "
                           "namespace name")
    return namespace, name


def parse_pod(pod: Mapping[str, Any]) -> PodSpec:
    """Validate a Pod object.

    Raises:
        PodSpecError: naming the pod and the field at fault.
    """
    where = _ref(pod, "Pod")
    if pod.get("kind", "Pod") != "Pod":
        raise PodSpecError(f"{where}: kind: expected Pod, got {pod.get('kind')!r}")
    meta = _map(pod.get("metadata"), where, "metadata")
    namespace, name = _name(meta, where)
    spec = _map(pod.get("spec"), where, "spec")
    node = spec.get("nodeName")
    if node is not None and not isinstance(node, str):
        raise PodSpecError(f"{where}: spec.nodeName: must be a string")
    return PodSpec(namespace, name, _labels(meta.get("labels"), where, "metadata.labels"),
                   _ports(spec, where, "spec."), node or None)


@dataclass(frozen=True)
class DeploymentSpec:
    namespace: str
    name: str
    replicas: int
    template: dict[str, Any]
    template_hash: str


def fnv32a(data: bytes) -> int:
    value = FNV32_OFFSET
    for byte in data:
        value = ((value ^ byte) * FNV32_PRIME) & 0xFFFFFFFF
    return value


def safe_encode(text: str) -> str:
    """Kubernetes' SafeEncodeString: map each byte onto the safe alphabet."""
    return "".join(SAFE_ALPHABET[ord(ch) % len(SAFE_ALPHABET)] for ch in text)


def template_hash(template: Mapping[str, Any]) -> str:
    """A stable hash of a pod template (the ``pod-template-hash`` label's value)."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    return safe_encode(str(fnv32a(canonical)))


def parse_deployment(deploy: Mapping[str, Any]) -> DeploymentSpec:
    """Validate a Deployment object.

    Raises:
        PodSpecError: naming the deployment and the field at fault.
    """
    where = _ref(deploy, "Deployment")
    meta = _map(deploy.get("metadata"), where, "metadata")
    namespace, name = _name(meta, where)
    spec = _map(deploy.get("spec"), where, "spec")
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise PodSpecError(f"{where}: spec.replicas: must be an integer >= 0, got {replicas!r}")
    template = _map(spec.get("template"), where, "spec.template")
    tmeta = _map(template.get("metadata") or {}, where, "spec.template.metadata")
    labels = _labels(tmeta.get("labels"), where, "spec.template.metadata.labels")
    selector = _map(spec.get("selector") or {}, where, "spec.selector")
    match = _labels(selector.get("matchLabels"), where, "spec.selector.matchLabels")
    for key, value in match.items():
        if labels.get(key) != value:
            raise PodSpecError(f"{where}: spec.selector.matchLabels.{key}: {value!r} does not "
                               "match the template's labels")
    _ports(_map(template.get("spec"), where, "spec.template.spec"), where,
           "spec.template.spec.")
    tmpl = copy.deepcopy(dict(template))
    return DeploymentSpec(namespace, name, replicas, tmpl, template_hash(tmpl))


def random_suffix() -> str:
    return "".join(secrets.choice(SAFE_ALPHABET) for _ in range(POD_SUFFIX_LEN))


def deployment_pod(deploy: DeploymentSpec, suffix: str) -> dict[str, Any]:
    """A pod of the deployment with the template's labels plus ``pod-template-hash``."""
    tmeta = deploy.template.get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    labels[TEMPLATE_HASH_LABEL] = deploy.template_hash
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": f"{deploy.name}-{deploy.template_hash}-{suffix}",
            "namespace": deploy.namespace, "labels": labels,
            "annotations": dict(tmeta.get("annotations") or {}),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                 "name": deploy.name}],
        },
        "spec": copy.deepcopy(deploy.template.get("spec") or {}),
    }


def owner_deployment(pod: Mapping[str, Any]) -> str | None:
    """The name of the Deployment that owns a pod, if any."""
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Deployment":
            return str(ref.get("name"))
    return None


def pick_node(nodes: list[str], pods_per_node: Mapping[str, int]) -> str:
    """The node with the fewest pods (the first such node on ties)."""
    return min(nodes, key=lambda n: (pods_per_node.get(n, 0), nodes.index(n)))
