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
    assert report["summary"] == {"tests": 14, "passed": 14, "failed": 0, "skipped": 0,
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
        code, report = run(lab2, "--test", "^pod-to-(pod|service)", "--test", "dns",
                           "--test", "!cross")
    finally:
        lab2.ok("delete", "-f", str(tmp_path / "deny-dns.yaml"))
    tests = by_name(report)
    assert code == 1
    assert set(tests) == {"pod-to-pod-same-node", "pod-to-service", "dns-resolution"}
    assert tests["pod-to-pod-same-node"]["result"] == "pass"
    assert tests["pod-to-service"]["result"] == "pass"
    dns = tests["dns-resolution"]
    assert dns["result"] == "fail"
    assert all(not c["ok"] and c["outcome"] in ("timeout", "error: timeout")
               for c in dns["checks"] if c["kind"] == "lookup"), dns["checks"]
    assert report["summary"]["failed_tests"] == ["dns-resolution"]


def test_table_output_progress_and_report(lab2: Cluster) -> None:
    res = lab2.cilia("connectivity", "test", "--test", "pod-to-external", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert "[=] Test [pod-to-external] [1/1]" in lines
    assert any(line.startswith("✅ [pod-to-external] 1 check, ") for line in lines)
    assert lines[-1] == "✅ All 1 tests (1 checks) successful, 0 tests skipped."
    bad = lab2.cilia("connectivity", "test", "--test", "(")
    assert bad.returncode != 0 and "invalid pattern" in bad.stderr
