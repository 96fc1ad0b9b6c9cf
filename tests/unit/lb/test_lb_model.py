"""Offline validation of Services and EndpointSlices, and backend resolution (pure)."""

from __future__ import annotations

import pytest

from services.cli.manifests import validate_document
from services.common.objects import ObjectError
from services.lb.errors import ServiceSpecError
from services.lb.model import parse_endpointslice, parse_service
from services.lb.resolve import STATE_ACTIVE, STATE_TERMINATING, resolve_backends
from tests.support.lbobjects import echo_pod, endpointslice, service
from tests.support.procs import REPO


def test_full_service_is_parsed() -> None:
    spec = parse_service(service(
        "web", selector={"app": "echo"}, type_="LoadBalancer",
        ports=[{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
               {"name": "dns", "port": 53, "protocol": "UDP"}],
        externalIPs=["192.0.2.10"], loadBalancerIP="198.51.100.7",
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
        externalTrafficPolicy="Local",
        status={"loadBalancer": {"ingress": [{"ip": "198.51.100.8"}]}}))
    assert spec.type == "LoadBalancer" and spec.cluster_ip is None
    assert [(p.name, p.port, p.protocol, p.target_port, p.node_port) for p in spec.ports] == [
        ("http", 80, "TCP", "http", 30080), ("dns", 53, "UDP", 53, None)]
    assert spec.external_ips == ("192.0.2.10",)
    assert spec.lb_ips == ("198.51.100.7", "198.51.100.8")
    assert spec.affinity_timeout == 60 and spec.ext_local and not spec.int_local


@pytest.mark.parametrize(("mutate", "path"), [
    ({"type": "ExternalName"}, "spec.type"),
    ({"clusterIP": "10.0.0.1"}, "spec.clusterIP"),
    ({"clusterIP": "not-an-ip"}, "spec.clusterIP"),
    ({"ports": [{"port": 80, "nodePort": 30001}]}, "spec.ports[0].nodePort"),
    ({"ports": [{"port": 0}]}, "spec.ports[0].port"),
    ({"ports": [{"port": 80, "protocol": "ICMP"}]}, "spec.ports[0].protocol"),
    ({"ports": [{"port": 80}, {"port": 81}]}, "spec.ports[0].name"),
    ({"sessionAffinity": "Cookie"}, "spec.sessionAffinity"),
    ({"externalTrafficPolicy": "Local"}, "spec.externalTrafficPolicy"),
    ({"externalIPs": ["x"]}, "spec.externalIPs[0]"),
])
def test_invalid_services_name_the_field(mutate: dict, path: str) -> None:  # type: ignore[type-arg]
    obj = service("bad")
    obj["spec"].update(mutate)
    with pytest.raises(ServiceSpecError) as exc:
        parse_service(obj)
    assert exc.value.path == path
    assert "Service default/bad" in str(exc.value)
    # `cilia apply` rejects the same documents offline
    with pytest.raises(ObjectError, match=path.replace("[", r"\[").replace("]", r"\]")):
        validate_document(obj)


def test_nodeport_out_of_range_rejected_by_apply() -> None:
    obj = service("np", type_="NodePort", ports=[{"port": 80, "nodePort": 80}])
    with pytest.raises(ObjectError, match="30000-32767"):
        validate_document(obj)


def test_backends_from_selector_resolve_named_target_ports() -> None:
    spec = parse_service(service("web", selector={"app": "echo"},
                                 ports=[{"port": 80, "targetPort": "http"}]))
    pods = {"a": echo_pod("a", "10.244.1.2", port=8080),
            "b": echo_pod("b", "10.244.1.3", port=9090),
            "pending": echo_pod("pending", None),
            "other": echo_pod("other", "10.244.1.9", app="db")}
    pods["gone"] = echo_pod("gone", "10.244.1.4")
    pods["gone"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    got = resolve_backends(spec, pods, [])
    assert [(b.addr.key(), b.pod) for b in got[""]] == [
        ("10.244.1.2:8080/TCP", "default/a"), ("10.244.1.3:9090/TCP", "default/b")]


def test_backends_from_endpointslices_carry_state() -> None:
    spec = parse_service(service("web", selector={"app": "echo"}))
    sl = parse_endpointslice(endpointslice("web-1", "web", [
        ("10.1.0.1", {"ready": True}),
        ("10.1.0.2", {"ready": False, "serving": True, "terminating": True}),
        ("10.1.0.3", {"ready": False, "serving": False})]))
    got = resolve_backends(spec, {"a": echo_pod("a", "10.244.1.2")}, [sl])
    assert [(b.addr.key(), b.state) for b in got[""]] == [
        ("10.1.0.1:9090/TCP", STATE_ACTIVE), ("10.1.0.2:9090/TCP", STATE_TERMINATING)]


def test_endpointslice_needs_its_service_label() -> None:
    obj = endpointslice("x", "web", [])
    del obj["metadata"]["labels"]
    with pytest.raises(ServiceSpecError, match=r"kubernetes\.io/service-name"):
        parse_endpointslice(obj)


def test_examples_validate() -> None:

    from services.cli.manifests import load

    root = REPO / "examples" / "services"
    docs = load([str(root)])
    services = [parse_service(m.obj) for m in docs if m.kind == "Service"]
    assert {s.type for s in services} == {"ClusterIP", "NodePort", "LoadBalancer"}
