"""The agent's orchestration, pure: plans as of one revision, and each part's own health."""

from __future__ import annotations

import pytest

from services.common.contract import validate
from services.common.identities import ID_INIT
from services.common.labels import Labels
from services.common.policytypes import PROTO_TCP, Direction, PolicyKey, Verdict
from services.nodeagent.health import (
    DATAPATH_RETRY_MAX_S,
    PART_DATAPATH,
    PART_LB,
    PART_NODEPORT,
    PART_POLICY,
    RETRY_FIRST_S,
    RETRY_MAX_S,
    DatapathHealth,
    backoff_delay,
)
from services.nodeagent.patchplan import address_owners, plan_node, reassigned
from services.nodeagent.state import Dirty, LocalEndpoint, NodeState
from services.policy import Repository, messages, parse_policy
from services.policy.service import to_outgoing

DB, API = 300, 301
DB_IP, API_IP = "10.244.1.5", "10.244.1.6"
POLICY = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
          "metadata": {"name": "p", "namespace": "prod"},
          "spec": {"endpointSelector": {"matchLabels": {"app": "db"}},
                   "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "api"}}],
                                "toPorts": [{"ports": [{"port": "5432",
                                                        "protocol": "TCP"}]}]}]}}
EPS = [LocalEndpoint(1, DB_IP, 7, "lxc1", "prod/db"), LocalEndpoint(2, API_IP, 8, "lxc2",
                                                                     "prod/api")]
ALLOW_5432 = PolicyKey(DB, API, Direction.INGRESS, PROTO_TCP, 5432, 5432)


def _labels(app: str) -> Labels:
    return Labels.parse([f"k8s:app={app}", "k8s:io.kubernetes.pod.namespace=prod"])


def _state() -> NodeState:
    """Two local pods (db, api) and a policy letting api reach db on 5432."""
    state = NodeState("n1")
    repo = Repository()
    events = []
    for num, app, ip in ((DB, "db", DB_IP), (API, "api", API_IP)):
        events.append(("cilia.identity.x", "identity.upsert",
                       {"id": num, "labels": _labels(app).strings()}))
        events.append(("cilia.ipcache.k8s.x", "ipcache.upsert",
                       {"prefix": f"{ip}/32", "identity": num, "host_ip": "172.31.0.11",
                        "node": "n1", "pod": f"prod/{app}"}))
        repo.add_identity(num, _labels(app))
    for msg in messages(repo, repo.upsert(parse_policy(POLICY))):
        out = to_outgoing(msg, 10)
        events.append((out.subject, out.event_type, out.data))
    for seq, (subject, event_type, data) in enumerate(events, 1):
        state.apply(subject, validate(event_type, data), seq)
    return state


def test_a_plan_is_the_state_of_its_revision_and_nothing_folded_later() -> None:
    state = _state()
    plan = plan_node(state, Dirty(ipcache=True, endpoints=True, all_subjects=True), EPS, None)
    rev = state.revision
    assert plan.revision == rev and set(plan.parts) == {"ipcache", "endpoints", "policy"}
    assert plan.policy is not None and plan.policy.scope is None   # start: whole map
    assert plan.policy.desired[ALLOW_5432] == Verdict.ALLOW
    assert plan.local_subjects == {DB, API} and plan.policy_revisions == {DB: 10, API: 0}
    assert plan.endpoint_identities == {DB_IP: DB, API_IP: API}
    # The state goes on folding (a new pod, and the db pod gone): the plan does not move.
    state.apply("cilia.ipcache.k8s.y", validate("ipcache.upsert",
                {"prefix": "10.244.1.9/32", "identity": API, "host_ip": "", "node": "n1",
                 "pod": "prod/api2"}), rev + 1)
    state.apply("cilia.ipcache.k8s.x", validate("ipcache.delete", {"prefix": f"{DB_IP}/32"}),
                rev + 2)
    assert plan.revision == rev and "10.244.1.9/32" not in plan.ipcache  # type: ignore[operator]
    assert f"{DB_IP}/32" in plan.ipcache  # type: ignore[operator]
    later = plan_node(state, Dirty(), EPS, plan.local_subjects)
    assert later.endpoint_identities == {DB_IP: ID_INIT, API_IP: API}
    assert later.local_subjects == {API}
    with pytest.raises(TypeError):
        plan.ipcache["10.0.0.1/32"] = plan.ipcache[f"{DB_IP}/32"]  # type: ignore[index]


