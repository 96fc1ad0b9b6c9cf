"""Services through the agent: ClusterIP translation in the kernel, policy after translation."""

from __future__ import annotations

from tests.support.cluster import Cluster
from tests.support.procs import REPO

EXAMPLES = REPO / "examples" / "three-tier"
NS = "production"


def test_clusterip_and_policy_through_the_service(lab: Cluster) -> None:
    lab.ok("apply", "-f", str(EXAMPLES / "00-namespace.yaml"), "-f",
           str(EXAMPLES / "deployments.yaml"), "-f", str(EXAMPLES / "services.yaml"))
    lab.wait("endpoints", lambda: len([e for e in lab.endpoints()
                                       if e["identity"] >= 256]) == 3)
    lab.settle()
    vips = {s["service"]: s["frontend"].split(":")[0] for s in lab.json("service", "list")}
    backend_vip, db_vip = vips[f"{NS}/backend"], vips[f"{NS}/database"]
    # targetPort by the backend pod's named containerPort: 80 -> http (8080).
    body = lab.ok("exec", "deploy/frontend", "-n", NS, "--", "curl", "-s", "-m", "2",
                  f"http://{backend_vip}/")
    assert body.startswith("backend-")          # the reply came back through reverse NAT
    assert lab.connect("deploy/frontend", NS, db_vip, 5432) == "OK"
    lab.ok("apply", "-f", str(EXAMPLES / "policy.yaml"))
    lab.settle()
    # Policy sees the backend's identity after translation: frontend -> database VIP denied.
    assert lab.connect("deploy/frontend", NS, db_vip, 5432) == "timeout"
    assert lab.connect("deploy/backend", NS, db_vip, 5432) == "OK"
    flows = lab.json("observe", "--verdict", "DROPPED", "--last", "20")
    ips = lab.pod_ips(NS)
    assert any(f["dst_ip"] == ips["database"] and f["src_ip"] == ips["frontend"]
               for f in flows), flows
    node = lab.endpoints()[0]["node"]
    rows = {r["frontend"]: r for r in lab.json("bpf", "lb", "list", "--node", node)}
    # The kernel's service map: each VIP's Maglev table points at its one backend.
    db = rows[f"{db_vip}:5432/TCP"]
    assert [b["address"] for b in db["backends"]] == [f"{ips['database']}:5432"]
    assert db["backends"][0]["slots"] == db["table_size"]
    assert [b["address"] for b in rows[f"{backend_vip}:80/TCP"]["backends"]] == \
        [f"{ips['backend']}:8080"]
