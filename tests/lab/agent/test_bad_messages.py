"""Ten thousand bad messages change nothing (issue 10, "every message validated whole").

On a running two-node cluster, hypothesis draws 10,000 messages that no consumer may apply
(garbage bytes, foreign envelopes, valid envelopes with a bad value inside, events on another
object's subject...) on the subjects every consumer reads: the real objects' subjects and
made-up ones, for the identity, policy and lb services and the agents. Afterwards every
process is up and ready, the kernel maps of both nodes are exactly as before, the bus still
shows every object, each service counts what it rejected, and a valid change (a policy, a new
pod) reaches the kernel maps of every node within the usual time. Services and an agent
restarted on top of that history replay it, skip the bad events again and become ready.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from services.cli.controlplane import SERVICES
from services.common.bus import Delivery
from services.common.contract import HISTORY_STREAM
from services.common.roles import ADMIN, CLI
from services.nodeagent.datapath import open_maps
from services.nodeagent.datapath.maps.policy import decode_policy
from tests.support.badmessages import Sample, generate, stored
from tests.support.cluster import Cluster, temp_cluster
from tests.support.procs import REPO, stop_process
from tests.support.threetier import backend_allows_frontend

EXAMPLES = REPO / "examples" / "three-tier"
NS = "production"
BAD_MESSAGES = 10_000
PUBLISH_WINDOW = 512        # publishes in flight at once
CHANGE_S = 20.0             # the usual time for a change to reach the maps (Cluster.settle)
READ_FILTERS = ["cilia.src.>", "cilia.identity.>", "cilia.ipcache.>", "cilia.policy.>",
                "cilia.lb.>", "cilia.agent.>"]
POLICY = backend_allows_frontend("backend-after-the-flood", 7777)
NEW_POD = f"""\
apiVersion: v1
kind: Pod
metadata:
  name: late
  namespace: {NS}
  labels:
    app: late
spec:
  containers:
    - name: c
      image: cilia/echo
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Cluster]:
    with temp_cluster(nodes=2, prefix="cilia-bad-") as c:
        c.ok("apply", "-f", str(EXAMPLES / "00-namespace.yaml"), "-f",
             str(EXAMPLES / "deployments.yaml"), "-f", str(EXAMPLES / "services.yaml"),
             "-f", str(EXAMPLES / "policy.yaml"))
        c.wait("endpoints", lambda: len([e for e in c.endpoints()
                                         if e["identity"] >= 256]) == 3, 60)
        c.settle()
        yield c


async def _read(lab: Cluster) -> dict[str, Delivery]:
    bus = await lab.bus(CLI)
    try:
        return await bus.snapshot(READ_FILTERS)
    finally:
        await bus.close()


async def _flood(lab: Cluster, messages: list[tuple[str, str, bytes]]) -> None:
    """Publish as the admin role: the one role that may publish on every subject."""
    bus = await lab.bus(ADMIN)
    try:
        for i in range(0, len(messages), PUBLISH_WINDOW):
            acks = [await bus.js.publish_async(subject, payload, stream=HISTORY_STREAM)
                    for subject, _, payload in messages[i:i + PUBLISH_WINDOW]]
            await asyncio.gather(*acks)
    finally:
        await bus.close()


def _meaning(snapshot: dict[str, Delivery]) -> dict[str, Any]:
    """What the bus says of every object; an agent's realized report keeps its policy
    revisions but not its bus revision, which rightly moves past the skipped messages."""
    out: dict[str, Any] = {}
    for subject, d in snapshot.items():
        data = d.event.data
        if d.event.type == "agent.realized":
            data = {k: v for k, v in data.items() if k != "revision"}
        out[subject] = (d.event.type, data)
    return out


def _nodes(lab: Cluster) -> list[str]:
    return sorted({e["node"] for e in lab.endpoints()})


