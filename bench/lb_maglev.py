"""Maglev and the lb service's bus traffic.

1. Disruption: the fraction of Maglev slots (hence of new flows) that change backend when one
   of N backends is removed, for several table sizes (goal: <= 1.2/N at Cilium's 16381).
2. Table build time per backend count (the agent builds tables; the bus never carries them).
3. Bytes the lb service publishes when one backend joins a cluster of S services (a real
   nats-server and the real service), against what republishing every service would cost and
   what shipping one Maglev table would cost.

Run: .venv/bin/python -m bench.lb_maglev [--services 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import msgspec

from bench._common import nats, write
from services.cli import source
from services.cli.manifests import Manifest, validate_document
from services.common.bus import Bus, Delivery
from services.common.codec import encode
from services.common.contract import LB_FILTER, LbEvent, Payload, lb_members_subject
from services.lb.events import LbView
from services.lb.maglev import DEFAULT_TABLE_SIZE, build_table, remapped_fraction
from services.lb.service import LbService

SIZES = (251, 4093, DEFAULT_TABLE_SIZE, 65521)
BACKEND_COUNTS = (3, 10, 30, 100, 300)
VICTIMS = 5
GOAL = 1.2
SLOT_BYTES = 4
PODS_PER_SERVICE = 3


def names(n: int) -> list[tuple[str, int]]:
    return [(f"10.244.{i // 250}.{i % 250 + 1}:8080/TCP", i + 1) for i in range(n)]


def disruption() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in SIZES:
        row = {}
        for n in BACKEND_COUNTS:
            if n * 2 > size:
                continue
            bs = names(n)
            before = build_table(bs, size)
            fracs = []
            for k in range(VICTIMS):
                victim = (k * n) // VICTIMS
                fracs.append(remapped_fraction(before, build_table(bs[:victim] + bs[victim + 1:],
                                                                   size)))
            row[n] = {"remapped": round(max(fracs), 5), "times_n": round(max(fracs) * n, 3)}
        out[size] = row
    return out


def build_times() -> dict[int, float]:
    out = {}
    for n in BACKEND_COUNTS:
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            build_table(names(n), DEFAULT_TABLE_SIZE)
            runs.append(time.perf_counter() - t0)
        out[n] = round(statistics.median(runs) * 1000, 2)
    return out


def _doc(obj: dict[str, Any]) -> Manifest:
    return Manifest("bench", 0, validate_document(obj))


def _service(i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"svc-{i}", "namespace": "bench"},
            "spec": {"selector": {"app": f"a{i}"}, "ports": [{"port": 80, "targetPort": 8080}]}}


def _pod(i: int, j: int) -> dict[str, Any]:
    n = i * 10 + j
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"p{i}-{j}", "namespace": "bench", "labels": {"app": f"a{i}"}},
            "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "echo"}]},
            "status": {"podIP": f"10.{244 + n // 65536}.{n // 256 % 256}.{n % 256}",
                       "hostIP": "172.31.0.11"}}


async def _lb_events_after(bus: Bus, seq: int) -> list[Delivery]:
    got: list[Delivery] = []

    async def keep(d: Delivery) -> None:
        if d.seq > seq:
            got.append(d)

    sub = await bus.consume([LB_FILTER], keep, name="bench")
    await sub.caught_up.wait()
    await sub.stop()
    return got


async def _quiet(bus: Bus, still_s: float = 0.5) -> int:
    """Wait until the stream stops growing; its last sequence."""
    last = -1
    while True:
        seq = (await bus.js.stream_info("CILIA")).state.last_seq
        if seq == last:
            return seq
        last = seq
        await asyncio.sleep(still_s)


async def bus_bytes(services: int) -> dict[str, Any]:
    with nats() as server:
        bus = await Bus.connect(server.url, "bench")
        await bus.ensure_history()
        svc = LbService()
        await svc.start(bus)
        try:
            docs = [_doc(_service(i)) for i in range(services)]
            docs += [_doc(_pod(i, j)) for i in range(services) for j in range(PODS_PER_SERVICE)]
            await source.apply(bus, docs)
            for _ in range(600):
                if len(svc.view.members) == services and all(
                        len(m) == PODS_PER_SERVICE for m in svc.view.members.values()):
                    break
                await asyncio.sleep(0.05)
            before = await _quiet(bus)
            await source.apply(bus, [_doc(_pod(0, PODS_PER_SERVICE))])
            for _ in range(200):
                if len(svc.view.members[svc.view.ids["bench/svc-0"]]) == PODS_PER_SERVICE + 1:
                    break
                await asyncio.sleep(0.02)
            await _quiet(bus)
            events = await _lb_events_after(bus, before)
            change = sum(len(encode(d.event.type, d.event.data)) for d in events)
            view: LbView = svc.view
            full = sum(len(encode(LbEvent.SERVICE, {"id": sid, "service": _plain(s)}))
                       for sid, s in view.services.items())
            full += sum(len(encode(LbEvent.BACKEND, _plain(b))) for b in view.backends.values())
            full += sum(len(encode(LbEvent.MEMBERS, {
                "service": sid, "op": "set", "added": [list(m) for m in mem], "removed": []}))
                for sid, mem in view.members.items())
        finally:
            await svc.stop()
            await bus.close()
    return {"services": services, "backends": services * PODS_PER_SERVICE,
            "events_per_change": len(events),
            "subjects": sorted({d.subject for d in events}),
            "bytes_per_change": change, "bytes_full_republish": full,
            "bytes_one_maglev_table": DEFAULT_TABLE_SIZE * SLOT_BYTES,
            "members_subject_of_changed_service": lb_members_subject(view.ids["bench/svc-0"])}


def _plain(record: Payload) -> dict[str, Any]:
    """A record the view folded, as a dict again (its checked strings are str subclasses,
    which the typed encoder does not take back)."""
    out: dict[str, Any] = msgspec.to_builtins(record, enc_hook=str)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=300)
    args = parser.parse_args(argv)
    dis = disruption()
    print("remapped fraction x N when one of N backends leaves (goal <= 1.2):")
    print(f"{'M':>7} " + " ".join(f"{'N=' + str(n):>8}" for n in BACKEND_COUNTS))
    for size, row in dis.items():
        print(f"{size:>7} " + " ".join(f"{row[n]['times_n']:>8.3f}" if n in row else
                                       f"{'-':>8}" for n in BACKEND_COUNTS))
    times = build_times()
    print(f"table build time at M={DEFAULT_TABLE_SIZE}: "
          + ", ".join(f"N={n}: {ms} ms" for n, ms in times.items()))
    traffic = asyncio.run(bus_bytes(args.services))
    print(f"one backend joining {traffic['services']} services: {traffic['events_per_change']} "
          f"events, {traffic['bytes_per_change']} bytes (republishing everything: "
          f"{traffic['bytes_full_republish']} bytes; one Maglev table: "
          f"{traffic['bytes_one_maglev_table']} bytes)")
    write("lb_maglev", {"disruption": dis, "build_ms": times, "bus": traffic, "goal": GOAL})


if __name__ == "__main__":
    main()
