"""Policy propagation: from `cilia policy import` to the entry present in the kernel map.

Run: .venv/bin/python -m bench.agent_propagation [--imports 200]

Starts its own nats-server, services and a 1-node lab. Each import is a new policy allowing
frontend -> backend on one more port; the time runs from the publish of the policy object to
the moment the kernel's policy map holds the new entry. Also reports map writes per change
divided by the ideal diff (one entry per import).

By default it runs twice: on the bus as ``cilia up`` starts it (TLS, per-role credentials and
permissions; the import published as the ``source`` role) and on an open bus (no TLS, no auth),
the earlier setting; ``--bus secure`` or ``--bus open`` runs one.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from bench._common import summary_ms, write
from services.cli import manifests, source
from services.common.codec import decode
from services.common.policytypes import PROTO_TCP, Direction
from services.common.roles import ADMIN, SOURCE
from services.nodeagent.datapath import open_maps
from services.nodeagent.datapath.constants import PORT_BITS
from services.nodeagent.datapath.maps.policy import PortPrefix, encode_prefix
from tests.support.cluster import Cluster, temp_cluster

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "three-tier"
BASE_PORT = 20000
POLL_S = 0.0002


def port_policy(i: int) -> dict[str, Any]:
    """Policy ``i``: frontend -> backend on port ``BASE_PORT + i`` (one new kernel entry)."""
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": f"bench-{i}", "namespace": "production"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "backend"}},
                     "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                                  "toPorts": [{"ports": [{"port": str(BASE_PORT + i),
                                                          "protocol": "TCP"}]}]}]}}


def entry_key(backend: int, frontend: int, port: int) -> bytes:
    """The policy map key of "frontend may reach backend on TCP ``port``"."""
    return encode_prefix(PortPrefix(backend, frontend, Direction.INGRESS, PROTO_TCP, port,
                                    PORT_BITS))


async def _run(lab: Cluster, imports: int) -> dict[str, object]:
    eps = {e["pod"].split("/")[1].split("-")[0]: e for e in lab.endpoints()}
    backend, frontend = eps["backend"]["identity"], eps["frontend"]["identity"]
    node = eps["backend"]["node"]
    bus = await lab.bus(SOURCE, "bench")        # publishes as `cilia policy import` does
    watch = await lab.bus(ADMIN, "bench-watch")  # the only role that may subscribe to it live
    latencies: list[float] = []
    published: list[float] = []
    status_seen: dict[str, float] = {}

    async def on_status(msg: Msg) -> None:
        # policy.status is the last message of a change: the policy service is done with it.
        status_seen[decode(msg.data).data["name"]] = time.perf_counter()

    await watch.nc.subscribe("cilia.policy.status.>", cb=on_status)
    writes_before = _writes(lab)
    with open_maps(node) as maps:
        before = _kernel(maps)
    try:
        with open_maps(node) as maps:
            for i in range(imports):
                doc = manifests.Manifest("bench", 0, manifests.validate_document(port_policy(i)))
                port = BASE_PORT + i
                t0 = time.perf_counter()
                await source.apply(bus, [doc])
                deadline = t0 + 10
                # One kernel lookup of the new entry per poll: reading the whole map would
                # keep a core busy and slow what is measured.
                key = entry_key(backend, frontend, port)
                while maps.policy.reconciler.backend.lookup(key) is None:
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"entry for port {port} never appeared")
                    await asyncio.sleep(POLL_S)
                latencies.append(time.perf_counter() - t0)
                while f"bench-{i}" not in status_seen and time.perf_counter() < deadline:
                    await asyncio.sleep(POLL_S)
                published.append(status_seen[f"bench-{i}"] - t0)
    finally:
        await bus.close()
        await watch.close()
    await asyncio.to_thread(lab.settle)
    writes = _writes(lab) - writes_before
    with open_maps(node) as maps:
        after = _kernel(maps)
    # The ideal diff, from what the kernel held before and after: every entry added, removed
    # or changed in any map.
    ideal = sum(1 for m in before for k in set(before[m]) | set(after[m])
                if before[m].get(k) != after[m].get(k))
    return {"imports": imports, "latency": summary_ms(latencies), "samples_s": latencies,
            "import_to_last_policy_message": summary_ms(published),
            "map_writes": writes, "ideal_diff": ideal,
            "writes_per_ideal": round(writes / ideal, 3)}


def _kernel(maps: object) -> dict[str, dict[object, object]]:
    m = maps  # NodeMaps
    return {"ipcache": dict(m.ipcache.entries()),  # type: ignore[attr-defined]
            "endpoints": dict(m.endpoints.entries()),  # type: ignore[attr-defined]
            "policy": dict(m.policy.blocks())}  # type: ignore[attr-defined]


def _writes(lab: Cluster) -> int:
    return sum(int(s["stats"]["writes"]) for s in lab.json("status")["services"]
               if s["service"] == "nodeagent")


def measure(imports: int, env: dict[str, str] | None = None,
            secure: bool = True) -> dict[str, object]:
    """One propagation run on a fresh 1-node cluster (``env`` reaches every process; ``secure``
    False: an open bus, no TLS and no auth)."""
    with temp_cluster(nodes=1, prefix="cilia-bench-", extra_env=env, secure=secure) as lab:
        lab.ok("apply", "-f", str(EXAMPLES / "00-namespace.yaml"), "-f",
               str(EXAMPLES / "deployments.yaml"))
        lab.wait("endpoints", lambda: len([e for e in lab.endpoints()
                                           if e["identity"] >= 256]) == 3)
        lab.settle()
        return asyncio.run(_run(lab, imports))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--imports", type=int, default=200)
    parser.add_argument("--bus", choices=["both", "secure", "open"], default="both",
                        help="secure: TLS and per-role auth as `cilia up` runs it; open: neither")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of each kind, alternated (a shared machine's load varies)")
    args = parser.parse_args()
    kinds = [k for k in ("secure", "open") if args.bus in ("both", k)]
    results: dict[str, list[dict[str, object]]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for name in kinds:
            result = measure(args.imports, secure=name == "secure")
            what = "TLS + auth" if name == "secure" else "open bus (no TLS, no auth)"
            lat = result["latency"]
            print(f"[{what}] policy import -> kernel map entry over {args.imports} imports: "
                  f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms (goal p99 <= 20 ms)")  # type: ignore[index]
            pub = result["import_to_last_policy_message"]
            print(f"[{what}] policy import -> last policy message on the bus: "
                  f"p50 {pub['p50_ms']} ms, p99 {pub['p99_ms']} ms")  # type: ignore[index]
            print(f"[{what}] map writes per change / ideal diff: {result['writes_per_ideal']} "
                  "(goal 1.00)")
            del result["samples_s"]
            results[name].append(result)
    write("agent_propagation", {k: v[0] if len(v) == 1 else v for k, v in results.items()})


if __name__ == "__main__":
    main()
