"""New-connection latency to a ClusterIP with 1, 100, 1,000 and 10,000 services programmed:
cilia's eBPF service translation against kube-proxy's iptables rules, side by side.

Two labs of one node with a client pod and a backend pod each, built only from network
namespaces (tests/support/netlab.py). In the cilia lab the pod programs translate the VIP
(lb maps filled with N frontends). In the baseline lab no program is attached and the same N
services are kube-proxy nat rules (bench/kubeproxy_baseline.py) loaded with iptables-restore
inside the lab's node namespace, never in the root namespace. The measured service is the
last one of KUBE-SERVICES (a linear chain's worst case; the eBPF lookup is a hash) and has two
backends (a Maglev table of 16381 slots / two KUBE-SEP chains chosen by -m statistic); the
other services have one backend each. A sample is connect() plus the first byte the backend
sends, from a client process in the pod.

Run: .venv/bin/python -m bench.lb_latency [--counts 1,100,1000,10000] [--samples 300]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench._common import summary_ms, write
from bench.kubeproxy_baseline import KpService, rules, synthetic, vip_of
from services.lb.maglev import DEFAULT_TABLE_SIZE, build_table
from services.nodeagent.datapath.lb import LbPlan
from services.nodeagent.datapath.maps.lb_backends import LbBackendEntry
from services.nodeagent.datapath.maps.lb_services import LbFrontend, LbServiceEntry
from tests.support.lblab import LbLab
from tests.support.netlab import NodeLab

PORT = 9090
WARMUP = 20
GOAL_RATIO = 1.1
DUMMY_BACKEND_BASE = 100000
TARGET_BACKEND_BASE = 10

# Client and server each get a core (the machine has 2), so that scheduler placement does
# not swamp the difference being measured.
CLIENT_CPU = 0
SERVER_CPU = 1 % (os.cpu_count() or 1)

SERVER = """
import os, socket, sys
os.sched_setaffinity(0, {int(sys.argv[3])})
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(512)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.send(b"x"); c.close()
"""

CLIENT = """
import json, os, socket, sys, time
os.sched_setaffinity(0, {int(sys.argv[5])})
vip, port, n, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = []
for i in range(n + warm):
    t = time.perf_counter()
    s = socket.create_connection((vip, port), timeout=5)
    s.recv(1)
    dt = time.perf_counter() - t
    s.close()
    if i >= warm:
        out.append(dt)
