"""Pod start: what synchronous endpoint regeneration (CNI ADD waits until the pod's identity
and policy are in its node's maps) adds to starting a pod.

Run: .venv/bin/python -m bench.pod_start [--pods 40]

Two fresh 1-node clusters run side by side, identical but for one setting: in the first the
agents wait (the default), in the second ``CILIA_ENDPOINT_SYNC=0`` makes ADD answer as soon as
the endpoint is in the map at deny-all (the setting exists for this comparison only). In each,
a policy selects every bench pod; ``--pods`` pods are applied, alternately in the two clusters
so that both see the same machine load, each with a label set of its own (a new identity:
allocation, policy computation and ipcache entry on the path, the worst case). Per pod:

- ``add``: the CNI ADD call (plugin process, agent, wait);
- ``apply``: `cilia apply`'s work for one Pod (publish, schedule, ADD, workload start, status
  publish), run in this process so that CLI start-up does not blur it;
- ``apply_to_enforced``: from the start of ``apply`` until the node's endpoint map holds the
  pod's real identity, i.e. until the pod can talk at all. Without the wait this comes after
  ``apply`` returns: the honest "without" figure, since a pod at deny-all is not started in
  any useful sense.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Mapping
from typing import Any

from bench._common import summary_ms, write
from services.cli import source
from services.cli.manifests import Manifest, validate_document
from services.common.bus import Bus
from services.common.identities import ID_INIT
from services.common.roles import SOURCE
from services.lab import Kubelet
from services.lab.podspec import PodSpec
from services.nodeagent.datapath import open_maps
from services.nodeagent.readiness import SYNC_ENV
from tests.support.cluster import Cluster, temp_cluster

NAMESPACE = "bench"
POLL_S = 0.002           # endpoint map polls while waiting for the real identity
ENFORCED_TIMEOUT_S = 30.0
WARMUP = 1               # pods per cluster applied first and left out of the figures
POLICY = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
          "metadata": {"name": "bench", "namespace": NAMESPACE},
          "spec": {"endpointSelector": {"matchLabels": {"role": "bench"}},
                   "egress": [{"toEndpoints": [{"matchLabels": {"role": "bench"}}],
                               "toPorts": [{"ports": [{"port": "8080",
                                                       "protocol": "TCP"}]}]}]}}


def _pod(i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"p{i}", "namespace": NAMESPACE,
                         "labels": {"role": "bench", "app": f"p{i}"}},
            "spec": {"containers": [{"name": "c", "image": "echo",
                                     "ports": [{"containerPort": 8080}]}]}}


class TimedKubelet(Kubelet):
    """The lab's kubelet, timing each CNI ADD it runs."""

    def __init__(self, lab: str) -> None:
        super().__init__(lab)
        self.adds: list[float] = []

    def _add(self, netconf: Mapping[str, Any], spec: PodSpec, runtime: Mapping[str, Any],
             node_netns: str) -> dict[str, Any] | None:
        t0 = time.perf_counter()
        try:
            return super()._add(netconf, spec, runtime, node_netns)
        finally:
            self.adds.append(time.perf_counter() - t0)


def _enforced_ip(node: str, known: set[str]) -> str | None:
    """A new endpoint's address once the map holds its real identity."""
    with open_maps(node) as maps:
        for ip, entry in maps.endpoints.entries().items():
            if ip not in known and entry.identity != ID_INIT:
                return ip
    return None


LAB_ENV = ("CILIA_STATE_DIR", "CILIA_RUN_DIR", "CILIA_NATS_URL", "CILIA_LAB")


class Side:
    """One cluster of the comparison, with its in-process kubelet and figures."""

    def __init__(self, lab: Cluster) -> None:
        self.lab = lab
        self.kubelet = TimedKubelet(lab.lab)
        self.node = f"{lab.lab}-node1"
        self.applies: list[float] = []
        self.enforced: list[float] = []
        self.known: set[str] = set()
        self.bus: Bus | None = None

    def enter(self) -> None:
        """Point this process's lab settings at this cluster (the kubelet reads them)."""
        os.environ.update({k: self.lab.env[k] for k in LAB_ENV})

    async def start(self) -> None:
        self.bus = await self.lab.bus(SOURCE, "bench")     # applies, as `cilia apply` does
        await source.apply(self.bus, [
            Manifest("bench", 0, validate_document(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})),
            Manifest("bench", 1, validate_document(POLICY))])
        with open_maps(self.node) as maps:
            self.known = set(maps.endpoints.entries())

    async def pod(self, i: int) -> None:
        assert self.bus is not None
        self.enter()
        doc = Manifest("bench", 0, validate_document(_pod(i)))
        t0 = time.perf_counter()
        await source.apply(self.bus, [doc], self.kubelet)
        self.applies.append(time.perf_counter() - t0)
        deadline = t0 + ENFORCED_TIMEOUT_S
        while (ip := _enforced_ip(self.node, self.known)) is None:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"pod p{i} never got its identity in the map")
            await asyncio.sleep(POLL_S)
        self.enforced.append(time.perf_counter() - t0)
        self.known.add(ip)

    def figures(self) -> dict[str, Any]:
        # The first pod of a cluster warms caches up (imports, first identity): left out.
        return {"pods": len(self.applies) - WARMUP,
                "add": summary_ms(self.kubelet.adds[WARMUP:]),
                "apply": summary_ms(self.applies[WARMUP:]),
                "apply_to_enforced": summary_ms(self.enforced[WARMUP:])}


async def _run(sides: list[Side], pods: int) -> None:
    for side in sides:
        await side.start()
    try:
        # Alternate between the clusters so that both see the same machine load.
        for i in range(pods + WARMUP):
            for side in sides:
                await side.pod(i)
    finally:
        for side in sides:
            if side.bus is not None:
                await side.bus.close()


def measure(pods: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(with the wait, without it): two clusters alive at once, pods applied alternately."""
    with temp_cluster(nodes=1, prefix="cilia-bench-") as with_wait, \
            temp_cluster(nodes=1, prefix="cilia-bench-", extra_env={SYNC_ENV: "0"}) as without:
        with_wait.settle()
        without.settle()
        sides = [Side(with_wait), Side(without)]
        asyncio.run(_run(sides, pods))
        return sides[0].figures(), sides[1].figures()


def _delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: round(a[k] - b[k], 3) for k in ("p50_ms", "p99_ms")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=40)
    args = parser.parse_args()
    with_wait, without = measure(args.pods)
    added = {k: _delta(with_wait[k], without[k]) for k in ("add", "apply", "apply_to_enforced")}
    result = {"with_wait": with_wait, "without_wait": without, "added_by_wait": added}
    for what in ("add", "apply", "apply_to_enforced"):
        w, wo = with_wait[what], without[what]
        print(f"{what:>18}: with wait p50 {w['p50_ms']} ms p99 {w['p99_ms']} ms | without "
              f"p50 {wo['p50_ms']} ms p99 {wo['p99_ms']} ms | added p50 "
              f"{added[what]['p50_ms']} ms p99 {added[what]['p99_ms']} ms")
    write("pod_start", result)


if __name__ == "__main__":
    main()
