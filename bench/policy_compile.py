"""Policy compiler benchmarks (pure code, no bus).

1. Compile from scratch: 1,000 policies against 5,000 identities (parse + upsert + messages),
   then expand every subject into map entries.
2. Import latency: one more policy into that state, apply() to its last message built
   (p50/p99), with the default GC and with the long-lived heap frozen; the bus hop is added by
   the service and measured there.
3. Volume when one pod with a new identity appears in clusters of 100, 1,000 and 10,000
   identities with 100 policies covering them: messages and msgpack bytes. Must stay flat
   (ratio 10k/100 <= 1.2). Measured for an identity some policy selects, and for one no
   policy selects (its only subject message is the empty "policy computed" mark that agents
   wait for; its bytes are reported apart).

Run from the repo root: ``.venv/bin/python -m bench.policy_compile``
(writes bench/results/policy_compile.json).
"""

from __future__ import annotations

import gc
import json
import sys
import time
from typing import Any

import msgpack

from bench._common import summary_ms, write
from services.common.identities import RESERVED, reserved_labels
from services.common.labels import Label, Labels
from services.policy import CHANNEL_SUBJECT, Repository, expand, messages

NAMESPACES = 10
APPS = 100
FLAT_RATIO = 1.2


def pod_labels(i: int) -> Labels:
    """Identity ``i``: app ``i % APPS`` in namespace ``i % NAMESPACES`` plus a unique label."""
    ns = f"ns{i % NAMESPACES}"
    return Labels([Label("k8s", "app", f"app{i % APPS}"),
                   Label("k8s", "tier", ("web", "api", "db")[i % 3]),
                   Label("k8s", "version", f"v{i}"),
                   Label("k8s", "io.kubernetes.pod.namespace", ns),
                   Label("k8s", "io.cilium.k8s.namespace.labels.team", f"team{i % 4}"),
                   Label("k8s", "io.cilium.k8s.policy.serviceaccount", "default"),
                   Label("k8s", "io.cilium.k8s.policy.cluster", "default")])


def peer(app: int, key: str = "app") -> dict[str, str]:
    """matchLabels of the pods of one app, wherever their namespace is."""
    return {key: f"app{app % APPS}",
            "k8s:io.kubernetes.pod.namespace": f"ns{app % APPS % NAMESPACES}"}


