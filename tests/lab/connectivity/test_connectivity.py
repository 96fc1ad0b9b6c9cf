"""``cilia connectivity test`` on a two-node lab: every scenario passes with real connections,
drops are confirmed by flow events, a policy that denies DNS makes exactly the DNS test fail,
and the run leaves the user's workloads and nothing of its own behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.cli.connectivity_checks import DROP, NAMESPACE, SCENARIOS
from services.lab import Kubelet
from tests.support.cluster import Cluster

USER_POD = """
apiVersion: v1
kind: Pod
metadata: {name: mine, namespace: default, labels: {app: mine}}
spec:
  containers: [{name: c, image: cilia/workload, ports: [{containerPort: 8080}]}]
"""
DENY_DNS = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-dns, namespace: kube-system}
spec:
  endpointSelector:
    matchLabels: {k8s-app: kube-dns}
  ingress:
    - fromEntities: [all]
  ingressDeny:
    - fromEntities: [all]
      toPorts:
        - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
"""


def run(c: Cluster, *args: str) -> tuple[int, dict[str, Any]]:
    res = c.cilia("connectivity", "test", "-o", "json", *args, timeout=240)
    assert res.stdout, res.stderr
    return res.returncode, json.loads(res.stdout)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in report["tests"]}


def test_every_scenario_passes_and_cleans_up(lab2: Cluster, tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(USER_POD)
    lab2.ok("apply", "-f", str(tmp_path / "mine.yaml"))
    code, report = run(lab2)
    failed = [t for t in report["tests"] if t["result"] != "pass"]
    assert code == 0 and not failed, json.dumps(failed, indent=1)
    tests = by_name(report)
    assert list(tests) == [s.name for s in SCENARIOS]
    for scenario in SCENARIOS:
        checks = tests[scenario.name]["checks"]
        assert len(checks) == len(scenario.checks) and all(c["ok"] for c in checks)
        for c in checks:   # every expected drop was seen in the agents' flow events
            if c["expect"] == DROP:
                assert c["outcome"] == "timeout" and c["detail"].startswith("dropped: "), c
    assert report["summary"] == {"tests": 16, "passed": 16, "failed": 0, "skipped": 0,
                                 "checks": report["summary"]["checks"], "failed_checks": 0,
                                 "failed_tests": []}
    # its namespace and policies are gone; the user's pod and the cluster DNS stay
    kubelet = Kubelet(lab2.lab)
    assert kubelet.list_pods(NAMESPACE) == []
    assert [p["metadata"]["name"] for p in kubelet.list_pods("default")] == ["mine"]
    assert len(kubelet.list_pods("kube-system")) == 1
    assert not [p for p in lab2.json("policy", "get") if p.get("namespace") == NAMESPACE]
    assert not [e for e in lab2.endpoints() if e["pod"].startswith(f"{NAMESPACE}/")]


def test_a_policy_denying_dns_fails_the_dns_test_only(lab2: Cluster, tmp_path: Path) -> None:
    (tmp_path / "deny-dns.yaml").write_text(DENY_DNS)
    lab2.ok("apply", "-f", str(tmp_path / "deny-dns.yaml"))
    try:
        res = lab2.cilia("connectivity", "test", "--test", "^pod-to-(pod|service)", "--test",
                         "dns-res", "--test", "!cross", timeout=240)
    finally:
        lab2.ok("delete", "-f", str(tmp_path / "deny-dns.yaml"))
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    # progress, one line per test, the failed checks, the report (cilium's layout)
    assert lines.index("[=] Test [pod-to-pod-same-node] [1/3]") < lines.index(
        "[=] Test [dns-resolution] [3/3]")
    assert any(line.startswith("✅ [pod-to-pod-same-node] 2 checks, ") for line in lines)
    assert any(line.startswith("✅ [pod-to-service] 2 checks, ") for line in lines)
    assert any(line.startswith("❌ [dns-resolution] 5/5 checks failed, ") for line in lines)
    failed = [line for line in lines if line.startswith("   ❌ client -> lookup ")]
    assert len(failed) == 4 and all(line.endswith("got timeout") for line in failed), failed
    assert lines[-2:] == ["❌ 1/3 tests failed (5/9 checks), 0 skipped", "   dns-resolution"]
    assert Kubelet(lab2.lab).list_pods(NAMESPACE) == []


def test_bad_pattern_is_refused_before_deploying(lab2: Cluster) -> None:
    bad = lab2.cilia("connectivity", "test", "--test", "(")
    assert bad.returncode != 0 and "invalid pattern" in bad.stderr
    assert Kubelet(lab2.lab).list_pods(NAMESPACE) == []
