"""The connectivity test in tunnel (VXLAN) routing mode: everything that crosses nodes —
pod to pod, services, NodePorts, DNS and the policies on echo servers of both nodes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster, temp_cluster

CROSS_NODE = ("cross-node", "pod-to-service", "nodeport", "dns", "echo-ingress",
              "client-egress-to-echo-deny")


@pytest.fixture(scope="module")
def tunnel_lab() -> Iterator[Cluster]:
    with temp_cluster(nodes=2, routing="tunnel", prefix="cilia-tun-") as c:
        yield c


def test_cross_node_scenarios_pass_in_tunnel_mode(tunnel_lab: Cluster) -> None:
    args = [a for p in CROSS_NODE for a in ("--test", p)]
    res = tunnel_lab.cilia("connectivity", "test", "-o", "json", *args, timeout=240)
    report = json.loads(res.stdout)
    results = {t["name"]: t["result"] for t in report["tests"]}
    assert res.returncode == 0 and set(results.values()) == {"pass"}, json.dumps(
        [t for t in report["tests"] if t["result"] != "pass"], indent=1)
    assert set(results) == {"pod-to-pod-cross-node", "pod-to-service", "pod-to-nodeport",
                            "external-to-nodeport", "dns-resolution", "echo-ingress",
                            "client-egress-to-echo-deny", "to-fqdns", "dns-only"}
    assert "Routing:                  tunnel" in tunnel_lab.ok("status")
