"""Restarting an agent never disrupts the datapath, and it catches up from the bus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.cluster import CILIA, Cluster
from tests.support.procs import REPO

EXAMPLES = REPO / "examples" / "three-tier"
NS = "production"
PROBE = """
import json, socket, sys, time
host, port, seconds, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
timeout = float(sys.argv[5])
ok = failed = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    start = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        # A dropped SYN is retransmitted after 1 s: a connection that took that long was
        # dropped once. Shorter delays are a loaded machine, not the datapath.
        if time.monotonic() - start < 0.9:
            ok += 1
        else:
            failed += 1
    except OSError:
        failed += 1
    time.sleep(gap)
print(json.dumps({"ok": ok, "failed": failed}))
"""
DENY_FRONTEND_TO_BACKEND = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: frontend-no-backend
  namespace: production
spec:
  endpointSelector:
    matchLabels:
      app: frontend
  egressDeny:
    - toEndpoints:
        - matchLabels:
            app: backend
"""


def _probe(lab: Cluster, src: str, host: str, port: int, seconds: float,
           gap: float, timeout: float) -> subprocess.Popen[str]:
    return subprocess.Popen([CILIA, "exec", src, "-n", NS, "--", sys.executable, "-c", PROBE,
                             host, str(port), str(seconds), str(gap), str(timeout)],
                            env=lab.env, stdout=subprocess.PIPE, text=True)


def _agent_pid(lab: Cluster) -> tuple[str, int]:
    state = json.loads((lab.state_dir / "lab" / lab.lab / "lab.json").read_text())
    node, ref = next(iter(state["agents"].items()))
    return node, int(ref["pid"])


def _maps(lab: Cluster, ips: dict[str, str]) -> dict[str, list[dict[str, object]]]:
    return {"ipcache": lab.json("bpf", "ipcache", "list"),
            "endpoints": [{k: v for k, v in e.items() if k != "labels"}
                          for e in lab.endpoints()],
            **{f"policy-{app}": lab.json("bpf", "policy", "get", ip)
               for app, ip in ips.items()}}



def _agent_stats(lab: Cluster) -> dict[str, object]:
    status = lab.json("status")
    return next(s["stats"] for s in status["services"] if s["service"] == "nodeagent")


def test_agent_restart_keeps_traffic_and_policy(lab: Cluster, tmp_path: Path) -> None:
    lab.ok("apply", "-f", str(EXAMPLES / "00-namespace.yaml"), "-f",
           str(EXAMPLES / "deployments.yaml"), "-f", str(EXAMPLES / "policy.yaml"))
    lab.wait("three enforced-or-open endpoints", lambda: sum(
        e["ingress_enforcement"] for e in lab.endpoints()) == 2)
    ips = lab.pod_ips(NS)
    assert lab.connect("deploy/frontend", NS, ips["backend"], 8080) == "OK"
    before = _maps(lab, ips)

    allowed = _probe(lab, "deploy/backend", ips["database"], 5432, 6.0, 0.05, timeout=3.0)
    denied = _probe(lab, "deploy/frontend", ips["database"], 5432, 6.0, 0.1, timeout=0.5)
    time.sleep(1.0)
    node, pid = _agent_pid(lab)
    os.kill(pid, signal.SIGKILL)
    # A policy change while the agent is down...
    extra = tmp_path / "deny.yaml"
    extra.write_text(DENY_FRONTEND_TO_BACKEND)
    lab.ok("apply", "-f", str(extra))
    time.sleep(2.0)
    restart = subprocess.run(
        [sys.executable, "-c", "import sys; from services.lab import start_agent; "
         "start_agent(sys.argv[1], sys.argv[2], 'services.nodeagent')", lab.lab, node],
        env=lab.env, capture_output=True, text=True, timeout=60)
    assert restart.returncode == 0, restart.stderr
    a = json.loads(allowed.communicate(timeout=60)[0])
    d = json.loads(denied.communicate(timeout=60)[0])
    assert a["failed"] == 0 and a["ok"] > 50, a      # no allowed request failed
    assert d["ok"] == 0 and d["failed"] > 5, d       # no denied probe passed

    # ...is realized within seconds of the agent's return.
    lab.wait("frontend -> backend denied",
             lambda: lab.connect("deploy/frontend", NS, ips["backend"], 8080,
                                 timeout=0.5) == "timeout", timeout=10)
    after = _maps(lab, ips)
    # Only the frontend changed (its egress is now enforced, with the deny); nothing else was
    # touched, nothing flushed and refilled.
    for name in ("ipcache", "policy-backend", "policy-database"):
        assert after[name] == before[name], name
    fe = [e for e in after["endpoints"] if e["ipv4"] == ips["frontend"]]
    assert fe[0]["egress_enforcement"] is True
    assert [e for e in after["endpoints"] if e["ipv4"] != ips["frontend"]] == \
        [e for e in before["endpoints"] if e["ipv4"] != ips["frontend"]]
    # The restarted agent wrote exactly the ideal diff: one endpoint entry updated, and the
    # frontend's policy entries that changed (a changed entry counts as removed + added).
    old = {json.dumps(e, sort_keys=True) for e in before["policy-frontend"]}
    new = {json.dumps(e, sort_keys=True) for e in after["policy-frontend"]}
    stats = _agent_stats(lab)
    assert stats["writes"] == 1 + len(old ^ new), (stats, old, new)
    # It resumed from its saved position instead of replaying the whole history.
    assert int(stats["resumed_from"]) > 0, stats  # type: ignore[call-overload]
