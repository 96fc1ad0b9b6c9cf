"""Real packets between pod namespaces through the attached programs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest
from pyroute2 import NetNS

from services.common.identities import ID_WORLD
from services.common.policytypes import (
    ANY_PEER,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    Direction,
    PolicyKey,
    Verdict,
)
from services.nodeagent.datapath import (
    Counter,
    EndpointEntry,
    FlowReader,
    FlowRecord,
    IpcacheEntry,
    VerdictCount,
    attach,
    attached_programs,
    detach,
)
from services.nodeagent.datapath.kernel.programs import TC_PARENT_EGRESS, TC_PARENT_INGRESS
from services.nodeagent.datapath.maps.conntrack import CT_LIFETIME_TCP
from tests.lab.datapath.conftest import ID_POD1, ID_POD2, ID_POD3, Env
from tests.support.netlab import (
    ALLOWED_TIMEOUT_S,
    DENIED_TIMEOUT_S,
    UdpEcho,
    ping_ok,
    roundtrip,
    tcp_blocked,
    tcp_ok,
    tcp_open,
    udp_ok,
)

pytestmark = pytest.mark.datapath

IDS = [ID_POD1, ID_POD2, ID_POD3]
IN, OUT = Direction.INGRESS, Direction.EGRESS


def configure(env: Env, *, enforce: dict[int, tuple[bool, bool]] | None = None,
              policy: dict[PolicyKey, Verdict] | None = None, known: int = 3) -> None:
    """Reconcile the maps to a scenario: the first ``known`` pods are endpoints and in the
    ipcache; ``enforce`` maps a pod index to (ingress, egress) enforcement."""
    enforce = enforce or {}
    pods = env.pods[:known]
    env.maps.ipcache.reconcile({f"{p.ip}/32": IpcacheEntry(IDS[i]) for i, p in enumerate(pods)})
    env.maps.endpoints.reconcile({
        p.ip: EndpointEntry(i + 1, IDS[i], p.ifindex, *enforce.get(i, (False, False)))
        for i, p in enumerate(pods)})
    env.maps.policy.reconcile(policy or {})
    env.maps.conntrack.gc(now_ns=2**64 - 1)   # forget flows of earlier scenarios


def tcp_rule(subject: int, peer: int, direction: int, port: int, end: int = 0,
             ) -> PolicyKey:
    return PolicyKey(subject, peer, direction, PROTO_TCP, port, end or port)


def test_open_by_default(env: Env) -> None:
    configure(env)
    p1, p2, _ = env.pods
    for pod in env.pods:
        hooks = attached_programs(pod.host_if, netns=env.lab.node_ns)
        assert hooks == {"ingress": "cil_from_pod", "egress": "cil_to_pod"}
    assert tcp_ok(p1, p2.ip, 80)
    assert tcp_ok(p2, p1.ip, 8080)


def test_ingress_default_deny_then_allow(env: Env) -> None:
    p1, p2, _ = env.pods
    configure(env, enforce={1: (True, False)})
    assert tcp_blocked(p1, p2.ip, 80)
    assert tcp_ok(p2, p1.ip, 80), "pod2's egress is not enforced"
    configure(env, enforce={1: (True, False)},
              policy={tcp_rule(ID_POD2, ID_POD1, IN, 80): Verdict.ALLOW})
    assert tcp_ok(p1, p2.ip, 80)
    assert tcp_blocked(p1, p2.ip, 8080), "only port 80 is allowed"


def test_replies_pass_but_reverse_direction_is_denied(env: Env) -> None:
    p1, p2, _ = env.pods
    allow = {tcp_rule(ID_POD2, ID_POD1, IN, 80): Verdict.ALLOW}
    configure(env, enforce={1: (True, True)}, policy=allow)
    # pod2 enforces egress with no egress rule: its replies pass only through conntrack.
    assert tcp_ok(p1, p2.ip, 80)
    assert tcp_blocked(p2, p1.ip, 80), "a new connection from pod2 has no egress policy"

    conn = tcp_open(p1, p2.ip, 80)
    try:
        assert roundtrip(conn)
        assert roundtrip(conn), "replies pass on conntrack, forward packets on the policy"
        env.maps.policy.reconcile({})
        assert tcp_blocked(p1, p2.ip, 80), "a new connection needs the policy"
        conn.settimeout(DENIED_TIMEOUT_S)
        assert not roundtrip(conn, b"denied"), \
            "the established flow's forward packets are checked against the current policy"
        assert [e for e in env.maps.conntrack.entries() if e.dport == 80 and e.src == p1.ip], \
            "the flow is still tracked: the policy, not an expiry, stopped it"
        env.maps.policy.reconcile(allow)
        conn.settimeout(ALLOWED_TIMEOUT_S * 3)
        assert conn.recv(64) == b"denied", "allowed again, the retransmission gets through"
    finally:
        conn.close()


def test_deny_beats_allow(env: Env) -> None:
    p1, p2, p3 = env.pods
    policy = {
        PolicyKey(ID_POD2, ANY_PEER, IN, 0, 0, 0): Verdict.ALLOW,
        tcp_rule(ID_POD2, ID_POD1, IN, 5432): Verdict.DENY,
        tcp_rule(ID_POD2, ID_POD1, IN, 9000, 9010): Verdict.DENY,
        tcp_rule(ID_POD2, ID_POD1, IN, 9003): Verdict.ALLOW,
    }
    configure(env, enforce={1: (True, False)}, policy=policy)
    assert tcp_ok(p1, p2.ip, 80)
    assert tcp_blocked(p1, p2.ip, 5432)
    assert tcp_blocked(p1, p2.ip, 9003), "the wider deny covers the specific allow"
    assert tcp_ok(p3, p2.ip, 5432), "the deny is for pod1 only"


def test_port_range(env: Env) -> None:
    p1, p2, _ = env.pods
    configure(env, enforce={1: (True, False)},
              policy={tcp_rule(ID_POD2, ID_POD1, IN, 9000, 9005): Verdict.ALLOW})
    assert tcp_ok(p1, p2.ip, 9000)
    assert tcp_ok(p1, p2.ip, 9003)
    assert tcp_blocked(p1, p2.ip, 9008)
    assert tcp_blocked(p1, p2.ip, 8080)


def test_unknown_destination_is_world(env: Env) -> None:
    p3 = env.pods[2]
    # pod3 plays a machine outside the cluster: no programs, no ipcache or endpoint entry.
    detach(p3.host_if, netns=env.lab.node_ns)
    assert attached_programs(p3.host_if, netns=env.lab.node_ns) == {}
    configure(env, enforce={0: (False, True)}, known=2,
              policy={tcp_rule(ID_POD1, ID_WORLD, OUT, 80): Verdict.ALLOW})
    try:
        records = _world_traffic(env)
    finally:
        attach(env.programs, p3.host_if, netns=env.lab.node_ns)
    assert records[0].verdict == "DROPPED"
    assert records[0].dst_identity == ID_WORLD
    assert records[0].src_identity == ID_POD1


def _world_traffic(env: Env) -> list[FlowRecord]:
    p1, p2, p3 = env.pods
    with FlowReader(env.node) as flows:
        flows.drain()
        assert tcp_ok(p1, p3.ip, 80)
        assert tcp_blocked(p1, p3.ip, 8080)
        assert tcp_blocked(p1, p2.ip, 80), "pod2 has an identity: it is not world"
        return _collect(flows, lambda r: r.dst_ip == p3.ip and r.dst_port == 8080)[0]


def test_drop_and_forward_events(env: Env) -> None:
    p1, p2, _ = env.pods
    configure(env, enforce={1: (True, False)},
              policy={tcp_rule(ID_POD2, ID_POD1, IN, 80): Verdict.ALLOW})
    denied_in = VerdictCount("DROPPED", "policy denied", "ingress")
    allowed_in = VerdictCount("FORWARDED", "policy allowed", "ingress")
    metrics = env.maps.metrics()
    before = metrics.read()
    with FlowReader(env.node) as flows:
        flows.drain()
        assert tcp_blocked(p1, p2.ip, 5432)
        assert tcp_ok(p1, p2.ip, 80)
        drops, fwd = _collect(flows,
                              lambda r: r.dst_port == 5432 and r.verdict == "DROPPED",
                              lambda r: r.dst_port == 80 and r.direction == "ingress")
    drop = drops[0]
    assert (drop.src_identity, drop.dst_identity) == (ID_POD1, ID_POD2)
    assert drop.reason_name == "policy denied"
    assert (drop.src_ip, drop.dst_ip, drop.proto_name) == (p1.ip, p2.ip, "TCP")
    assert drop.direction == "ingress"
    assert drop.ifindex == p2.ifindex
    assert drop.endpoint_id == 2
    assert fwd[0].verdict == "FORWARDED"
    assert fwd[0].reason_name == "policy allowed"
    after = metrics.read()
    metrics.close()
    zero = Counter(0, 0)
    assert after[denied_in].packets > before.get(denied_in, zero).packets
    assert after[allowed_in].packets == before.get(allowed_in, zero).packets + 1
    assert after[denied_in].bytes >= after[denied_in].packets * 40
    as_dict = drop.as_dict()
    assert as_dict["reason_name"] == "policy denied" and as_dict["dst_port"] == 5432


def test_deny_rule_reason(env: Env) -> None:
    p1, p2, _ = env.pods
    configure(env, policy={tcp_rule(ID_POD2, ID_POD1, IN, 5432): Verdict.DENY})
    with FlowReader(env.node) as flows:
        flows.drain()
        assert tcp_blocked(p1, p2.ip, 5432)
        drops = _collect(flows, lambda r: r.dst_port == 5432 and r.verdict == "DROPPED")[0]
    assert drops[0].reason_name == "policy denied by deny rule"


def _collect(flows: FlowReader, *preds: Callable[[FlowRecord], bool],
             wait_s: float = 2.0) -> list[list[FlowRecord]]:
    """Poll until every predicate has matched a record; the matches per predicate."""
    deadline = time.monotonic() + wait_s
    seen: list[FlowRecord] = []
    while time.monotonic() < deadline:
        seen += flows.poll(50)
        found = [[r for r in seen if pred(r)] for pred in preds]
        if all(found):
            return found
    raise AssertionError(f"no matching flow event among {seen}")


def test_udp_and_icmp_replies_pass_through_conntrack(env: Env) -> None:
    p1, p2, _ = env.pods
    echo = UdpEcho(p2.name, p2.ip, 5353)
    try:
        configure(env, enforce={1: (True, True)})
        assert not udp_ok(p1, p2.ip, 5353, DENIED_TIMEOUT_S)
        assert not ping_ok(p1, p2.ip, DENIED_TIMEOUT_S)
        configure(env, enforce={1: (True, True)}, policy={
            PolicyKey(ID_POD2, ID_POD1, IN, PROTO_UDP, 5353, 5353): Verdict.ALLOW,
            PolicyKey(ID_POD2, ID_POD1, IN, PROTO_ICMP, 0, 0): Verdict.ALLOW})
        # pod2 enforces egress with no egress rule: the replies pass only through conntrack.
        assert udp_ok(p1, p2.ip, 5353)
        assert ping_ok(p1, p2.ip)
        assert not ping_ok(p2, p1.ip, DENIED_TIMEOUT_S), "no egress rule for pod2's new ICMP"
    finally:
        echo.stop()
    flows = {(e.proto, e.direction, e.src, e.dst) for e in env.maps.conntrack.entries()}
    assert (PROTO_UDP, int(IN), p1.ip, p2.ip) in flows
    assert (PROTO_ICMP, int(IN), p1.ip, p2.ip) in flows


def test_conntrack_entries_and_gc(env: Env) -> None:
    p1, p2, _ = env.pods
    configure(env)
    assert tcp_ok(p1, p2.ip, 8080)
    entries = [e for e in env.maps.conntrack.entries() if e.dport == 8080]
    # One entry at pod1's veth (its egress) and one at pod2's (its ingress).
    assert {(e.src, e.dst, e.direction) for e in entries} == {(p1.ip, p2.ip, int(OUT)),
                                                              (p1.ip, p2.ip, int(IN))}
    now = time.monotonic_ns()
    assert all(now < e.expires_ns <= now + CT_LIFETIME_TCP * 10**9 for e in entries)
    assert all(e.created_ns <= now for e in entries)
    assert env.maps.conntrack.gc() == 0, "nothing has expired yet"
    expire_after = max(e.expires_ns for e in entries)
    assert env.maps.conntrack.gc(now_ns=expire_after) >= 2
    assert not [e for e in env.maps.conntrack.entries() if e.dport == 8080]


def test_spoofed_source_is_dropped(env: Env) -> None:
    p1, p2, _ = env.pods
    configure(env)
    # pod1's endpoint entry names pod2's veth: pod1's packets now come from the wrong veth.
    env.maps.endpoints.reconcile({
        p1.ip: EndpointEntry(1, ID_POD1, p2.ifindex),
        p2.ip: EndpointEntry(2, ID_POD2, p2.ifindex)})
    with FlowReader(env.node) as flows:
        flows.drain()
        assert tcp_blocked(p1, p2.ip, 80)
        drops = _collect(flows, lambda r: r.reason_name == "invalid source ip")[0]
    assert drops[0].src_ip == p1.ip


def test_attach_twice_replaces(env: Env) -> None:
    p1 = env.pods[0]
    attach(env.programs, p1.host_if, netns=env.lab.node_ns)
    attach(env.programs, p1.host_if, netns=env.lab.node_ns)
    with NetNS(env.lab.node_ns) as ns:
        for parent in (TC_PARENT_INGRESS, TC_PARENT_EGRESS):
            handles = {m["handle"] for m in ns.get_filters(index=p1.ifindex, parent=parent)
                       if m["handle"]}
            assert len(handles) == 1
    configure(env)
    assert tcp_ok(p1, env.pods[1].ip, 80)


def test_flow_reader_thread_and_asyncio(env: Env) -> None:
    p1, p2, _ = env.pods
    configure(env, enforce={1: (True, False)})
    got: list[FlowRecord] = []
    stop = threading.Event()
    with FlowReader(env.node) as flows:
        flows.drain()
        t = threading.Thread(target=flows.run, args=(got.append, stop, 20))
        t.start()
        try:
            assert tcp_blocked(p1, p2.ip, 9000)
            deadline = time.monotonic() + 2
            while not any(r.dst_port == 9000 for r in got) and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            stop.set()
            t.join()
        assert any(r.dst_port == 9000 and r.verdict == "DROPPED" for r in got)

        async def first_drop() -> FlowRecord:
            async for rec in flows.aiter(20):
                if rec.dst_port == 9003 and rec.direction == "ingress":
                    return rec
            raise AssertionError("reader stopped")

        async def scenario() -> FlowRecord:
            task = asyncio.create_task(asyncio.wait_for(first_drop(), 3))
            await asyncio.to_thread(tcp_blocked, p1, p2.ip, 9003)
            return await task

        rec = asyncio.run(scenario())
        assert (rec.verdict, rec.src_identity, rec.dst_identity) == ("DROPPED", ID_POD1, ID_POD2)
