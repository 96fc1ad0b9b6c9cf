"""Kubernetes objects for tests."""

from __future__ import annotations

from typing import Any

from services.cli.manifests import Manifest, validate_document


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels or {}}}


def pod(name: str, ns: str = "default", labels: dict[str, str] | None = None,
        ip: str | None = None, host_ip: str = "172.31.0.11",
        node: str = "node1") -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "echo"}]}}
    if ip:
        obj["status"] = {"podIP": ip, "hostIP": host_ip}
    return obj


def manifests(*objs: dict[str, Any]) -> list[Manifest]:
    return [Manifest("test", i, validate_document(o)) for i, o in enumerate(objs)]
