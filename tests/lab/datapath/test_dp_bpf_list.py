"""``cilia bpf <map> list`` exists for every map of the registry with a renderer, and shows
what the kernel map holds: the map module's rows (with the node) for ``-o json``, its headers
for the table."""

from __future__ import annotations

import json
from typing import Any

from services.common.policytypes import Verdict
from services.nodeagent.datapath.maps import conntrack, metrics, registry
from services.nodeagent.datapath.nodemaps import close_backend, pinned_factory
from tests.lab.datapath.conftest import ID_POD1, ID_POD2, Env
from tests.lab.datapath.test_dp_policy_traffic import IN, configure, tcp_rule
from tests.support.cli import cilia
from tests.support.netlab import tcp_ok

TIME_DEPENDENT = {conntrack.NAME: ("expires_in_s",)}   # fields that move between two reads
# Counters that only grow: the pods' veths carry packets (e.g. IPv6 neighbour discovery, dropped
# and counted) between the CLI's read and the test's, so the CLI shows at most what the kernel
# holds a moment later.
GROWING = {metrics.NAME: ("packets", "bytes")}


def _kernel_rows(env: Env, name: str) -> list[dict[str, Any]]:
    spec = registry.spec(name)
    assert spec.renderer is not None
    backend = pinned_factory(env.node)(spec)
    try:
        return [{"node": env.node, **r} for r in spec.renderer.rows(spec.open(backend))]
    finally:
        close_backend(backend)


def _stable(name: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    moving = (*TIME_DEPENDENT.get(name, ()), *GROWING.get(name, ()))
    return [{k: v for k, v in r.items() if k not in moving} for r in rows]


def test_every_rendered_map_is_listed_as_the_kernel_holds_it(env: Env) -> None:
    p1, p2, _ = env.pods
    configure(env, enforce={1: (True, False)},
              policy={tcp_rule(ID_POD2, ID_POD1, IN, 80): Verdict.ALLOW})
    assert tcp_ok(p1, p2.ip, 80)     # a tracked flow for the conntrack listing
    rendered = registry.rendered()
    assert {s.name for s in rendered} >= {"ipcache", "endpoints", "policy", "conntrack",
                                          "metrics", "fragments"}
    for spec in rendered:
        assert spec.renderer is not None
        command = spec.renderer.command
        res = cilia("bpf", command, "list", "--node", env.node, "-o", "json")
        assert res.returncode == 0, (command, res.stderr)
        shown = json.loads(res.stdout)
        kernel = _kernel_rows(env, spec.name)       # read after the CLI's
        assert _stable(spec.name, shown) == _stable(spec.name, kernel)
        for field in GROWING.get(spec.name, ()):
            assert all(a[field] <= b[field] for a, b in zip(shown, kernel, strict=True)), field
        table = cilia("bpf", command, "list", "--node", env.node)
        assert table.returncode == 0, (command, table.stderr)
        assert table.stdout.splitlines()[0].split() == " ".join(spec.renderer.headers).split()
        if spec.name != "fragments":     # no datagram in fragments here
            assert shown, f"bpf {command} list shows nothing"
