"""`cilia demo` (what `make demo` runs) works from nothing and leaves nothing behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from services.nodeagent.datapath.constants import PIN_ROOT
from tests.support.cluster import CILIA
from tests.support.procs import REPO


def _demo_netns() -> set[str]:
    root = Path("/run/netns")
    prefixes = ("cilia-demo-", "cilia-demok8s-")
    return {p.name for p in root.iterdir() if p.name.startswith(prefixes)} \
        if root.is_dir() else set()


def _procs_with(*needles: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if any(n in line for n in needles)]


def test_demo_runs_and_cleans_up() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cilia-demo-"))
    assert not _demo_netns()
    url = ""
    try:
        res = subprocess.run([CILIA, "demo"], cwd=REPO, capture_output=True, text=True,
                             timeout=300, env={**os.environ, "CILIA_STATE_DIR": str(tmp)})
        assert res.returncode == 0, res.stdout + res.stderr
        out = res.stdout
        url = out.split("    NATS ", 1)[1].split(";", 1)[0]
        matrix = out.split("verdict matrix with the policy")[1]
        assert "frontend" in matrix and "database:5432" in matrix
        lines = {line.split()[0] + " " + line.split()[2]: line.split()[-1]
                 for line in matrix.splitlines() if "(" in line and ":" in line
                 and line.split()[-1] in ("ALLOWED", "DENIED")}
        assert lines["frontend database:5432"] == "DENIED"
        assert lines["frontend backend:8080"] == "ALLOWED"
        assert lines["backend database:5432"] == "ALLOWED"
        assert "172.31.0.11:30080 -> OK" in out and "172.31.0.12:30080 -> OK" in out
        assert "DROPPED (policy denied" in out
        # fail closed: the forged labels are dropped and the pod denied; the forged policy
        # message is refused by the bus; the kernel counts the drops by reason
        assert "intruder/spoof -> backend:8080 DENIED" in out
        assert "io.kubernetes.pod.namespace=production  (namespace)" in out
        assert "refused: " in out and "publish to cilia.policy.rules." in out
        assert re.search(r"policy denied\s+INGRESS\s+[1-9]", out), out
        # Exercise 2: only api.example.com, through the node's DNS proxy
        assert "curl http://api.example.com/  ->  external 200" in out
        assert "curl http://www.example.com/  ->  dropped (curl exit 28)" in out
        assert re.search(r"default/external-client\s+api\.example\.com\s+60", out), out
        # Exercise 1 again, from a Kubernetes API server through the watcher
        k8s = out.split("verdict matrix (real connections), every object from the watcher")[1]
        k8s_lines = {line.split()[0] + " " + line.split()[2]: line.split()[-1]
                     for line in k8s.splitlines() if "(" in line and ":" in line
                     and line.split()[-1] in ("ALLOWED", "DENIED")}
        assert k8s_lines["frontend database:5432"] == "DENIED"
        assert k8s_lines["frontend backend:8080"] == "ALLOWED"
        assert out.count("demok8s-node1  10.244.1.") == 3 and "Running" in out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert not _demo_netns()
    assert not list(PIN_ROOT.glob("demo-node*")) and not list(PIN_ROOT.glob("demok8s-node*"))
    assert url.startswith("tls://127.0.0.1:")
    assert not _procs_with(url, str(tmp), "tests.support.k8sapi")
