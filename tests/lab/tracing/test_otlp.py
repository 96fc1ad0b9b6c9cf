"""One trace from `cilia policy import` to the map patch of every agent, over real OTLP/HTTP."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from tests.support.cluster import cluster
from tests.support.otlp import Receiver
from tests.support.procs import REPO

EXAMPLES = REPO / "examples" / "three-tier"


def test_policy_import_is_one_trace_down_to_each_agents_map_patch(receiver: Receiver) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
           "OTEL_BSP_SCHEDULE_DELAY": "100"}
    tmp = Path(tempfile.mkdtemp(prefix="cilia-trace-"))
    try:
        with cluster(tmp, nodes=2, extra_env=env) as lab:
            lab.ok("apply", "-f", str(EXAMPLES / "00-namespace.yaml"), "-f",
                   str(EXAMPLES / "deployments.yaml"))
            lab.wait("pods on both nodes", lambda: len(
                {e["node"] for e in lab.endpoints() if e["identity"] >= 256}) == 2)
            lab.settle()
            lab.ok("policy", "import", "-f", str(EXAMPLES / "policy.yaml"))
            lab.settle()

            def complete() -> bool:
                with receiver.lock:
                    roots = [s for s in receiver.spans if s["name"] == "cilia apply"
                             and s["service"] == "cilia-cli"]
                    if not roots:
                        return False
                    trace = roots[-1]["trace"]
                    nodes = {s["attrs"].get("cilia.node") for s in receiver.spans
                             if s["trace"] == trace and s["name"] == "map patch policy"}
                    return len(nodes) == 2
            lab.wait("spans of the import exported", complete, timeout=30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with receiver.lock:
        spans = list(receiver.spans)
    root = [s for s in spans if s["name"] == "cilia apply"][-1]
    trace = [s for s in spans if s["trace"] == root["trace"]]
    by_id = {s["id"]: s for s in trace}

    def chain(span: dict[str, Any]) -> list[str]:
        """Services from the root down to ``span``, following parent links."""
        out = []
        while span is not None:
            out.append(f"{span['service']}:{span['name']}")
            span = by_id.get(span["parent"])  # type: ignore[assignment]
        return out[::-1]

    patches = [s for s in trace if s["name"] == "map patch policy"]
    assert {p["attrs"]["cilia.node"] for p in patches} == {f"{lab.lab}-node1",
                                                          f"{lab.lab}-node2"}
    for patch in patches:
        path = chain(patch)
        assert path[0] == "cilia-cli:cilia apply"                 # reaches the root
        assert any(p.startswith("policy:policy object.upsert") for p in path)
        assert any(p.startswith("nodeagent:agent ") for p in path)
        assert path[-1] == "nodeagent:map patch policy"
        assert patch["attrs"]["cilia.added"] >= 1
    assert {s["service"] for s in trace} >= {"cilia-cli", "policy", "nodeagent"}
    # A service reading back its own outputs is bookkeeping, not a step of the change.
    assert not [s["name"] for s in spans if s["name"].split()[0] in
                ("policy-outputs", "identity-outputs", "lb-outputs")]

    # Pod creation likewise: the apply of the deployments reaches identity allocation, the
    # ipcache and the ipcache patch of every agent, in one trace.
    first = next(s for s in spans if s["name"] == "cilia apply")
    pods = [s for s in spans if s["trace"] == first["trace"]]
    by_id = {s["id"]: s for s in pods}
    ipcache_patches = [s for s in pods if s["name"] == "map patch ipcache"]
    assert {p["attrs"]["cilia.node"] for p in ipcache_patches} == {f"{lab.lab}-node1",
                                                                  f"{lab.lab}-node2"}
    for patch in ipcache_patches:
        path = chain(patch)
        assert path[0] == "cilia-cli:cilia apply"
        # The pod's address reaches the identity service from its agent's endpoint report,
        # published while CNI ADD waits (the apply's trace continues through the plugin).
        assert any(p == "nodeagent:cni ADD" for p in path), path
        assert any(p.startswith("identity:identity endpoint.upsert") for p in path), path
