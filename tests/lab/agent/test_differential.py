"""Differential: the kernel's verdict on real connections equals `cilia policy trace`'s."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.policytypes import PROTO_TCP
from services.common.roles import CLI
from services.policy import trace
from tests.support.cluster import Cluster

NS = "diff"
PODS = ("p0", "p1", "p2")
PORTS = (80, 8080)
APPS = ("a", "b")
ROLES = ("x", "y")
PROBE = """
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(t):
    try:
        socket.create_connection((t[0], t[1]), timeout=0.6).close()
        return True
    except OSError:
        return False
targets = json.loads(sys.argv[1])
with ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps(list(pool.map(probe, targets))))
"""

selectors = st.one_of(
    st.just({}),
    st.sampled_from(APPS).map(lambda v: {"matchLabels": {"app": v}}),
    st.sampled_from(ROLES).map(lambda v: {"matchLabels": {"role": v}}))
sections = st.sampled_from(["ingress", "egress", "ingressDeny", "egressDeny"])
ports = st.one_of(st.none(), st.sampled_from(PORTS))


@st.composite
def policies(draw: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(1, 2))):
        section = draw(sections)
        peer_key = "fromEndpoints" if section.startswith("ingress") else "toEndpoints"
        rule: dict[str, Any] = {peer_key: [draw(selectors)]}
        port = draw(ports)
        if port is not None:
            rule["toPorts"] = [{"ports": [{"port": str(port), "protocol": "TCP"}]}]
        out.append({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                    "metadata": {"name": f"diff-{i}", "namespace": NS},
                    "spec": {"endpointSelector": draw(selectors), section: [rule]}})
    return out


def _pods() -> list[dict[str, Any]]:
    rng = random.Random(7)
    return [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": name, "namespace": NS,
                          "labels": {"app": rng.choice(APPS), "role": rng.choice(ROLES)}},
             "spec": {"containers": [{"name": "c", "image": "echo", "ports": [
                 {"containerPort": p} for p in PORTS]}]}} for name in PODS]


async def _expected(lab: Cluster, ids: dict[str, int], samples: list[tuple[str, str, int]]
                    ) -> list[bool]:
    from services.cli.policy import load_repository

    bus = await lab.bus(CLI)
    try:
        repo, named = await load_repository(bus)
    finally:
        await bus.close()
    return [trace(ids[s], ids[d], port, PROTO_TCP, repo, named_ports=named).verdict.name
            == "ALLOW" for s, d, port in samples]


def test_kernel_verdicts_equal_trace(lab: Cluster, tmp_path: Path) -> None:
    pods = tmp_path / "pods.yaml"
    pods.write_text(yaml.safe_dump_all([{"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": NS}}, *_pods()]))
    lab.ok("apply", "-f", str(pods))
    lab.wait("pods with identities", lambda: len(
        [e for e in lab.endpoints() if e["pod"].startswith(f"{NS}/") and
         e["identity"] >= 256]) == len(PODS))
    eps = {e["pod"].split("/")[1]: e for e in lab.endpoints() if e["pod"].startswith(f"{NS}/")}
    ids = {name: ep["identity"] for name, ep in eps.items()}
    all_samples = [(s, d, p) for s in PODS for d in PODS if s != d for p in PORTS]
    policy_file = tmp_path / "policy.yaml"
    mismatches: list[Any] = []

    @settings(max_examples=6, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(docs=policies(), picks=st.lists(st.sampled_from(all_samples), min_size=4,
                                           max_size=6, unique=True))
    def check(docs: list[dict[str, Any]], picks: list[tuple[str, str, int]]) -> None:
        if policy_file.exists():
            lab.cilia("delete", "-f", str(policy_file))
        policy_file.write_text(yaml.safe_dump_all(docs))
        lab.ok("apply", "-f", str(policy_file))
        lab.settle()
        expected = asyncio.run(_expected(lab, ids, picks))
        observed: list[bool] = []
        by_src: dict[str, list[int]] = {}
        for i, (s, _, _) in enumerate(picks):
            by_src.setdefault(s, []).append(i)
        results: dict[int, bool] = {}
        for src, idx in by_src.items():
            targets = [[eps[picks[i][1]]["ipv4"], picks[i][2]] for i in idx]
            out = lab.ok("exec", src, "-n", NS, "--", sys.executable, "-c", PROBE,
                         json.dumps(targets))
            results.update(zip(idx, json.loads(out), strict=True))
        observed = [results[i] for i in range(len(picks))]
        if observed != expected:
            mismatches.append((docs, picks, expected, observed))
        assert observed == expected, (docs, picks, expected, observed)

    check()
    assert not mismatches
