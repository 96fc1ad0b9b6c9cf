"""The connectivity test's pure parts: selection, objects, target resolution, the report."""

from __future__ import annotations

import pytest

from services.cli.connectivity_checks import (
    DROP,
    NAMESPACE,
    PASS,
    SCENARIOS,
    Check,
    CheckResult,
    Env,
    ScenarioResult,
    objects,
    render_result,
    render_summary,
    select,
    summary,
)
from services.cli.manifests import validate_document

REQUIRED = {"pod-to-pod-same-node", "pod-to-pod-cross-node", "pod-to-service",
            "pod-to-nodeport", "pod-to-external", "external-to-nodeport", "dns-resolution",
            "all-ingress-deny", "all-egress-deny", "client-egress", "echo-ingress",
            "to-entities-world", "to-cidr-external", "to-fqdns", "dns-only",
            "client-egress-to-echo-deny"}


def names(patterns: list[str]) -> list[str]:
    return [s.name for s in select(SCENARIOS, patterns)]


def test_every_required_scenario_with_pass_and_drop_checks() -> None:
    assert {s.name for s in SCENARIOS} == REQUIRED
    for s in SCENARIOS:
        if s.policies:   # a policy scenario shows both sides of the policy
            assert {c.expect for c in s.checks} == {PASS, DROP}, s.name
        for p in s.policies:
            validate_document(p)


def test_select_patterns() -> None:
    assert names([]) == [s.name for s in SCENARIOS]
    assert names(["^pod-to-pod"]) == ["pod-to-pod-same-node", "pod-to-pod-cross-node"]
    assert names(["nodeport", "!external"]) == ["pod-to-nodeport"]
    assert names(["!deny", "!^pod", "!dns", "!egress", "!ingress", "!^to-"]) == [
        "external-to-nodeport"]
    with pytest.raises(ValueError, match="invalid pattern"):
        select(SCENARIOS, ["("])


def test_objects_place_pods_and_validate() -> None:
    objs = objects(["n1", "n2"])
    for o in objs:
        validate_document(o)
    nodes = {o["metadata"]["name"]: o["spec"]["nodeName"] for o in objs if o["kind"] == "Pod"}
    assert nodes == {"client": "n1", "client2": "n1", "echo-same": "n1", "echo-other": "n2"}
    assert {o["metadata"]["namespace"] for o in objs if o["kind"] != "Namespace"} == {NAMESPACE}
    single = {o["metadata"]["name"]: o["spec"]["nodeName"] for o in objects(["n1"])
              if o["kind"] == "Pod"}
    assert set(single.values()) == {"n1"}


def test_env_resolves_symbolic_targets() -> None:
    env = Env(pod_ips={"echo-same": "10.244.1.5"}, cluster_ips={"echo-same": "10.96.0.7"},
              node_ports={"echo-same": 31000}, node_ips=["172.31.0.11", "172.31.0.12"],
              world_ips=["203.0.113.10", "203.0.113.11"], nodes=2)
    assert env.address("pod:echo-same") == "10.244.1.5"
    assert env.address("svc:echo-same") == "10.96.0.7"
    assert env.address("nodeport:1:echo-same") == "172.31.0.12"
    assert env.port(Check("client", "nodeport:1:echo-same")) == 31000
    assert env.address("world:1") == "203.0.113.11"
    assert env.address("name:echo") == "echo"
    assert Check("x", "nodeport:1:echo-same").node == 1
    with pytest.raises(KeyError):
        env.address("svc:echo-other")


def test_report_lines_and_summary() -> None:
    ok = ScenarioResult("a", [CheckResult(Check("client", "pod:echo-same"), True, "OK")], 0.2)
    bad = ScenarioResult("b", [CheckResult(Check("client", "world:0", 80, DROP), False, "OK"),
                               CheckResult(Check("client", "pod:echo-same"), True, "OK")], 1.5)
    skip = ScenarioResult("c", [], 0.0, skipped="needs 2 nodes")
    assert render_result(ok) == ["✅ [a] 1 check, 0.20s"]
    assert render_result(bad) == ["❌ [b] 1/2 checks failed, 1.50s",
                                  "   ❌ client -> world:0:80/TCP: expected to be dropped, got OK"]
    assert render_result(skip) == ["⏭️  [c] skipped: needs 2 nodes"]
    s = summary([ok, bad, skip])
    assert s == {"tests": 3, "passed": 1, "failed": 1, "skipped": 1, "checks": 3,
                 "failed_checks": 1, "failed_tests": ["b"]}
    assert render_summary([ok, bad, skip])[-2:] == [
        "❌ 1/3 tests failed (1/3 checks), 1 skipped", "   b"]
    assert bad.to_json()["result"] == "fail" and skip.to_json()["result"] == "skipped"
