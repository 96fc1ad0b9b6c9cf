"""Request/response rate between two pods with the datapath programs attached, divided by the
same without them (plain veth routing through the node namespace).

Each round runs a 1-byte TCP ping-pong (TCP_NODELAY) for a few seconds between two pod
namespaces, alternating "plain" and "bpf" so that drift hits both equally; the figure is the
ratio of the medians. With programs, both pods enforce ingress and egress and an allow rule
admits the flow, so connection setup walks the full policy path and the steady state the
conntrack fast path.

Run: .venv/bin/python -m bench.datapath_rr [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import ctypes as ct
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bcc.libbcc import lib as bcclib

from bench._common import write
from services.common.policytypes import PROTO_TCP, Direction, PolicyKey, Verdict
from services.nodeagent.datapath import (
    EndpointEntry,
    IpcacheEntry,
    NodeMaps,
    Programs,
    attach,
    detach,
    unpin,
)
from tests.support.netlab import NodeLab

PORT = 7777
ID_CLIENT, ID_SERVER = 5001, 5002
GOAL = 0.90
# Client and server each get a core of their own (the machine has 2), so that scheduling
# placement does not swamp the difference being measured.
CLIENT_CPU = 0
SERVER_CPU = 1 % (os.cpu_count() or 1)
HOOKS_PER_TXN = 4
STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")   # run_time_ns accounting

SERVER = """
import os, socket, sys
os.sched_setaffinity(0, {int(sys.argv[3])})
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while (b := c.recv(1)):
        c.send(b)
    c.close()
"""

CLIENT = """
import os, socket, sys, time
os.sched_setaffinity(0, {int(sys.argv[4])})
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(200):                      # warm-up
    s.send(b"x"); s.recv(1)
n, end = 0, time.perf_counter() + float(sys.argv[3])
while time.perf_counter() < end:
    for _ in range(100):
        s.send(b"x"); s.recv(1)
    n += 100
print(n / float(sys.argv[3]))
"""


def _run_client(lab: NodeLab, server_ip: str, seconds: float) -> float:
    out = subprocess.run(["ip", "netns", "exec", lab.pods[0].name, sys.executable, "-c", CLIENT,
                          server_ip, str(PORT), str(seconds), str(CLIENT_CPU)],
                         check=True, capture_output=True, text=True, timeout=seconds + 30)
    return float(out.stdout.strip())


class _ProgInfo(ct.Structure):
    # Leading fields of struct bpf_prog_info (uapi/linux/bpf.h) up to run_cnt.
    _fields_ = (("type", ct.c_uint32), ("id", ct.c_uint32), ("tag", ct.c_uint8 * 8),
                ("jited_prog_len", ct.c_uint32), ("xlated_prog_len", ct.c_uint32),
                ("jited_prog_insns", ct.c_uint64), ("xlated_prog_insns", ct.c_uint64),
                ("load_time", ct.c_uint64), ("created_by_uid", ct.c_uint32),
                ("nr_map_ids", ct.c_uint32), ("map_ids", ct.c_uint64),
                ("name", ct.c_char * 16), ("ifindex", ct.c_uint32), ("gpl", ct.c_uint32),
                ("netns_dev", ct.c_uint64), ("netns_ino", ct.c_uint64),
                ("nr_jited_ksyms", ct.c_uint32), ("nr_jited_func_lens", ct.c_uint32),
                ("jited_ksyms", ct.c_uint64), ("jited_func_lens", ct.c_uint64),
                ("btf_id", ct.c_uint32), ("func_info_rec_size", ct.c_uint32),
                ("func_info", ct.c_uint64), ("nr_func_info", ct.c_uint32),
                ("nr_line_info", ct.c_uint32), ("line_info", ct.c_uint64),
                ("jited_line_info", ct.c_uint64), ("nr_jited_line_info", ct.c_uint32),
                ("line_info_rec_size", ct.c_uint32), ("jited_line_info_rec_size", ct.c_uint32),
                ("nr_prog_tags", ct.c_uint32), ("prog_tags", ct.c_uint64),
                ("run_time_ns", ct.c_uint64), ("run_cnt", ct.c_uint64))


def _prog_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a loaded program (needs kernel.bpf_stats_enabled)."""
    info = _ProgInfo()
    size = ct.c_uint32(ct.sizeof(info))
    if bcclib.bpf_obj_get_info(fd, ct.byref(info), ct.byref(size)) != 0:
        raise OSError(ct.get_errno(), "bpf_obj_get_info")
    return int(info.run_time_ns), int(info.run_cnt)


