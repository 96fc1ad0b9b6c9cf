"""The Kubernetes watcher: from a write in the API server to its event on the bus and to its
kernel map entry, and what a relist after 410 costs.

Run: .venv/bin/python -m bench.k8s_watch [--writes 200] [--pods 1000 10000]

- **write -> bus -> kernel**: a 1-node lab on the test API server (``lab up --k8s-api``) with
  the seed's three tiers; each write is a new CiliumNetworkPolicy allowing frontend -> backend
  on one more port, created in the API server. Timed: until its ``object.upsert`` is on the
  bus (published by the watcher), and until the kernel's policy map holds the new entry.
- **relist after 410**: the test API server holds N pods; the watcher (its own process, as it
  runs) has published them. Then, while the watcher is stopped (SIGSTOP), 30 pods change (10
  added, 10 relabelled, 10 deleted; their events held in the server), the server's history is
  compacted and the streams are cut; it resumes (SIGCONT) into a broken stream, its watch from
  its last resourceVersion gets 410 Gone and it relists. Timed: from the resume until the last
  of the 30 changes is on the bus; counted: every message and byte the watcher published
  meanwhile (the goal: the 30 changes and nothing else).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from bench._common import summary_ms, write
from bench.agent_propagation import BASE_PORT, EXAMPLES, entry_key, port_policy
from services.common.bus import Bus
from services.common.contract import source_subject
from services.common.embedded import start_nats
from services.common.roles import ADMIN
from services.nodeagent.datapath import open_maps
from tests.support.cluster import Cluster, temp_cluster
from tests.support.k8sapi import ApiServer, api_server
from tests.support.objects import pod
from tests.support.policy_helpers import load_docs
from tests.support.procs import start_service, stop_process

POLL_S = 0.0005
CHANGES = 10            # pods added, relabelled and deleted each while the watch is down
DONE_TIMEOUT_S = 120.0
RECUT_S = 5.0           # no relist by then: the server's cut missed the watch stream


# -- write -> bus -> kernel ---------------------------------------------------------------

async def _latency(lab: Cluster, api: ApiServer, writes: int) -> dict[str, Any]:
    eps = {e["pod"].split("/")[1].split("-")[0]: e for e in lab.endpoints()}
    backend, frontend = eps["backend"]["identity"], eps["frontend"]["identity"]
    watch = await lab.bus(ADMIN, "bench-watch")
    seen: dict[str, float] = {}

    async def on_object(msg: Msg) -> None:
        seen[msg.subject] = time.perf_counter()

    await watch.nc.subscribe("cilia.src.ciliumnetworkpolicy.>", cb=on_object)
    to_bus: list[float] = []
    to_kernel: list[float] = []
    try:
        with open_maps(eps["backend"]["node"]) as maps:
            for i in range(writes):
                obj = port_policy(i)
                subject = source_subject(obj["kind"], "production", obj["metadata"]["name"])
                key = entry_key(backend, frontend, BASE_PORT + i)
                t0 = time.perf_counter()
                await asyncio.to_thread(api.create, obj)
                deadline = t0 + 10
                while maps.policy.reconciler.backend.lookup(key) is None:
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"entry for port {BASE_PORT + i} never appeared")
                    await asyncio.sleep(POLL_S)
                to_kernel.append(time.perf_counter() - t0)
                while subject not in seen and time.perf_counter() < deadline:
                    await asyncio.sleep(POLL_S)
                to_bus.append(seen[subject] - t0)
    finally:
        await watch.close()
    return {"writes": writes, "write_to_bus": summary_ms(to_bus),
            "write_to_kernel": summary_ms(to_kernel)}


def latency(writes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cilia-bench-k8s-") as tmp, api_server() as api:
        kubeconfig = api.kubeconfig(Path(tmp) / "kubeconfig")
        with temp_cluster(nodes=1, prefix="cilia-bench-k8s-",
                          lab_args=("--k8s-api", api.url, "--kubeconfig",
                                    str(kubeconfig))) as lab:
            for name in ("00-namespace.yaml", "deployments.yaml"):
                for doc in load_docs(EXAMPLES / name):
                    api.create(doc)
            lab.wait("endpoints", lambda: len([e for e in lab.endpoints()
                                               if e["identity"] >= 256]) == 3, timeout=60)
            lab.settle()
            return asyncio.run(_latency(lab, api, writes))


# -- relist after 410 ----------------------------------------------------------------------

def _pod(i: int, app: str = "bench") -> dict[str, Any]:
    return pod(f"p{i}", ns="bench", labels={"app": app},
               ip=f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}")


async def _relist(api: ApiServer, url: str, tmp: Path, pods: int) -> dict[str, Any]:
    bus = await Bus.connect(url, "bench")
    await bus.ensure_history()
    published: list[tuple[float, str, int]] = []

    async def on_msg(msg: Msg) -> None:
        published.append((time.perf_counter(), msg.subject, len(msg.data)))

    await bus.nc.subscribe("cilia.src.>", cb=on_msg)
    env = {**os.environ, "CILIA_NATS_URL": url}
    proc = start_service("services.k8s", url, "--kubeconfig",
                         str(api.kubeconfig(tmp / "kubeconfig")), env=env,
                         log=tmp / "k8s.log")
    try:
        t0 = time.perf_counter()
        while sum(1 for _, s, _ in published if ".pod." in s) < pods:
            if time.perf_counter() - t0 > DONE_TIMEOUT_S:
                raise RuntimeError(f"initial sync: {len(published)} of {pods} pods published")
            await asyncio.sleep(0.05)
        initial_s = time.perf_counter() - t0
        await asyncio.sleep(1.0)            # the watches are open, from the list's version
        lists_before = api.list_calls("pods")
        published.clear()
        # The watcher stops (SIGSTOP) while 30 pods change, the history is compacted and its
        # streams are cut; it resumes into a broken stream whose position is gone.
        os.kill(proc.pid, signal.SIGSTOP)
        api.event_delay = 60.0              # the changes' events stay in the server
        gone = {source_subject("Pod", "bench", f"p{i}") for i in range(CHANGES)}
        relabelled = {source_subject("Pod", "bench", f"p{i}")
                      for i in range(CHANGES, 2 * CHANGES)}
        added = {source_subject("Pod", "bench", f"p{pods + i}") for i in range(CHANGES)}
        for i in range(CHANGES):
            api.delete("v1", "Pod", "bench", f"p{i}")
            api.patch("v1", "Pod", "bench", f"p{CHANGES + i}",
                      {"metadata": {"labels": {"app": "relabelled"}}})
            api.create(_pod(pods + i))
        api.compact()
        api.cut_streams()
        api.event_delay = 0.0
        t1 = time.perf_counter()
        os.kill(proc.pid, signal.SIGCONT)
        wanted = gone | relabelled | added
        recut = False
        while not wanted <= {s for _, s, _ in published}:
            if time.perf_counter() - t1 > DONE_TIMEOUT_S:
                raise RuntimeError("the relist did not publish every change")
            if not recut and time.perf_counter() - t1 > RECUT_S:
                # The test API server's cut missed a stream (one it was still setting up):
                # that stream would deliver the held events late instead of breaking. Cut
                # again; the run says so, and its time is from this cut.
                recut = True
                api.cut_streams()
                t1 = time.perf_counter()
            await asyncio.sleep(0.01)
        done_s = max(t for t, s, _ in published if s in wanted) - t1
        await asyncio.sleep(2.0)            # anything else the relist publishes shows up
        pod_msgs = [(s, n) for _, s, n in published if ".pod." in s]
        return {"pods": pods, "initial_sync_s": round(initial_s, 2), "recut": recut,
                "relist_to_last_change_s": round(done_s, 3),
                "list_requests": api.list_calls("pods") - lists_before,   # pages of 500
                "changes": len(wanted), "messages_published": len(pod_msgs),
                "bytes_published": sum(n for _, n in pod_msgs),
                "unchanged_republished": len({s for s, _ in pod_msgs} - wanted),
                "deletes_seen": sum(1 for _, s, _ in published if s in gone)}
    finally:
        stop_process(proc)
        await bus.close()


def relist(pods: int, keep: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cilia-bench-relist-") as tmpdir:
        tmp = keep or Path(tmpdir)
        server = start_nats(tmp / "nats", log_file=tmp / "nats.log")
        try:
            with api_server(bookmark_interval=0.5) as api:
                for i in range(pods):
                    api.create(_pod(i))
                return asyncio.run(_relist(api, server.url, tmp, pods))
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--pods", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--trials", type=int, default=3, help="relists per size")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    if args.writes:
        out["latency"] = lat = latency(args.writes)
        print(f"API write -> bus event: p50 {lat['write_to_bus']['p50_ms']} ms, p99 "
              f"{lat['write_to_bus']['p99_ms']} ms; -> kernel map entry: p50 "
              f"{lat['write_to_kernel']['p50_ms']} ms, p99 {lat['write_to_kernel']['p99_ms']} ms")
    out["relist"] = []
    for n in args.pods:
        runs = [relist(n) for _ in range(args.trials)]
        out["relist"].append({"pods": n, "runs": runs})
        times = sorted(r["relist_to_last_change_s"] for r in runs)
        r = runs[0]
        print(f"relist after 410 with {n} pods: last change on the bus {times} s after the "
              f"resume (median {times[len(times) // 2]} s; {sum(x['recut'] for x in runs)} "
              f"run(s) needed a second cut); published {r['messages_published']} messages "
              f"({r['bytes_published']} bytes) for {r['changes']} changes, "
              f"{max(x['unchanged_republished'] for x in runs)} unchanged pods republished")
    write("k8s_watch", out)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
