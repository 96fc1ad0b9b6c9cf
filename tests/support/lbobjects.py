"""Service, EndpointSlice and pod objects for the lb tests."""

from __future__ import annotations

from typing import Any


def service(name: str, ns: str = "default", *, selector: dict[str, str] | None = None,
            ports: list[dict[str, Any]] | None = None, type_: str = "ClusterIP",
            **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type_, "ports": ports or [{"port": 80, "targetPort": 8080}]}
    if selector is not None:
        body["selector"] = selector
    status = spec.pop("status", None)
    body.update(spec)
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Service",
                           "metadata": {"name": name, "namespace": ns}, "spec": body}
    if status:
        obj["status"] = status
    return obj


def echo_pod(name: str, ip: str | None, ns: str = "default", app: str = "echo",
             node: str = "node1", port: int = 8080) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [
            {"name": "echo", "image": "echo",
             "ports": [{"name": "http", "containerPort": port}]}]}}
    if ip:
        obj["status"] = {"podIP": ip, "hostIP": "172.31.0.11"}
    return obj


def endpointslice(name: str, service_name: str, endpoints: list[tuple[str, dict[str, bool]]],
                  ns: str = "default", port: int = 9090, port_name: str = "",
                  ) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": conds, "nodeName": "node1",
                           "targetRef": {"kind": "Pod", "name": f"p-{ip.replace('.', '-')}"}}
                          for ip, conds in endpoints]}
