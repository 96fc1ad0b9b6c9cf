"""The seed's Exercise 1 with real packets: policy on the bus passes and drops traffic."""

from __future__ import annotations

from tests.support.cluster import Cluster
from tests.support.procs import REPO

EXAMPLES = REPO / "examples" / "three-tier"
NS = "production"


def _enforced(lab: Cluster, app: str) -> bool:
    for ep in lab.endpoints():
        if f"k8s:app={app}" in ep["labels"]:
            return bool(ep["ingress_enforcement"])
    return False


def test_three_tier_policy_with_real_packets(lab: Cluster) -> None:
    lab.ok("apply", "-f", str(EXAMPLES / "00-namespace.yaml"), "-f",
           str(EXAMPLES / "deployments.yaml"))
    lab.wait("three endpoints with identities", lambda: len(
        [e for e in lab.endpoints() if e["identity"] >= 256]) == 3)
    ips = lab.pod_ips(NS)
    # No policy yet: everything is open.
    assert lab.connect("deploy/frontend", NS, ips["database"], 5432) == "OK"

    lab.ok("apply", "-f", str(EXAMPLES / "policy.yaml"))
    lab.wait("database ingress enforced", lambda: _enforced(lab, "database"))
    assert lab.connect("deploy/frontend", NS, ips["backend"], 8080) == "OK"
    assert lab.connect("deploy/backend", NS, ips["database"], 5432) == "OK"
    assert lab.connect("deploy/frontend", NS, ips["database"], 5432) == "timeout"
    # A reply of an allowed connection passes: curl gets the workload's answer.
    body = lab.ok("exec", "deploy/frontend", "-n", NS, "--", "curl", "-s", "-m", "2",
                  f"http://{ips['backend']}:8080/")
    assert body.startswith("backend-")

    flows = lab.json("observe", "--verdict", "DROPPED", "--last", "50")
    ident = {e["ipv4"]: e["identity"] for e in lab.endpoints()}
    hit = [f for f in flows if f["src_ip"] == ips["frontend"] and f["dst_ip"] == ips["database"]
           and f["dst_port"] == 5432]
    assert hit, flows
    assert hit[-1]["src_identity"] == ident[ips["frontend"]]
    assert hit[-1]["dst_identity"] == ident[ips["database"]]
    assert "policy denied" in hit[-1]["reason_name"]
    table = lab.ok("observe", "--verdict", "DROPPED")
    assert f"(ID:{ident[ips['frontend']]}) -> {NS}/database-" in table

    # Removing the policy restores frontend -> database without restarting anything...
    lab.ok("delete", "-f", str(EXAMPLES / "policy.yaml"))
    lab.wait("database open again", lambda: not _enforced(lab, "database"))
    assert lab.connect("deploy/frontend", NS, ips["database"], 5432) == "OK"
    # ...and re-adding it blocks new connections again.
    lab.ok("apply", "-f", str(EXAMPLES / "policy.yaml"))
    lab.wait("database ingress enforced", lambda: _enforced(lab, "database"))
    assert lab.connect("deploy/frontend", NS, ips["database"], 5432) == "timeout"
    assert lab.connect("deploy/backend", NS, ips["database"], 5432) == "OK"


def test_kernel_maps_are_what_the_cli_reads(lab: Cluster) -> None:
    ips = lab.pod_ips(NS)
    ipcache = {r["prefix"]: r["identity"] for r in lab.json("bpf", "ipcache", "list")}
    for ep in lab.endpoints():
        assert ipcache[f"{ep['ipv4']}/32"] == ep["identity"]
    rows = lab.json("bpf", "policy", "get", ips["database"])
    allowed = [r for r in rows if r["verdict"] == "Allow" and r["direction"] == "ingress"]
    assert [(r["port"], r["proto"]) for r in allowed] == [("5432", "TCP")]
    assert any(r["verdict"] == "Deny" and "k8s:app=frontend" in r["labels"] for r in rows)
