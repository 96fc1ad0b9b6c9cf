"""Policy map patching in the kernel: latency of realizing one subject's change in a large
pinned policy map, and map writes per change divided by the ideal diff.

The map is filled with ``--subjects`` x ``--rules`` entries; each of ``--changes`` changes
adds one rule to, or removes one rule from, one subject (a port range, so one change can mean
several kernel entries). The ideal diff is the symmetric difference of the expanded entries
before and after; the writes are what the reconciler reports.

Run: .venv/bin/python -m bench.datapath_reconcile [--subjects 500] [--rules 20] [--changes 200]
"""

from __future__ import annotations

import argparse
import random
import time
import uuid

from bench._common import summary_ms, write
from services.common.policytypes import PROTO_TCP, PROTO_UDP, PolicyKey, Verdict
from services.nodeagent.datapath import NodeMaps, Programs, expand_policy, unpin

FIRST_SUBJECT = 1000
SEED = 7


def _rule(rng: random.Random, subject: int) -> PolicyKey:
    port = rng.randrange(1, 60000)
    end = port + rng.choice([0, 0, 0, 7, 100])
    return PolicyKey(subject, rng.randrange(256, 5000), rng.randrange(2),
                     rng.choice([PROTO_TCP, PROTO_UDP]), port, end)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subjects", type=int, default=500)
    ap.add_argument("--rules", type=int, default=20)
    ap.add_argument("--changes", type=int, default=200)
    args = ap.parse_args()
    rng = random.Random(SEED)
    node = f"bench-{uuid.uuid4().hex[:8]}"
    progs = Programs(node)
    try:
        by_subject: dict[int, dict[PolicyKey, Verdict]] = {
            s: {_rule(rng, s): Verdict.ALLOW for _ in range(args.rules)}
            for s in range(FIRST_SUBJECT, FIRST_SUBJECT + args.subjects)}
        full = {k: v for rules in by_subject.values() for k, v in rules.items()}
        with NodeMaps(node) as maps:
            t0 = time.perf_counter()
            initial = maps.policy.reconcile(full)
            fill_s = time.perf_counter() - t0
        # A restarted agent: new objects over the pins, first call reads the map.
        with NodeMaps(node) as maps:
            t0 = time.perf_counter()
            restart = maps.policy.reconcile(full)
            restart_s = time.perf_counter() - t0
            latencies: list[float] = []
            writes = ideal = 0
            for _ in range(args.changes):
                subject = rng.randrange(FIRST_SUBJECT, FIRST_SUBJECT + args.subjects)
                before = dict(by_subject[subject])
                if before and rng.random() < 0.5:
                    del by_subject[subject][rng.choice(list(before))]
                else:
                    by_subject[subject][_rule(rng, subject)] = Verdict.DENY
                after = by_subject[subject]
                old, new = expand_policy(before), expand_policy(after)
                ideal += len(set(old.items()) ^ set(new.items())) - len(
                    {k for k in old if k in new and old[k] != new[k]})
                t0 = time.perf_counter()
                res = maps.policy.reconcile(after, subjects=[subject])
                latencies.append(time.perf_counter() - t0)
                writes += res.writes
            kernel_entries = len(maps.policy.blocks())
        result = {
            "entries_in_map": kernel_entries,
            "initial_fill": {"writes": initial.writes, "seconds": round(fill_s, 3)},
            "restart_unchanged": {"writes": restart.writes, "seconds": round(restart_s, 3)},
            "change_to_kernel": summary_ms(latencies),
            "writes_per_change_over_ideal_diff": round(writes / ideal, 4) if ideal else None,
            "writes": writes,
            "ideal_diff": ideal,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        print(f"{kernel_entries} entries; one-subject change -> kernel "
              f"p50 {result['change_to_kernel']['p50_ms']} ms, "
              f"p99 {result['change_to_kernel']['p99_ms']} ms; writes/ideal "
              f"{result['writes_per_change_over_ideal_diff']}; restart with nothing changed: "
              f"{restart.writes} writes in {restart_s:.2f} s")
        write("datapath_reconcile", result)
    finally:
        progs.close()
        unpin(node)


if __name__ == "__main__":
    main()