print(json.dumps(out))
"""


@contextmanager
def server(ns: str, ip: str) -> Iterator[None]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, ip,
                             str(PORT), str(SERVER_CPU)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()
        proc.wait()


def measure(ns: str, vip: str, samples: int) -> list[float]:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, vip, "80",
                          str(samples), str(WARMUP), str(CLIENT_CPU)], capture_output=True,
                         text=True,
                         check=True, timeout=600)
    return [float(x) for x in json.loads(out.stdout)]


def iptables_rule_count(ns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "iptables-save"], capture_output=True,
                         text=True, check=True).stdout
    return sum(1 for line in out.splitlines() if line.startswith("-A "))


def cilia_plan(count: int, backend_ips: list[str]) -> LbPlan:
    """``count`` frontends: single-backend ones, and last the measured one, whose backends
    are the backend pods behind a full Maglev table."""
    plan = LbPlan()
    for i in range(count - 1):
        bid = DUMMY_BACKEND_BASE + i
        plan.backends[bid] = LbBackendEntry(f"10.250.{i // 250 % 256}.{i % 250 + 1}", 8080)
        plan.tables[i << 1] = [bid]
        plan.services[LbFrontend(vip_of(i), 80)] = LbServiceEntry(i + 1, i << 1, 1, i << 1, 1)
    target = [(f"{ip}:{PORT}/TCP", TARGET_BACKEND_BASE + j) for j, ip in enumerate(backend_ips)]
    for (_, bid), ip in zip(target, backend_ips, strict=True):
        plan.backends[bid] = LbBackendEntry(ip, PORT, local=True)
    table = build_table(target, DEFAULT_TABLE_SIZE)
    tid = (count - 1) << 1
    plan.tables[tid] = table
    plan.services[LbFrontend(vip_of(count - 1), 80)] = LbServiceEntry(count, tid, len(table),
                                                                      tid, len(table))
    return plan


def run(counts: list[int], samples: int) -> dict[str, object]:
    cilia_lab = LbLab.create(nodes=1, pods=3)
    kp_lab = NodeLab.create(3, subnet="10.244.9")
    results: dict[str, object] = {"samples": samples, "counts": counts, "cilia": {},
                                  "iptables": {}}
    try:
        node = cilia_lab.nodes[0]
        c_client, *c_backends = node.pods
        k_client, *k_backends = kp_lab.pods
        with contextlib.ExitStack() as stack:
            for pod in [*c_backends, *k_backends]:
                stack.enter_context(server(pod.name, pod.ip))
            for count in counts:
                t0 = time.perf_counter()
                node.lbmaps.apply(cilia_plan(count, [p.ip for p in c_backends]))
                program_s = time.perf_counter() - t0
                lat = measure(c_client.name, vip_of(count - 1), samples)
                results["cilia"][count] = {  # type: ignore[index]
                    **summary_ms(lat), "program_s": round(program_s, 3),
                    "iptables_rules": iptables_rule_count(node.lab.node_ns),
                    "frontends": len(node.lbmaps.service_entries())}
                services = synthetic(count, (k_backends[0].ip, PORT))
                services[-1] = KpService(services[-1].name, services[-1].vip, 80,
                                         tuple((p.ip, PORT) for p in k_backends))
                text = rules(services)
                t0 = time.perf_counter()
                subprocess.run(["ip", "netns", "exec", kp_lab.node_ns, "iptables-restore"],
                               input=text, text=True, check=True)
                program_s = time.perf_counter() - t0
                lat = measure(k_client.name, vip_of(count - 1), samples)
                results["iptables"][count] = {  # type: ignore[index]
                    **summary_ms(lat), "program_s": round(program_s, 3),
                    "iptables_rules": iptables_rule_count(kp_lab.node_ns)}
                print(f"{count:>6} services: cilia p50 "
                      f"{results['cilia'][count]['p50_ms']:.3f} ms, "  # type: ignore[index]
                      f"iptables p50 {results['iptables'][count]['p50_ms']:.3f} ms "  # type: ignore[index]
                      f"({results['iptables'][count]['iptables_rules']} rules)",  # type: ignore[index]
                      flush=True)
    finally:
        cilia_lab.destroy()
        kp_lab.destroy()
    lo, hi = min(counts), max(counts)
    for name in ("cilia", "iptables"):
        curve = results[name]  # type: ignore[index]
        results[f"{name}_ratio_{hi}_over_{lo}"] = round(
            curve[hi]["p50_ms"] / curve[lo]["p50_ms"], 3)  # type: ignore[index]
    results["goal_cilia_ratio"] = GOAL_RATIO
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,100,1000,10000")
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.counts.split(",")]
    res = run(counts, args.samples)
    lo, hi = min(counts), max(counts)
    print(f"\n{'services':>8} {'cilia p50 ms':>13} {'iptables p50 ms':>16} "
          f"{'cilia rules':>12} {'iptables rules':>15}")
    for count in counts:
        c, k = res["cilia"][count], res["iptables"][count]  # type: ignore[index]
        print(f"{count:>8} {c['p50_ms']:>13.3f} {k['p50_ms']:>16.3f} "
              f"{c['iptables_rules']:>12} {k['iptables_rules']:>15}")
    print(f"ratio {hi}/{lo}: cilia {res[f'cilia_ratio_{hi}_over_{lo}']} "
          f"(goal <= {GOAL_RATIO}), iptables {res[f'iptables_ratio_{hi}_over_{lo}']}")
    write("lb_latency", res)


if __name__ == "__main__":
    main()
