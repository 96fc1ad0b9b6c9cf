"""The connectivity test on a one-node lab (cross-node skipped, NodePorts on the one node),
and without the lb service: the tests that need Services fail, each saying why."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster import Cluster, temp_cluster
from tests.support.procs import stop_process


@pytest.fixture(scope="module")
def lab1() -> Iterator[Cluster]:
    with temp_cluster(nodes=1, prefix="cilia-one-") as c:
        yield c


def run(c: Cluster, *patterns: str) -> tuple[int, dict[str, dict[str, Any]]]:
    args = [a for p in patterns for a in ("--test", p)]
    res = c.cilia("connectivity", "test", "-o", "json", *args, timeout=240)
    assert res.stdout, res.stderr
    return res.returncode, {t["name"]: t for t in json.loads(res.stdout)["tests"]}


def test_one_node_skips_cross_node_and_uses_its_node_ports(lab1: Cluster) -> None:
    code, tests = run(lab1, "nodeport", "pod-to-pod")
    assert code == 0, tests
    assert tests["pod-to-pod-cross-node"]["result"] == "skipped"
    assert tests["pod-to-pod-cross-node"]["skipped"] == "needs 2 nodes"
    for name in ("pod-to-nodeport", "external-to-nodeport"):
        assert tests[name]["result"] == "pass"
        assert [c["target"] for c in tests[name]["checks"]] == [
            "nodeport:0:echo-other" if name == "pod-to-nodeport" else "nodeport:0:echo-same"]


def test_without_the_lb_service_service_tests_fail_clearly(lab1: Cluster) -> None:
    lb = next(p for p in lab1.procs if "services.lb" in " ".join(map(str, p.args)))
    stop_process(lb)
    code, tests = run(lab1, "pod-to-service", "pod-to-pod-same")
    assert code == 1
    assert tests["pod-to-pod-same-node"]["result"] == "pass"
    svc = tests["pod-to-service"]
    assert svc["result"] == "fail"
    assert {c["outcome"] for c in svc["checks"]} == {"no address for echo-same",
                                                     "no address for echo-other"}