def _configure(maps: NodeMaps, lab: NodeLab) -> None:
    client, server = lab.pods
    maps.ipcache.reconcile({f"{client.ip}/32": IpcacheEntry(ID_CLIENT),
                            f"{server.ip}/32": IpcacheEntry(ID_SERVER)})
    maps.endpoints.reconcile({
        client.ip: EndpointEntry(1, ID_CLIENT, client.ifindex, True, True),
        server.ip: EndpointEntry(2, ID_SERVER, server.ifindex, True, True)})
    maps.policy.reconcile({
        PolicyKey(ID_CLIENT, ID_SERVER, Direction.EGRESS, PROTO_TCP, PORT, PORT): Verdict.ALLOW,
        PolicyKey(ID_SERVER, ID_CLIENT, Direction.INGRESS, PROTO_TCP, PORT, PORT):
            Verdict.ALLOW})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()

    node = f"bench-{uuid.uuid4().hex[:8]}"
    lab = NodeLab.create(2, subnet="10.244.77")
    server_proc = None
    progs = None
    stats_was = None
    try:
        server = lab.pods[1]
        server_proc = subprocess.Popen(
            ["ip", "netns", "exec", server.name, sys.executable, "-c", SERVER, server.ip,
             str(PORT), str(SERVER_CPU)], stdout=subprocess.PIPE, text=True)
        assert server_proc.stdout is not None
        server_proc.stdout.readline()
        progs = Programs(node)
        with NodeMaps(node) as maps:
            _configure(maps, lab)
        stats_was = STATS_SYSCTL.read_text().strip()
        STATS_SYSCTL.write_text("1")   # restored below, also on failure
        plain: list[float] = []
        bpf: list[float] = []
        for _ in range(args.rounds):
            for pod in lab.pods:
                detach(pod.host_if, netns=lab.node_ns)
            plain.append(_run_client(lab, server.ip, args.seconds))
            for pod in lab.pods:
                attach(progs, pod.host_if, netns=lab.node_ns)
            bpf.append(_run_client(lab, server.ip, args.seconds))
        runs = [_prog_stats(fd) for fd in progs.fds.values()]
        total_ns, total_runs = sum(r[0] for r in runs), sum(r[1] for r in runs)
        ns_per_run = total_ns / max(total_runs, 1)
        ratio = statistics.median(bpf) / statistics.median(plain)
        # Each transaction crosses four hooks: client from_pod and server to_pod with the
        # request, server from_pod and client to_pod with the response.
        plain_txn_ns = 1e9 / statistics.median(plain)
        model_ratio = plain_txn_ns / (plain_txn_ns + HOOKS_PER_TXN * ns_per_run)
        result = {
            "metric": "tcp_rr_ratio_bpf_over_plain",
            "ratio": round(ratio, 4),
            "goal": GOAL,
            "meets_goal": ratio >= GOAL,
            "program_ns_per_run": round(ns_per_run, 1),
            "program_runs": total_runs,
            "ratio_from_program_cost": round(model_ratio, 4),
            "plain_rr_per_s": [round(x) for x in plain],
            "bpf_rr_per_s": [round(x) for x in bpf],
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
            "client": "python 1-byte TCP ping-pong, TCP_NODELAY, one connection, "
                      "client and server pinned to separate cores",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        print(f"plain median {statistics.median(plain):.0f} rr/s, "
              f"bpf median {statistics.median(bpf):.0f} rr/s, ratio {ratio:.3f} "
              f"(goal >= {GOAL}); programs cost {ns_per_run:.0f} ns per run, "
              f"i.e. a ratio of {model_ratio:.3f} from program cost alone")
        write("datapath_rr", result)
    finally:
        if stats_was is not None:
            STATS_SYSCTL.write_text(stats_was)
        if server_proc is not None:
            server_proc.kill()
            server_proc.wait()
        if progs is not None:
            progs.close()
        lab.destroy()
        unpin(node)


if __name__ == "__main__":
    main()
