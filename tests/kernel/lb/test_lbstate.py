"""The node reducer (pure) and the lb map reconcile on a node's real, pinned kernel maps."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from services.common.contract import (
    check_subject,
    lb_backend_subject,
    lb_members_subject,
    lb_service_subject,
    validate,
)
from services.nodeagent.datapath import Programs, unpin
from services.nodeagent.datapath.lb import LbMaps
from services.nodeagent.datapath.maps.lb_services import LbFrontend
from services.nodeagent.lbstate import LbDirty, LbNodeState, frontend_id, table_id

M = 251


def svc(**fields: Any) -> dict[str, Any]:
    base = {"namespace": "default", "name": "web", "type": "NodePort",
            "cluster_ip": "10.96.0.10",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "node_port": 30080}],
            "external_ips": ["192.0.2.1"], "lb_ips": [], "affinity_timeout": 0,
            "ext_local": False, "int_local": False}
    base.update(fields)
    return base


def deliver(state: LbNodeState, subject: str, event_type: str, data: dict[str, Any],
            ) -> LbDirty:
    """Fold one event as the agent does: checked against its schema and subject, typed."""
    payload = validate(event_type, data)
    check_subject(event_type, payload, subject)
    return state.apply(payload)


def feed(state: LbNodeState, sid: int, service: dict[str, Any],
         backends: list[tuple[int, str, str, str]]) -> None:
    deliver(state, lb_service_subject("default", service["name"]), "lb.service",
            {"id": sid, "service": service})
    for bid, ip, node, st in backends:
        deliver(state, lb_backend_subject(bid), "lb.backend", {
            "id": bid, "address": ip, "port": 8080, "protocol": "TCP", "node": node,
            "state": st})
    deliver(state, lb_members_subject(sid), "lb.backends", {
        "service": sid, "added": [["http", b[0]] for b in backends], "removed": []})


def node_object(name: str, ip: str) -> dict[str, Any]:
    return {"kind": "Node", "namespace": "", "name": name, "object": {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}}


def test_frontends_tables_and_local_policies() -> None:
    st = LbNodeState("n1", node_ips=["172.31.0.11"], maglev_size=M)
    deliver(st, "cilia.src.node._.n2", "object.upsert", node_object("n2", "172.31.0.12"))
    feed(st, 5, svc(ext_local=True), [(1, "10.244.1.2", "n1", "active"),
                                      (2, "10.244.2.2", "n2", "active"),
                                      (3, "10.244.2.3", "n2", "terminating")])
    plan = st.plan()
    fid = frontend_id(5, 0)
    fronts = plan.services
    assert set(fronts) == {LbFrontend("10.96.0.10", 80), LbFrontend("192.0.2.1", 80),
                           LbFrontend("172.31.0.11", 30080), LbFrontend("172.31.0.12", 30080)}
    internal = fronts[LbFrontend("10.96.0.10", 80)]
    external = fronts[LbFrontend("172.31.0.12", 30080)]
    assert not internal.external and external.external and not external.dsr
    # pods use both active backends (Maglev); outside traffic only the local one
    assert internal.table_int == table_id(fid, False) and internal.size_int == M
    assert set(plan.tables[internal.table_int]) == {1, 2}
    assert external.table_ext == table_id(fid, True) and plan.tables[external.table_ext] == [1]
    # the terminating backend keeps its map entry (its flows) but is in no table
    assert plan.backends[3].terminating and plan.backends[1].local
    assert not plan.backends[2].local


def test_dsr_mode_marks_external_frontends() -> None:
    st = LbNodeState("n1", node_ips=["172.31.0.11"], lb_mode="dsr", maglev_size=M)
    feed(st, 5, svc(), [(1, "10.244.1.2", "n1", "active")])
    fronts = st.plan().services
    assert fronts[LbFrontend("172.31.0.11", 30080)].dsr
    assert not fronts[LbFrontend("10.96.0.10", 80)].dsr
    with pytest.raises(ValueError, match="lb mode"):
        LbNodeState("n1", lb_mode="tunnel")


@pytest.fixture
def lb_maps() -> Iterator[LbMaps]:
    """The lb maps of a node whose programs are loaded (pins removed afterwards)."""
    node = f"test-{uuid.uuid4().hex[:8]}"
    try:
        progs = Programs(node)
        try:
            maps = LbMaps(node)
            try:
                yield maps
            finally:
                maps.close()
        finally:
            progs.close()
    finally:
        unpin(node)


def test_incremental_plans_touch_only_the_changed_service(lb_maps: LbMaps) -> None:
    maps = lb_maps
    st = LbNodeState("n1", maglev_size=M)
    feed(st, 5, svc(name="a", cluster_ip="10.96.0.5", external_ips=[]),
         [(1, "10.244.1.2", "n1", "active"), (2, "10.244.1.3", "n1", "active")])
    feed(st, 6, svc(name="b", cluster_ip="10.96.0.6", external_ips=[]),
         [(3, "10.244.1.4", "n1", "active"), (4, "10.244.1.5", "n1", "active")])
    maps.apply(st.plan())
    assert len(maps.maglev_tables()) == 2
    # one backend joins b: only b's table is rewritten, a's is not even diffed
    deliver(st, lb_backend_subject(7), "lb.backend", {"id": 7, "address": "10.244.1.9",
                                                      "port": 8080, "protocol": "TCP",
                                                      "node": "n1"})
    dirty = deliver(st, lb_members_subject(6), "lb.backends",
                    {"service": 6, "added": [["http", 7]], "removed": []})
    plan = st.plan(dirty)
    assert plan.table_scope == {table_id(frontend_id(6, 0), False)}
    res = maps.apply(plan)
    assert 0 < res["maglev"].writes <= 1.2 * M / 3     # Maglev: about 1/3 of b's slots move
    assert set(maps.maglev_tables()[table_id(frontend_id(6, 0), False)]) == {3, 4, 7}
    # service a deleted: its frontend and table go, b stays
    dirty = deliver(st, lb_service_subject("default", "a"), "lb.service.delete",
                    {"id": 5, "namespace": "default", "name": "a"})
    maps.apply(st.plan(dirty))
    assert set(maps.service_entries()) == {LbFrontend("10.96.0.6", 80)}
    assert list(maps.maglev_tables()) == [table_id(frontend_id(6, 0), False)]
    assert set(maps.backend_entries()) == {3, 4, 7}


def test_a_bad_frontend_or_backend_never_blocks_the_others(lb_maps: LbMaps) -> None:
    # Issue 10: a backend port 70000 made every later lb map patch fail on every node.
    from services.nodeagent.datapath.maps.lb_backends import LbBackendEntry
    st = LbNodeState("n1", maglev_size=M)
    feed(st, 5, svc(name="a", cluster_ip="10.96.0.5", external_ips=[]),
         [(1, "10.244.1.2", "n1", "active"), (2, "10.244.1.3", "n1", "active")])
    plan = st.plan()
    plan.backends[9] = LbBackendEntry("10.244.1.9", 70000)
    plan.services[LbFrontend("not-an-ip", 80)] = next(iter(plan.services.values()))
    res = lb_maps.apply(plan)
    assert res["backends"].skipped == 1 and res["services"].skipped == 1
    assert set(lb_maps.backend_entries()) == {1, 2}
    assert set(lb_maps.service_entries()) == {LbFrontend("10.96.0.5", 80)}


def test_single_backend_needs_one_slot_and_none_means_no_table() -> None:
    st = LbNodeState("n1", maglev_size=M)
    feed(st, 5, svc(type="ClusterIP", ports=[{"name": "http", "port": 80, "protocol": "TCP",
                                              "node_port": 0}], external_ips=[]),
         [(1, "10.244.1.2", "n1", "active")])
    plan = st.plan()
    entry = plan.services[LbFrontend("10.96.0.10", 80)]
    assert entry.size_int == 1 and plan.tables[entry.table_int] == [1]
    deliver(st, lb_members_subject(5), "lb.backends", {"service": 5, "added": [],
                                                       "removed": [["http", 1]]})
    plan = st.plan()
    assert plan.services[LbFrontend("10.96.0.10", 80)].size_int == 0 and not plan.tables


def test_internal_traffic_policy_local_limits_pod_traffic_to_local_backends() -> None:
    st = LbNodeState("n1", maglev_size=M)
    feed(st, 5, svc(type="ClusterIP", int_local=True, external_ips=[],
                    ports=[{"name": "http", "port": 80, "protocol": "TCP", "node_port": 0}]),
         [(1, "10.244.1.2", "n1", "active"), (2, "10.244.2.2", "n2", "active")])
    plan = st.plan()
    entry = plan.services[LbFrontend("10.96.0.10", 80)]
    assert plan.tables[entry.table_int] == [1]
    # on the other node only its own backend
    other = LbNodeState("n2", maglev_size=M)
    other.view = st.view
    plan = other.plan()
    assert plan.tables[plan.services[LbFrontend("10.96.0.10", 80)].table_int] == [2]