def _kernel(nodes: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for node in nodes:
        with open_maps(node) as maps:
            out[node] = {"ipcache": maps.ipcache.entries(), "endpoints": maps.endpoints.entries(),
                         "policy": decode_policy(maps.policy.reconciler.backend.read_all())}
    return out


def _ready(lab: Cluster) -> dict[str, Any]:
    status = lab.json("status")
    assert status["health"]["ok"], status["health"]["problems"]
    return status


def _stats(status: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in status["services"]:
        out.setdefault(r["service"], []).append(r["stats"])
    return out


def _wait(lab: Cluster, what: str, check: Any, start: float) -> float:
    lab.wait(what, check, CHANGE_S)
    return time.monotonic() - start


def test_ten_thousand_bad_messages_change_nothing(lab: Cluster) -> None:
    nodes = _nodes(lab)
    assert len(nodes) == 2
    before_bus = asyncio.run(_read(lab))
    before = _kernel(nodes)
    bases = [*(Sample(s, d.event.type, d.event.data) for s, d in sorted(before_bus.items())),
             *stored()]
    started = time.monotonic()
    messages = generate(bases, BAD_MESSAGES)
    drawn = time.monotonic() - started
    assert len(messages) == BAD_MESSAGES
    kinds = Counter(kind for _, kind, _ in messages)
    assert set(kinds) >= {"mutated", "object", "garbage", "alien", "version", "missing",
                          "subject"}
    real = {s for s, _, _ in messages} & set(before_bus)
    families = {s.rsplit(".", 1)[0] for s in real}
    for prefix in ("cilia.src.pod", "cilia.src.namespace", "cilia.src.node", "cilia.identity",
                   "cilia.ipcache.k8s", "cilia.policy", "cilia.lb"):
        assert any(f.startswith(prefix) for f in families), prefix
    asyncio.run(_flood(lab, messages))
    flooded = time.monotonic() - started

    # Every process up and ready, every agent caught up with the bus.
    lab.settle()
    status = _ready(lab)
    stats = _stats(status)
    for service in ("identity", "policy", "lb", "nodeagent"):
        assert all(s["rejected"] > 0 and s["failed"] == 0 for s in stats[service]), \
            (service, stats[service])
    assert len(stats["nodeagent"]) == 2
    # Nothing changed: not the kernel maps, not what the bus says of any object.
    assert _kernel(nodes) == before
    after_bus = asyncio.run(_read(lab))
    assert _meaning(after_bus) == _meaning(before_bus)
    assert len(lab.endpoints()) == 3

    # A valid change still reaches the maps of every node within the usual time.
    policy_file = lab.state_dir / "after-flood.yaml"
    policy_file.write_text(POLICY)
    eps = {e["pod"].split("/")[1].split("-")[0]: e for e in lab.endpoints()}
    backend, frontend = eps["backend"], eps["frontend"]
    start = time.monotonic()
    lab.ok("policy", "import", "-f", str(policy_file))
    policy_s = _wait(lab, "policy in the backend's node map",
                     lambda: any(k.subject == backend["identity"]
                                 and k.peer == frontend["identity"] and k.port == 7777
                                 for k in _kernel([backend["node"]])[backend["node"]]["policy"]),
                     start)
    pod_file = lab.state_dir / "late.yaml"
    pod_file.write_text(NEW_POD)
    start = time.monotonic()
    lab.ok("apply", "-f", str(pod_file))
    late: dict[str, Any] = {}

    def late_everywhere() -> bool:
        found = [e for e in lab.endpoints() if e["pod"] == f"{NS}/late"]
        if not found or found[0]["identity"] < 256:
            return False
        late.update(found[0])
        prefix = f"{late['ipv4']}/32"
        return all(m["ipcache"].get(prefix) is not None
                   and m["ipcache"][prefix].identity == late["identity"]
                   for m in _kernel(nodes).values())

    pod_s = _wait(lab, "the new pod in every node's ipcache", late_everywhere, start)
    _ready(lab)

    # Restarted services replay the bad history, skip it again and become ready; so does an
    # agent that lost its saved position (a full replay).
    lab.settle()
    before_restart = _kernel(nodes)
    for proc in list(lab.procs):
        stop_process(proc)
        lab.procs.remove(proc)
    for name in SERVICES:
        lab.procs.append(lab.start_service(name, lab.state_dir.parent / f"{name}.log"))
    node = backend["node"]
    snapshot = lab.state_dir / "nodes" / node / "agent-state.msgpack"
    code = ("import sys; from services.lab import stop_agent, start_agent; "
            "stop_agent(sys.argv[1], sys.argv[2]); "
            "from pathlib import Path; Path(sys.argv[3]).unlink(missing_ok=True); "
            "start_agent(sys.argv[1], sys.argv[2])")
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code, lab.lab, node, str(snapshot)],
                         env=lab.env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    restart_s = _wait(lab, "every service ready again",
                      lambda: lab.json("status")["health"]["ok"], start)
    lab.settle()
    stats = _stats(_ready(lab))
    replayed = next(s for s in stats["nodeagent"] if s["node"] == node)
    assert replayed["resumed_from"] == 0 and replayed["rejected"] > 0   # a full replay
    for service in ("identity", "policy", "lb"):
        assert stats[service][0]["rejected"] > 0, service
    assert _kernel(nodes) == before_restart
    print(f"\nbad messages: {BAD_MESSAGES} drawn in {drawn:.1f}s, published after "
          f"{flooded:.1f}s ({dict(kinds)}); after them a policy reached the maps in "
          f"{policy_s:.2f}s, a new pod every node's ipcache in {pod_s:.2f}s; services and a "
          f"replaying agent ready {restart_s:.1f}s after their restart")
