"""``cilia status``: what it judges OK (pure), the screen and ``--wait`` on a live lab."""

from __future__ import annotations

import copy
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from services.cli.status import assess, render
from tests.support.cluster import CILIA, Cluster
from tests.support.procs import REPO


def replica(service: str, state: str = "ok", **stats: Any) -> dict[str, Any]:
    return {"service": service, "replica": f"{service}-0", "pid": 1, "state": state,
            "uptime_s": 1.0, "stats": stats}


def agent(node: str, realized: int, error: str = "") -> dict[str, Any]:
    return {**replica("nodeagent", node=node, endpoints=2, realized=realized,
                      policy_revisions={"300": 7}, error=error), "node": node}


HEALTHY: dict[str, Any] = {
    "services": [replica("identity", identities=5), replica("policy", policies=2, revision=7),
                 replica("lb", services=3, backends=4), agent("n1", 40), agent("n2", 40)],
    "nodes": ["n1", "n2"], "agent_inputs_seq": 40, "kube_dns": False, "pods": 4,
    "lb_frontends": {"n1": 3, "n2": None}, "lab": {"name": "x", "routing": "tunnel"}}


def variant(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(HEALTHY)
    data.update(changes)
    return data


def test_healthy_cluster_is_ok_with_counts() -> None:
    h = assess(HEALTHY)
    assert h["ok"] and h["problems"] == []
    assert h["counts"] == {"pods": 4, "endpoints": 4, "identities": 5, "policies": 2,
                           "services": 3, "backends": 4}
    assert [(a["node"], a["lag"], a["policy_revision"]) for a in h["agents"]] == [
        ("n1", 0, 7), ("n2", 0, 7)]
    assert h["kube_proxy_replacement"] == "True [ClusterIP, NodePort, 3 frontends in 1 node maps]"
    on = {"enabled": True, "devices": ["eth0"], "mode": "SNAT"}
    both = assess(variant(kpr={"n1": on, "n2": on}))
    assert both["ok"] and both["kube_proxy_replacement"].startswith(
        "True [eth0 (Direct Routing), SNAT")
    half = assess(variant(kpr={"n1": on, "n2": {**on, "enabled": False, "devices": []}}))
    assert half["problems"] == ["KubeProxyReplacement: no NodePort programs on n2"]
    assert h["routing"] == "tunnel" and h["policy_revision"] == 7


def test_lagging_agent_missing_agent_and_missing_service_are_problems() -> None:
    lag = assess(variant(agent_inputs_seq=45))
    assert not lag["ok"] and lag["problems"] == ["agent n1: 5 events behind",
                                                 "agent n2: 5 events behind"]
    ghost = assess(variant(nodes=["n1", "n2", "n3"]))
    assert "agent n3: no heartbeat" in ghost["problems"]
    assert "nodeagent: 2/3 replicas ready" in ghost["problems"]
    no_lb = assess(variant(services=[r for r in HEALTHY["services"] if r["service"] != "lb"]))
    assert "lb: 0/1 replicas ready" in no_lb["problems"]
    assert no_lb["kube_proxy_replacement"].startswith("False")
    dns = assess(variant(kube_dns=True))
    assert dns["problems"] == ["dns: 0/1 replicas ready"]


def test_agent_error_and_starting_service() -> None:
    broken = variant(services=[*HEALTHY["services"][:4], agent("n2", 40, "datapath down")])
    assert assess(broken)["problems"] == ["agent n2: datapath down"]
    starting = variant(services=[replica("identity", "starting"), *HEALTHY["services"][1:]])
    assert assess(starting)["problems"] == ["identity: 0/1 replicas ready"]


def test_rejected_messages_are_reported_per_service_without_making_it_unhealthy() -> None:
    from services.cli.status import render
    data = variant(services=[replica("identity", identities=5, rejected=3, failed=0),
                             replica("policy", policies=2, revision=7, rejected=10, failed=1),
                             *HEALTHY["services"][2:]])
    h = assess(data)
    assert h["ok"]
    assert {n: (s["rejected"], s["failed"]) for n, s in h["services"].items()} == {
        "identity": (3, 0), "policy": (10, 1), "lb": (0, 0), "nodeagent": (0, 0)}
    screen = render({**data, "nats": {"url": "u", "server": "2", "streams": 1, "consumers": 1},
                     "streams": []}, h)
    assert "REJECTED" in screen and "FAILED" in screen
    line = next(x for x in screen.splitlines() if x.startswith("policy "))
    assert line.split()[-2:] == ["10", "1"]


GHOST_NODE = """
apiVersion: v1
kind: Node
metadata: {name: ghost}
status:
  addresses: [{type: InternalIP, address: 172.31.0.250}]
"""


def test_status_screen_and_wait_on_a_live_lab(lab2: Cluster, tmp_path: Path) -> None:
    res = lab2.cilia("status", "--wait", "--wait-duration", "30")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "Cilia:                OK" in out
    assert "KubeProxyReplacement:     True [eth0 (Direct Routing), SNAT" in out
    assert "Routing:                  native" in out
    pods = lab2.json("status")["health"]["counts"]["pods"]
    assert f"Cluster Pods:             {pods}/{pods} managed by cilia" in out
    for node in (f"{lab2.lab}-node1", f"{lab2.lab}-node2"):
        assert any(line.startswith(node) and " OK " in line for line in out.splitlines())
    data = lab2.json("status")
    assert data["health"]["ok"] and {s["name"] for s in data["streams"]} >= {"CILIA"}
    assert data["health"]["services"]["nodeagent"] == {"desired": 2, "replicas": 2,
                                                      "ready": 2, "health": "OK",
                                                      "rejected": 0, "failed": 0}
    # --wait blocks while a node has no agent, and returns once it is gone
    (tmp_path / "ghost.yaml").write_text(GHOST_NODE)
    lab2.ok("apply", "-f", str(tmp_path / "ghost.yaml"))
    waiting = subprocess.Popen([CILIA, "status", "--wait", "--wait-duration", "30", "-o",
                                "json"], cwd=REPO, env=lab2.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)
        assert waiting.poll() is None, "status --wait returned while an agent was missing"
        not_ok = lab2.cilia("status", "--wait", "--wait-duration", "1")
        assert not_ok.returncode != 0 and "agent ghost: no heartbeat" in not_ok.stderr
        lab2.ok("delete", "-f", str(tmp_path / "ghost.yaml"))
        out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 0, err
    assert json.loads(out)["health"]["ok"]


def test_status_without_a_bus_fails_clearly(lab2: Cluster) -> None:
    env = {**lab2.env, "CILIA_NATS_URL": "nats://127.0.0.1:1"}
    res = subprocess.run([CILIA, "status"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode != 0 and "Error" in res.stderr


def test_agent_errors_per_part_and_drift_repairs_per_map() -> None:
    broken = agent("n2", 40, "lb: lb map update failed: map 'lb_backends': full")
    broken["stats"].update(errors={"lb": "lb map update failed: map 'lb_backends': full"},
                           drift={"policy": 2, "ipcache": 1, "endpoints": 0})
    data = variant(services=[*HEALTHY["services"][:4], broken],
                   nats={"url": "nats://x", "server": "2.10.0", "streams": 1, "consumers": 2},
                   streams=[])
    health = assess(data)
    assert health["problems"] == ["agent n2: lb: lb map update failed: map 'lb_backends': full"]
    n1, n2 = health["agents"]
    assert (n1["errors"], n1["drift"]) == ({}, {})
    assert n2["health"] == "error" and n2["drift"] == {"policy": 2, "ipcache": 1, "endpoints": 0}
    lines = render(data, health).splitlines()
    head = next(line for line in lines if line.startswith("NODE"))
    assert "DRIFT REPAIRED" in head and "ERRORS" in head
    row1 = next(line for line in lines if line.startswith("n1 "))
    row2 = next(line for line in lines if line.startswith("n2 "))
    assert row1.split()[-1] == "0"      # nothing repaired, no error
    assert "ipcache=1 policy=2" in row2 and "endpoints" not in row2
    assert row2.endswith("lb: lb map update failed: map 'lb_backends': full")
