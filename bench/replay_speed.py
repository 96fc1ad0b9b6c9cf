"""Replay speed: events per second folded through the real reducers, and the time to answer
``cilia replay state`` for a history of 100,000 events.

The history is generated the way the cluster produces it: pods created and deleted on 10
nodes (Pod objects, identities, ipcache entries), 100 CiliumNetworkPolicies, and the policy
service's own output for every input (the repository's changes turned into its messages by
its publishing code), each encoded with the bus codec and carrying a traceparent header. It is
written as a history file, then:

1. in process: verify + decode the file, fold it cluster-wide, fold it with one node's
   reducers too, and render the state (the events/s figure is the fold of the whole history);
2. end to end: the real ``cilia replay state --file ... -o json`` (process start included),
   cluster-wide and with ``--node``;
3. ``replay explain`` over the whole history (it folds twice: once to find the pods' nodes,
   once tracking the entries that decide), in process and end to end;
4. ``replay diff`` over the last 100 and 1,000 events (every map, one node), in process.

Run from the repo root: ``.venv/bin/python -m bench.replay_speed``
(writes bench/results/replay_speed.json).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import write
from bench.policy_compile import pod_labels, policy
from services.common import contract
from services.common.codec import encode
from services.common.identities import RESERVED, reserved_labels
from services.common.policytypes import PROTO_TCP
from services.policy import Repository, messages, parse_policy
from services.policy.service import to_outgoing
from services.replay import (
    HistoryHeader,
    Record,
    Replay,
    Tracker,
    all_maps,
    diff,
    explain,
    parse_moment,
    read_history,
    write_history,
)
from services.replay.maps import node_maps

EVENTS = 100_000
NODES = 10
POLICIES = 100
LIVE_PODS = 3000            # pods alive at once; beyond that the oldest is deleted
GOAL_EVENTS_PER_S = 20_000
DIFF_WINDOWS = (100, 1000)  # replay diff over the last N events (with one node)
STEP_NS = 50_000            # 50 us between generated events
CILIA = str(Path(sys.executable).parent / "cilia")


class Generator:
    """A synthetic but realistic history, built with the policy service's reducer."""

    def __init__(self, events: int = EVENTS, live_pods: int = LIVE_PODS) -> None:
        self.events = events
        self.live_pods = live_pods
        self.repo = Repository()
        self.records: list[Record] = []
        self.t0 = time.time_ns() - events * STEP_NS
        self.trace = 0

    def emit(self, subject: str, etype: str, data: dict[str, Any]) -> int:
        seq = len(self.records) + 1
        tp = f"00-{self.trace:032x}-{seq:016x}-01"
        self.records.append(Record(seq, self.t0 + seq * STEP_NS, subject,
                                   {"traceparent": tp, "Nats-Msg-Id": f"bench/{seq}"},
                                   encode(etype, data)))
        return seq

    def outputs(self, changes: Any, revision: int) -> None:
        for msg in messages(self.repo, changes):
            out = to_outgoing(msg, revision)
            self.emit(out.subject, out.event_type, out.data)

    def run(self) -> list[Record]:
        for ident in RESERVED:
            labels = reserved_labels(ident)
            self.emit(contract.identity_subject(ident), "identity.upsert",
                      {"id": ident, "labels": labels.strings()})
            self.repo.add_identity(ident, labels)
        for n in range(NODES):
            name = f"node{n}"
            self.emit(contract.source_subject("Node", "", name), "object.upsert", {
                "kind": "Node", "namespace": "", "name": name, "object": {
                    "kind": "Node", "metadata": {"name": name}, "status": {"addresses": [
                        {"type": "InternalIP", "address": f"172.31.0.{10 + n}"}]}}})
        for j in range(POLICIES):
            self.trace += 1
            doc = policy(j)
            named = [{"ports": [{"port": "http", "protocol": "TCP"}]}]
            if j % 5 == 0:      # named ports: resolved against the pods' container ports
                doc["spec"]["ingress"][0]["toPorts"] = named
            elif j % 5 == 1:
                doc["spec"]["egress"][0]["toPorts"] = named
            meta = doc["metadata"]
            seq = self.emit(contract.source_subject("CiliumNetworkPolicy", meta["namespace"],
                                            meta["name"]), "object.upsert",
                            {"kind": "CiliumNetworkPolicy", "namespace": meta["namespace"],
                             "name": meta["name"], "object": doc})
            self.outputs(self.repo.upsert(parse_policy(doc)), seq)
        alive: list[int] = []
        i = 0
        while len(self.records) < self.events:
            if len(alive) >= self.live_pods:
                self.delete_pod(alive.pop(0))
            self.create_pod(i)
            alive.append(i)
            i += 1
        del self.records[self.events:]
        return self.records

    def _pod(self, i: int) -> tuple[str, str, str, dict[str, Any]]:
        labels = pod_labels(i)
        ns = next(lbl.value for lbl in labels if lbl.key == "io.kubernetes.pod.namespace")
        name, node = f"pod{i}", f"node{i % NODES}"
        ip = f"10.{100 + i % NODES}.{(i // 250) % 250}.{i % 250 + 1}"
        obj = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns,
                            "labels": {lbl.key: lbl.value for lbl in labels
                                       if lbl.key in ("app", "tier", "version")}},
               "spec": {"nodeName": node, "containers": [{"name": "c", "image": "echo", "ports": [
                   {"containerPort": 8000 + i % 50, "name": "http"} if i % 4 == 0 else
                   {"containerPort": 8080}]}]},
               "status": {"podIP": ip, "hostIP": f"172.31.0.{10 + i % NODES}"}}
        return ns, name, ip, obj

    def create_pod(self, i: int) -> None:
        self.trace += 1
        ns, name, ip, obj = self._pod(i)
        self.emit(contract.source_subject("Pod", ns, name), "object.upsert",
                  {"kind": "Pod", "namespace": ns, "name": name, "object": obj})
        ident = 256 + i
        labels = pod_labels(i)
        seq = self.emit(contract.identity_subject(ident), "identity.upsert",
                        {"id": ident, "labels": labels.strings()})
        self.emit(contract.ipcache_subject(f"{ip}/32"), "ipcache.upsert",
                  {"prefix": f"{ip}/32", "identity": ident, "pod": f"{ns}/{name}",
                   "node": obj["spec"]["nodeName"], "host_ip": obj["status"]["hostIP"]})
        self.outputs(self.repo.add_identity(ident, labels), seq)

    def delete_pod(self, i: int) -> None:
        self.trace += 1
        ns, name, ip, _ = self._pod(i)
        self.emit(contract.source_subject("Pod", ns, name), "object.delete",
                  {"kind": "Pod", "namespace": ns, "name": name})
        self.emit(contract.ipcache_subject(f"{ip}/32"), "ipcache.delete", {"prefix": f"{ip}/32"})
        seq = self.emit(contract.identity_subject(256 + i), "identity.delete", {"id": 256 + i})
        self.outputs(self.repo.remove_identity(256 + i), seq)


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _cli(path: Path, *extra: str) -> float:
    start = time.perf_counter()
    res = subprocess.run([CILIA, "--nats-url", "nats://127.0.0.1:1", "replay", "state",
                          "--seq", str(EVENTS), "--file", str(path), "-o", "json", *extra],
                         capture_output=True, text=True, check=False)
    took = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"cilia replay state failed: {res.stderr}")
    return took