def test_policy_is_patched_per_subject_and_whole_after_a_failure() -> None:
    state = _state()
    written = frozenset({DB, API, 999})      # 999: a subject no longer on this node
    plan = plan_node(state, Dirty(subjects={DB}), EPS, written)
    assert plan.parts == ("policy",) and plan.ipcache is None and plan.endpoints is None
    assert plan.policy is not None and plan.policy.scope == {DB, 999}
    assert all(k.subject == DB for k in plan.policy.desired)
    # Nothing changed: nothing to write, the plan is empty and says so.
    idle = plan_node(state, Dirty(), EPS, frozenset({DB, API}))
    assert not idle and idle.revision == state.revision
    # A failed part is rewritten whole whatever changed.
    again = plan_node(state, Dirty(), EPS, frozenset({DB, API}), full={PART_POLICY, "ipcache"})
    assert set(again.parts) == {"ipcache", "policy"}
    assert again.policy is not None and again.policy.scope is None
    # While its retry waits, a failing part stays out of event-driven plans.
    waiting = plan_node(state, Dirty(ipcache=True, subjects={DB}), EPS, frozenset({DB, API}),
                        full={PART_POLICY}, skip={PART_POLICY})
    assert waiting.parts == ("ipcache",) and waiting.policy is None


def test_each_part_has_its_own_error() -> None:
    h = DatapathHealth()
    h.failed(PART_LB, "lb map update failed: map 'lb_backends': update failed: map is full")
    h.failed(PART_POLICY, "map update failed: map 'policy': update failed: map is full")
    assert h.degraded and h.failing(["ipcache", PART_POLICY, PART_LB]) == {PART_POLICY, PART_LB}
    h.succeeded([PART_POLICY, "ipcache", "endpoints"])     # a successful node-map patch
    assert h.errors == {PART_LB: "lb map update failed: map 'lb_backends': update failed: "
                                 "map is full"}
    assert h.degraded and h.summary().startswith("lb: lb map update failed")
    h.succeeded([PART_LB])
    assert not h.degraded and h.summary() == "" and h.stats()["errors"] == {}


def test_backoff_doubles_up_to_a_bound_and_restarts_after_a_success() -> None:
    assert [backoff_delay(i) for i in range(3)] == [RETRY_FIRST_S, 2 * RETRY_FIRST_S,
                                                    4 * RETRY_FIRST_S]
    assert backoff_delay(10_000) == RETRY_MAX_S
    with pytest.raises(ValueError, match="negative"):
        backoff_delay(-1)
    h = DatapathHealth()
    delays = [h.failed(PART_NODEPORT, "no device") for _ in range(12)]
    assert delays[0] == RETRY_FIRST_S and delays == sorted(delays) and delays[-1] == RETRY_MAX_S
    assert h.failures[PART_NODEPORT] == 12
    h.succeeded([PART_NODEPORT])
    assert h.failed(PART_NODEPORT, "no device again") == RETRY_FIRST_S
    # Loading programs compiles them: that part backs off further.
    assert max(h.failed(PART_DATAPATH, "stale pin") for _ in range(20)) == DATAPATH_RETRY_MAX_S


def test_drift_is_counted_per_map() -> None:
    h = DatapathHealth()
    assert h.repaired({"ipcache": 2, "policy": 0}) == 2
    assert h.repaired({"ipcache": 1, "lb_services": 3}) == 4
    h.retrying(PART_LB)
    assert h.stats() == {"error": "", "errors": {}, "drift": {"ipcache": 3, "lb_services": 3},
                         "retries": {PART_LB: 1}}


def test_an_address_whose_pod_goes_or_changes_is_reassigned() -> None:
    state = _state()
    before = address_owners(state)
    assert before == {DB_IP: (DB, "prod/db"), API_IP: (API, "prod/api")}
    plan = plan_node(state, Dirty(ipcache=True), EPS, None)
    assert plan.owners == before
    # api's pod goes, db's address now belongs to a new pod of the same identity
    state.apply("cilia.ipcache.k8s.x", validate("ipcache.delete", {"prefix": f"{API_IP}/32"}), 90)
    state.apply("cilia.ipcache.k8s.x", validate("ipcache.upsert",
                {"prefix": f"{DB_IP}/32", "identity": DB, "host_ip": "172.31.0.11",
                 "node": "n1", "pod": "prod/db-2"}), 91)
    after = plan_node(state, Dirty(ipcache=True), EPS, None).owners
    assert after is not None
    assert reassigned(before, after) == [DB_IP, API_IP]
    assert reassigned(after, after) == []
