"""A recorded incident for the replay tests: three pods on two nodes, a policy with a wrong
port (frontend -> backend:8080 dropped), then the fix. Real nats-server, real identity and
policy service processes, the real ``cilia`` executable, tracing to JSON-lines files."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.bus import Bus, Delivery
from services.common.embedded import start_nats
from tests.support.busread import services_ready, wait_for
from tests.support.cli import cilia
from tests.support.procs import start_service, stop_process

NS = "shop"
PODS = (("frontend", "10.244.1.10", "node1", "172.31.0.11"),
        ("backend", "10.244.2.11", "node2", "172.31.0.12"),
        ("database", "10.244.2.12", "node2", "172.31.0.12"))


def pods_yaml() -> str:
    docs = [f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NS}\n"]
    for name, ip, node, host in PODS:
        docs.append(
            f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NS}\n"
            f"  labels:\n    app: {name}\nspec:\n  nodeName: {node}\n  containers:\n"
            f"  - name: c\n    image: echo\n    ports:\n    - containerPort: 8080\n"
            f"status:\n  podIP: {ip}\n  hostIP: {host}\n")
    return "---\n".join(docs)


def policy_yaml(port: int) -> str:
    return (f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n"
            f"  name: backend-allow-frontend\n  namespace: {NS}\nspec:\n"
            f"  endpointSelector:\n    matchLabels:\n      app: backend\n  ingress:\n"
            f"  - fromEndpoints:\n    - matchLabels:\n        app: frontend\n"
            f"    toPorts:\n    - ports:\n      - port: \"{port}\"\n        protocol: TCP\n")


@dataclass
class Incident:
    url: str
    tmp: Path
    env: dict[str, str]
    seq_pods: int          # pods and identities settled, no policy yet
    seq_broken: int        # the wrong policy realized on the bus
    time_broken: str       # a wall-clock moment while it was in force (RFC 3339)
    seq_fixed: int         # the fix realized
    time_fixed: str
    snapshot_broken: dict[str, Delivery]   # what the bus held at seq_broken
    policy_stats_broken: dict[str, Any]     # what the live policy service said then
    snapshot_fixed: dict[str, Delivery]     # what the bus held at seq_fixed
    span_files: list[Path]

    def cilia(self, *args: str) -> Any:
        return cilia("--nats-url", self.url, *args, env=self.env)

    def json(self, *args: str) -> Any:
        res = self.cilia(*args, "-o", "json")
        assert res.returncode == 0, f"cilia {' '.join(args)}: {res.stdout}{res.stderr}"
        return json.loads(res.stdout)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + \
        f".{int(time.time() * 1e6) % 1_000_000:06d}Z"


async def _settled(url: str, port: int) -> tuple[int, dict[str, Delivery]]:
    bus = await Bus.connect(url, "test")
    try:
        def fixed(snap: dict[str, Delivery]) -> bool:
            rules = [d.event.data for s, d in snap.items() if s.startswith("cilia.policy.rules")]
            status = [d.event.data for s, d in snap.items()
                      if s.startswith("cilia.policy.status")]
            ports = json.dumps([r["rules"] for r in rules])
            return bool(status) and status[0]["op"] == "set" and f", {port}, {port}, " in ports
        await wait_for(bus, ["cilia.policy.>"], fixed, timeout=15)
        snap = await bus.snapshot(["cilia.>"])
        return max(d.seq for d in snap.values()), snap
    finally:
        await bus.close()


async def _pods_settled(url: str) -> int:
    bus = await Bus.connect(url, "test")
    try:
        def settled(s: dict[str, Delivery]) -> bool:
            # Each pod's identity also has its computed policy (empty: nothing selects it
            # yet), without which an agent keeps the pod at deny-all.
            pods = [d.event.data["identity"] for k, d in s.items()
                    if k.startswith("cilia.ipcache")]
            marks = {d.event.data["identity"] for k, d in s.items()
                     if k.startswith("cilia.policy.rules")}
            return len(pods) == 3 and set(pods) <= marks

        snap = await wait_for(bus, ["cilia.ipcache.>", "cilia.identity.>",
                                    "cilia.policy.rules.>"], settled, timeout=15)
        return max(d.seq for d in snap.values())
    finally:
        await bus.close()


async def _ready(url: str) -> None:
    bus = await Bus.connect(url, "test")
    try:
        await services_ready(bus, {"identity", "policy"})
    finally:
        await bus.close()


def _policy_stats(url: str, env: dict[str, str]) -> dict[str, Any]:
    res = cilia("--nats-url", url, "status", "-o", "json", env=env)
    assert res.returncode == 0, res.stderr
    stats: dict[str, Any] = next(s["stats"] for s in json.loads(res.stdout)["services"]
                                 if s["service"] == "policy")
    return stats


def record_incident(tmp: Path) -> tuple[Incident, Any]:
    """Run the incident; returns it and a cleanup function."""
    server = start_nats(tmp / "nats", log_file=tmp / "nats.log")
    spans = [tmp / "cli-spans.jsonl", tmp / "svc-spans.jsonl"]
    env = {"CILIA_NATS_URL": server.url, "CILIA_STATE_DIR": str(tmp / "state"),
           "CILIA_TRACE_FILE": str(spans[0])}
    svc_env = {"CILIA_TRACE_FILE": str(spans[1])}
    procs = [start_service(f"services.{name}", server.url, env=svc_env,
                           log=tmp / f"{name}.log") for name in ("identity", "policy")]

    def cleanup() -> None:
        for p in procs:
            stop_process(p)
        server.stop()

    try:
        asyncio.run(_ready(server.url))
        (tmp / "pods.yaml").write_text(pods_yaml())
        res = cilia("--nats-url", server.url, "apply", "-f", str(tmp / "pods.yaml"), env=env)
        assert res.returncode == 0, res.stderr
        seq_pods = asyncio.run(_pods_settled(server.url))
        for port, name in ((8081, "broken"), (8080, "fixed")):
            (tmp / f"{name}.yaml").write_text(policy_yaml(port))
            res = cilia("--nats-url", server.url, "apply", "-f", str(tmp / f"{name}.yaml"),
                        env=env)
            assert res.returncode == 0, res.stderr
            seq, snap = asyncio.run(_settled(server.url, port))
            time.sleep(0.05)
            moment = _now()
            time.sleep(0.05)
            if name == "broken":
                seq_broken, time_broken, snap_broken = seq, moment, snap
                stats = _policy_stats(server.url, env)
            else:
                seq_fixed, time_fixed, snap_fixed = seq, moment, snap
        incident = Incident(server.url, tmp, env, seq_pods, seq_broken, time_broken,
                            seq_fixed, time_fixed, snap_broken, stats, snap_fixed, spans)
    except BaseException:
        cleanup()
        raise
    return incident, cleanup