def policy(j: int) -> dict[str, Any]:
    """Policy ``j``: selects app ``j % APPS`` in its namespace, with varied peer rules."""
    app, ns = j % APPS, f"ns{j % NAMESPACES}"
    spec: dict[str, Any] = {
        "endpointSelector": {"matchLabels": {"app": f"app{app}"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": peer(app + 1, "k8s:app")}],
                     "toPorts": [{"ports": [{"port": str(8000 + j % 50), "protocol": "TCP"}]}]}],
        "egress": [{"toEndpoints": [{"matchLabels": peer(app + 2)}]}],
    }
    variant = j // APPS
    if variant % 3 == 1:
        spec["egress"].append({"toCIDRSet": [{"cidr": f"10.{j % 250}.0.0/16",
                                              "except": [f"10.{j % 250}.1.0/24"]}],
                               "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]})
    if variant % 3 == 2:
        spec["ingress"].append({"fromEndpoints": [{"matchExpressions": [
            {"key": "io.cilium.k8s.namespace.labels.team", "operator": "In",
             "values": [f"team{j % 4}"]}]}]})
        spec["ingressDeny"] = [{"fromEntities": ["world"]}]
    if variant % 5 == 4:
        spec["endpointSelector"]["matchLabels"]["tier"] = ("web", "api", "db")[j % 3]
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": f"p{j}", "namespace": ns}, "spec": spec}


def cluster(n_identities: int) -> Repository:
    repo = Repository()
    for ident in RESERVED:
        repo.add_identity(ident, reserved_labels(ident))
    for i in range(n_identities):
        repo.add_identity(256 + i, pod_labels(i))
    return repo


def bench_compile(n_policies: int = 1000, n_identities: int = 5000) -> dict[str, Any]:
    repo = cluster(n_identities)
    start = time.perf_counter()
    n_msgs = 0
    for j in range(n_policies):
        n_msgs += len(messages(repo, repo.apply(policy(j))))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    members = repo.cache.snapshot()
    entries = sum(len(expand(sp, members).entries) for sp in repo.subjects().values())
    expand_s = time.perf_counter() - start
    latencies = _imports(repo, n_policies, 200)
    # The tail above is the cyclic GC walking millions of long-lived objects; a service that
    # freezes its heap after the initial replay (gc.freeze()) avoids it.
    gc.freeze()
    try:
        frozen = _imports(repo, n_policies + 200, 200)
    finally:
        gc.unfreeze()
    return {"policies": n_policies, "identities": n_identities,
            "compile_seconds": round(compile_s, 3), "messages": n_msgs,
            "selectors": len(repo.cache.selector_ids()), "subjects": len(repo.subjects()),
            "expand_all_seconds": round(expand_s, 3), "map_entries": entries,
            "import_to_last_message": summary_ms(latencies),
            "import_to_last_message_gc_frozen": summary_ms(frozen)}


def _imports(repo: Repository, first: int, count: int) -> list[float]:
    """Seconds from apply() of one more policy to its last message built, per policy."""
    out = []
    for k in range(count):
        doc = policy(first + k)
        t0 = time.perf_counter()
        messages(repo, repo.apply(doc))
        out.append(time.perf_counter() - t0)
    return out


def unselected_labels(i: int) -> Labels:
    """A pod no bench policy selects (no ``app`` label), in namespace ``ns0``."""
    return Labels([Label("k8s", "role", f"batch{i}"),
                   Label("k8s", "io.kubernetes.pod.namespace", "ns0"),
                   Label("k8s", "io.cilium.k8s.namespace.labels.team", "team0"),
                   Label("k8s", "io.cilium.k8s.policy.serviceaccount", "default"),
                   Label("k8s", "io.cilium.k8s.policy.cluster", "default")])


def bench_new_identity(sizes: tuple[int, ...] = (100, 1000, 10000),
                       n_policies: int = 100, selected: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in sizes:
        repo = cluster(size)
        for j in range(n_policies):
            repo.apply(policy(j))
        labels = pod_labels(size) if selected else unselected_labels(size)
        t0 = time.perf_counter()
        ch = repo.add_identity(256 + size, labels)
        msgs = messages(repo, ch)
        elapsed = time.perf_counter() - t0
        by_channel: dict[str, int] = {}
        for m in msgs:
            by_channel[m.channel] = by_channel.get(m.channel, 0) + 1
        out[str(size)] = {
            "messages": len(msgs), "by_channel": by_channel,
            "selector_deltas": len(ch.selector_deltas), "subject_updates": len(ch.subjects),
            "bytes": sum(len(msgpack.packb(m.payload)) for m in msgs),
            "own_subject_bytes": sum(len(msgpack.packb(m.payload)) for m in msgs
                                     if m.channel == CHANNEL_SUBJECT
                                     and m.key == str(256 + size)),
            "seconds": round(elapsed, 6)}
    small, big = out[str(sizes[0])], out[str(sizes[-1])]
    out["ratio_bytes"] = round(big["bytes"] / small["bytes"], 3)
    out["ratio_messages"] = round(big["messages"] / small["messages"], 3)
    out["flat"] = out["ratio_bytes"] <= FLAT_RATIO and out["ratio_messages"] <= FLAT_RATIO
    return out


def main() -> int:
    results = {"new_identity": bench_new_identity(),
               "new_unselected_identity": bench_new_identity(selected=False),
               "compile": bench_compile()}
    print(json.dumps(results, indent=2))
    write("policy_compile", results)
    flat = results["new_identity"]["flat"] and results["new_unselected_identity"]["flat"]
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
