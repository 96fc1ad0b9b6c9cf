"""Identity service figures: allocation rate (1 and 2 replicas) and apply -> ipcache latency.

Run: .venv/bin/python -m bench.identity [--sets 5000] [--pods 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

from nats.aio.msg import Msg

from bench._common import nats, summary_ms, write
from services.cli import source
from services.cli.manifests import Manifest, validate_document
from services.common import contract
from services.common.bus import Bus, Outgoing
from services.common.codec import decode

REPO = Path(__file__).resolve().parents[1]


def _pod(i: int, app: str, ip: str | None) -> Manifest:
    obj = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"p{i}", "namespace": "bench", "labels": {"app": app}},
           "spec": {"containers": [{"name": "c"}]}}
    if ip:
        obj["status"] = {"podIP": ip, "hostIP": "172.31.0.11"}
    return Manifest("bench", i, validate_document(obj))


def _ip(i: int) -> str:
    return f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def _services(url: str, replicas: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-m", "services.identity", "--nats-url", url,
                              "--replica", f"bench-{r}"], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for r in range(replicas)]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(10)


async def _wait_services(bus: Bus, replicas: int) -> None:
    """Until every replica is ready and knows its peers (steady state, before the burst)."""
    from services.cli.controlplane import wait_ready
    from services.common.runner import collect_status

    assert bus.nc.connected_url is not None
    await wait_ready(bus.nc.connected_url.geturl(), {"identity": replicas}, 30)
    for _ in range(100):
        peers = [r["stats"]["peers"] for r in await collect_status(bus)
                 if r["service"] == "identity"]
        if peers and all(p == replicas for p in peers):
            return
        await asyncio.sleep(0.1)


async def allocation_rate(sets: int, replicas: int) -> dict[str, float]:
    """New label sets per second through the identity service (pods with no IP)."""
    with nats() as server:
        bus = await Bus.connect(server.url, "bench")
        await bus.ensure_history()
        procs = _services(server.url, replicas)
        try:
            await _wait_services(bus, replicas)
            done = asyncio.Event()
            seen: set[int] = set()

            async def on_identity(msg: Msg) -> None:
                ev = decode(msg.data)
                if ev.type == "identity.upsert" and ev.data["id"] >= 256:
                    seen.add(ev.data["id"])
                    if len(seen) >= sets:
                        done.set()

            await bus.nc.subscribe("cilia.identity.>", cb=on_identity)
            items = [_pod(i, f"app-{i}", None) for i in range(sets)]
            start = time.perf_counter()
            # A burst of new pods (a scale-up, a watcher's relist), pipelined.
            await bus.publish_batch([Outgoing(
                contract.source_subject("Pod", m.namespace, m.name), "object.upsert",
                {"kind": "Pod", "namespace": m.namespace, "name": m.name, "object": m.obj},
                f"bench-{m.name}") for m in items])
            published = time.perf_counter() - start
            await asyncio.wait_for(done.wait(), 300)
            elapsed = time.perf_counter() - start
            from services.common.runner import collect_status
            stats = [r["stats"] for r in await collect_status(bus)
                     if r["service"] == "identity"]
        finally:
            _stop(procs)
            await bus.close()
    return {"replicas": replicas, "sets": sets, "seconds": round(elapsed, 3),
            "publish_seconds": round(published, 3),
            "conflicts": [st["conflicts"] for st in stats],
            "peers": [st["peers"] for st in stats],
            "sets_per_s": round(sets / elapsed, 1)}


async def apply_latency(pods: int) -> dict[str, float]:
    """Time from `cilia apply` of one pod with an IP to its ipcache event at a subscriber."""
    with nats() as server:
        bus = await Bus.connect(server.url, "bench")
        await bus.ensure_history()
        procs = _services(server.url, 1)
        try:
            await _wait_services(bus, 1)
            arrived: dict[str, float] = {}
            waiters: dict[str, asyncio.Event] = {}

            async def on_ipcache(msg: Msg) -> None:
                ev = decode(msg.data)
                prefix = ev.data["prefix"]
                arrived[prefix] = time.perf_counter()
                if prefix in waiters:
                    waiters[prefix].set()

            await bus.nc.subscribe("cilia.ipcache.>", cb=on_ipcache)
            latencies: list[float] = []
            for i in range(pods):
                m = _pod(i, f"lat-{i % 50}", _ip(i))
                prefix = f"{_ip(i)}/32"
                waiters[prefix] = asyncio.Event()
                t0 = time.perf_counter()
                await source.apply(bus, [m])
                await asyncio.wait_for(waiters[prefix].wait(), 10)
                latencies.append(arrived[prefix] - t0)
        finally:
            _stop(procs)
            await bus.close()
    return summary_ms(latencies)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=1000)
    args = parser.parse_args()
    one = await allocation_rate(args.sets, 1)
    print(f"allocation, 1 replica : {one['sets_per_s']:>8.0f} new label sets/s")
    two = await allocation_rate(args.sets, 2)
    print(f"allocation, 2 replicas: {two['sets_per_s']:>8.0f} new label sets/s")
    lat = await apply_latency(args.pods)
    print(f"apply -> ipcache event over {lat['n']} pods: p50 {lat['p50_ms']} ms, "
          f"p99 {lat['p99_ms']} ms")
    write("identity", {"allocation_1_replica": one, "allocation_2_replicas": two,
                       "apply_to_ipcache": lat,
                       "goal": {"sets_per_s": 2000, "p99_ms": 20}})


if __name__ == "__main__":
    asyncio.run(main())
