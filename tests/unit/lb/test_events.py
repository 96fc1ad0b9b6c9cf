"""The lb view (pure): typed payloads folded into typed records."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.contract import LbBackend, LbStatus, ServiceRecord, validate
from services.lb.events import LbView, Touched, service_frontends


def service(name: str, cluster_ip: str, **fields: Any) -> dict[str, Any]:
    base = {"namespace": "prod", "name": name, "type": "ClusterIP", "cluster_ip": cluster_ip,
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "node_port": 0}],
            "external_ips": [], "lb_ips": [], "affinity_timeout": 0, "ext_local": False,
            "int_local": False}
    base.update(fields)
    return base


def fold(view: LbView, event_type: str, data: dict[str, Any]) -> Touched:
    return view.apply(validate(event_type, data))


def test_records_are_the_contracts_and_frontends_follow_the_service() -> None:
    v = LbView()
    fold(v, "lb.service", {"id": 1, "service": service("web", "10.96.0.1",
                                                       external_ips=["192.0.2.1"])})
    assert isinstance(v.services[1], ServiceRecord)
    assert v.frontends == {("10.96.0.1", 80, "TCP"): 1, ("192.0.2.1", 80, "TCP"): 1}
    assert service_frontends(v.services[1]) == set(v.frontends)
    # the same Service under a new id: the old one and its frontends go
    t = fold(v, "lb.service", {"id": 2, "service": service("web", "10.96.0.2")})
    assert t.services == {1, 2} and set(v.services) == {2} and v.ids == {"prod/web": 2}
    assert v.frontends == {("10.96.0.2", 80, "TCP"): 2}
    fold(v, "lb.service.delete", {"id": 2, "namespace": "prod", "name": "web"})
    assert not v.services and not v.ids and not v.frontends


def test_backends_members_and_status() -> None:
    v = LbView()
    fold(v, "lb.backends", {"service": 1, "added": [["http", 7]], "removed": []})
    t = fold(v, "lb.backend", {"id": 7, "address": "10.244.1.7", "port": 8080,
                               "protocol": "TCP"})
    assert t.backends == {7} and t.services == {1}
    assert v.backends[7] == LbBackend(id=7, address="10.244.1.7", port=8080, protocol="TCP")
    fold(v, "lb.backends", {"service": 1, "op": "delta", "added": [["http", 8]],
                            "removed": [["http", 7]]})
    assert v.members[1] == {("http", 8)}
    fold(v, "lb.backends", {"service": 1, "op": "set", "added": [["", 9]], "removed": []})
    assert v.members[1] == {("", 9)}
    fold(v, "lb.backend.delete", {"id": 7})
    assert 7 not in v.backends and v.referenced_backends() == {9}
    fold(v, "lb.status", {"namespace": "prod", "name": "web", "op": "error", "error": "bad"})
    assert v.status == {"prod/web": LbStatus(namespace="prod", name="web", op="error",
                                             error="bad")}


def test_other_payloads_are_ignored_and_none_is_a_mistake() -> None:
    v = LbView()
    assert not v.apply(validate("identity.upsert", {"id": 300, "labels": ["k8s:app=a"]}))
    with pytest.raises(ValueError, match="typed payload"):
        v.apply(None)
