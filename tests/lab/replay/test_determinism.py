"""Determinism: the whole history replayed into fresh reducers equals, entry by entry, what
the live agents wrote into their kernel maps, after pod, policy and service changes including
deletes (2-node lab, real agents, real pinned maps)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from services.common.policytypes import Verdict
from services.nodeagent.datapath import NodeMaps
from services.nodeagent.datapath.lb import LbMaps
from services.nodeagent.datapath.maps.policy import decode_policy, encode_policy
from services.replay import Replay, read_history
from services.replay.maps import desired
from tests.support.cluster import Cluster, temp_cluster
from tests.support.procs import REPO

EXAMPLES = REPO / "examples" / "three-tier"
NS = "production"


@pytest.fixture(scope="module")
def lab2() -> Iterator[Cluster]:
    with temp_cluster(nodes=2, prefix="cilia-replay-") as c:
        yield c


def _agents(lab: Cluster) -> list[str]:
    return sorted(s["stats"]["node"] for s in lab.json("status")["services"]
                  if s["service"] == "nodeagent")


@dataclass
class Replayed:
    nodes: list[str]
    replay: Replay


@pytest.fixture(scope="module")
def replayed(lab2: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    """The scripted changes, then the exported history folded into fresh reducers."""
    lab = lab2
    lab.ok("apply", "-f", str(EXAMPLES / "00-namespace.yaml"), "-f",
           str(EXAMPLES / "deployments.yaml"), "-f", str(EXAMPLES / "services.yaml"))
    lab.wait("three endpoints with identities", lambda: len(
        [e for e in lab.endpoints() if e["identity"] >= 256]) == 3)
    lab.ok("apply", "-f", str(EXAMPLES / "policy.yaml"))
    lab.settle()
    # Deletes: a policy, a whole tier (its pod, identity, ipcache entry and service backend).
    lab.ok("policy", "delete", "backend-allow-frontend", "-n", NS)
    lab.ok("delete", "-f", str(EXAMPLES / "deployments.yaml"))
    lab.wait("pods gone", lambda: not [e for e in lab.endpoints() if e["identity"] >= 256],
             timeout=30)
    lab.ok("apply", "-f", str(EXAMPLES / "deployments.yaml"))
    lab.wait("pods back", lambda: len(
        [e for e in lab.endpoints() if e["identity"] >= 256]) == 3, timeout=30)
    lab.settle()
    nodes = _agents(lab)
    assert len(nodes) == 2

    path = tmp_path_factory.mktemp("history") / "history.cilia"
    lab.ok("history", "export", "-o", str(path))
    _, records = read_history(path)
    kinds = {r.subject.split(".")[2] for r in records if r.subject.startswith("cilia.src.")}
    assert {"pod", "service", "ciliumnetworkpolicy", "node"} <= kinds
    rp = Replay(nodes)
    rp.fold(records)
    return Replayed(nodes, rp)


def test_replayed_history_equals_the_kernel_policy_maps(replayed: Replayed) -> None:
    rp, nodes = replayed.replay, replayed.nodes
    all_endpoints: dict[str, object] = {}
    verdicts: set[Verdict] = set()
    for node in nodes:
        nf = rp.node(node)
        ipcache, endpoints, policy = desired(nf)
        with NodeMaps(node) as maps:
            assert maps.ipcache.entries() == ipcache, node
            kernel_eps = maps.endpoints.entries()
            # Endpoint ids and ifindexes are the CNI's, not the bus's: everything else must match.
            assert {ip: (e.identity, e.enforce_ingress, e.enforce_egress)
                    for ip, e in kernel_eps.items()} == \
                {ip: (e.identity, e.enforce_ingress, e.enforce_egress)
                 for ip, e in endpoints.items()}, node
            assert maps.policy.blocks() == decode_policy(encode_policy(policy)), node
        all_endpoints.update(endpoints)
        verdicts |= set(policy.values())
    # What was compared is not trivial: all three pods, the remaining policy's deny and allows.
    assert len(all_endpoints) == 3
    assert verdicts == {Verdict.ALLOW, Verdict.DENY}


def test_replayed_history_equals_the_kernel_lb_maps(replayed: Replayed) -> None:
    for node in replayed.nodes:
        nf = replayed.replay.node(node)
        plan = nf.lb.plan()
        with LbMaps(node) as lb:
            # Frontends name their Maglev table by where the kernel placed it: compare the
            # slots each frontend leads to, and every other field as is.
            kernel = {fe: (e._replace(table_int=0, table_ext=0),
                           lb.kernel_table(e.table_int, e.size_int),
                           lb.kernel_table(e.table_ext, e.size_ext))
                      for fe, e in lb.service_entries().items()}
            want = {fe: (e._replace(table_int=0, table_ext=0),
                         plan.tables.get(e.table_int, []) if e.size_int else [],
                         plan.tables.get(e.table_ext, []) if e.size_ext else [])
                    for fe, e in plan.services.items()}
            assert kernel == want, node
            assert lb.backend_entries() == plan.backends, node
        assert plan.services, f"{node}: no service frontends to compare"