def main() -> None:
    records, gen_s = _timed(lambda: Generator().run())
    types: dict[str, int] = {}
    for r in records:
        kind = r.subject.split(".")[1]
        types[kind] = types.get(kind, 0) + 1
    with tempfile.TemporaryDirectory(prefix="cilia-bench-replay-") as tmp:
        path = Path(tmp) / "history.cilia"
        write_history(path, HistoryHeader("CILIA", "bench"), records)
        size = path.stat().st_size
        (_, loaded), read_s = _timed(lambda: read_history(path))
        cluster, fold_s = _timed(lambda: Replay().apply_all(loaded))
        node, fold_node_s = _timed(lambda: Replay(["node0"]).apply_all(loaded))
        _, render_s = _timed(lambda: all_maps(cluster))
        _, render_node_s = _timed(lambda: node_maps(node, "node0"))
        cli_s = _cli(path)
        cli_node_s = _cli(path, "--node", "node0")
        pods = sorted(cluster.cluster.pods)
        src = next(p for p in pods if p.endswith("0"))          # on node0
        dst = next(p for p in reversed(pods) if p.endswith("1"))  # on node1
        moment = parse_moment(str(loaded[-1].seq))
        doc, explain_s = _timed(lambda: explain(loaded, moment, src, dst, 8000, PROTO_TCP))
        start = time.perf_counter()
        res = subprocess.run([CILIA, "--nats-url", "nats://127.0.0.1:1", "replay", "explain",
                              "--seq", str(EVENTS), "--from", src, "--to", dst, "--dport",
                              "8000/TCP", "--file", str(path), "-o", "json"],
                             capture_output=True, text=True, check=False)
        cli_explain_s = time.perf_counter() - start
        if res.returncode != 0:
            raise SystemExit(f"cilia replay explain failed: {res.stderr}")
        diff_s = {}
        for window in DIFF_WINDOWS:
            rp = Replay(["node0"])
            rp.fold(loaded[:-window])

            def run(rp: Replay = rp, window: int = window) -> int:
                tracker = Tracker(rp)
                before = tracker.snapshot()
                tracker.fold(loaded[-window:])
                return len(diff(before, tracker))
            changes, took = _timed(run)
            diff_s[str(window)] = {"seconds": round(took, 3), "changes": changes}
    rate = EVENTS / fold_s
    result = {
        "events": EVENTS, "nodes": NODES, "policies": POLICIES, "live_pods": LIVE_PODS,
        "events_by_kind": types, "file_bytes": size, "generate_seconds": round(gen_s, 2),
        "read_verify_decode_seconds": round(read_s, 3),
        "fold_seconds": round(fold_s, 3), "events_per_second": round(rate),
        "fold_with_node_seconds": round(fold_node_s, 3),
        "events_per_second_with_node": round(EVENTS / fold_node_s),
        "render_cluster_seconds": round(render_s, 3),
        "render_node_seconds": round(render_node_s, 3),
        "cli_replay_state_seconds": round(cli_s, 3),
        "cli_replay_state_node_seconds": round(cli_node_s, 3),
        "explain_seconds": round(explain_s, 3), "explain_verdict": doc["verdict"],
        "cli_replay_explain_seconds": round(cli_explain_s, 3),
        "diff_last_events_with_node": diff_s,
        "goal_events_per_second": GOAL_EVENTS_PER_S, "goal_met": rate >= GOAL_EVENTS_PER_S,
        "identities_at_end": len(cluster.cluster.identities),
        "selectors_at_end": len(cluster.repo.cache.selector_ids()),
        "cpu": os.cpu_count(),
    }
    for k, v in result.items():
        print(f"{k:32} {v}")
    write("replay_speed", result)


if __name__ == "__main__":
    main()
