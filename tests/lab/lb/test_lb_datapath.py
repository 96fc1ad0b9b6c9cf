"""Service load balancing with real packets: ClusterIP from pods, Maglev spread, conntrack
across backend changes, session affinity, policy after translation, no-backend drops."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from services.nodeagent.datapath import FlowReader
from services.nodeagent.datapath.constants import DROP_NO_SERVICE
from tests.support.lblab import (
    WHO_PORT,
    LbLab,
    UdpWho,
    egress_deny,
    open_conn,
    read_who,
    roundtrip,
    who,
)
from tests.support.netlab import DENIED_TIMEOUT_S, in_netns

pytestmark = pytest.mark.datapath

VIP = "10.96.0.10"
SID = 7


@pytest.fixture(scope="module")
def lab() -> Iterator[LbLab]:
    lab = LbLab.create(nodes=1, pods=6)
    try:
        yield lab
    finally:
        lab.destroy()


@pytest.fixture
def svc(lab: LbLab) -> Iterator[LbLab]:
    """A ClusterIP VIP:80 -> pods 1-3 :8080 (pod 0 is the client); removed afterwards."""
    lab.configure()
    pods = lab.nodes[0].pods
    lab.service(SID, "web", cluster_ip=VIP)
    lab.backends(SID, pods[1:4])
    try:
        yield lab
    finally:
        lab.publish("cilia.lb.service.default.web", "lb.service.delete",
                    {"id": SID, "namespace": "default", "name": "web"})
        for p in pods:
            lab.publish(f"cilia.lb.backend.{lab.bid(p)}", "lb.backend.delete",
                        {"id": lab.bid(p)})


def spread(lab: LbLab, n: int) -> Counter[str]:
    client = lab.nodes[0].pods[0]
    got: Counter[str] = Counter()
    for _ in range(n):
        res = who(client.name, VIP, 80)
        assert res is not None, "connection to the VIP failed"
        backend, seen_src = res
        assert seen_src == client.ip        # ClusterIP: DNAT only, no SNAT
        got[backend] += 1
    return got


def test_clusterip_spreads_over_all_backends_and_replies_come_from_the_vip(svc: LbLab) -> None:
    pods = svc.nodes[0].pods
    got = spread(svc, 300)
    assert set(got) == {p.ip for p in pods[1:4]}
    for backend, n in got.items():
        assert 0.20 <= n / 300 <= 0.46, (backend, n)
    # UDP shows the reply source directly: it is the VIP, not the backend
    udp = [UdpWho(p.name, p.ip, 5353) for p in pods[1:4]]
    try:
        svc.service(SID + 1, "dns", cluster_ip="10.96.0.53",
                    ports=[{"name": "", "port": 53, "protocol": "UDP", "node_port": 0}])
        for p in pods[1:4]:
            svc.publish(f"cilia.lb.backend.{svc.bid(p) + 50000}", "lb.backend", {
                "id": svc.bid(p) + 50000, "address": p.ip, "port": 5353, "protocol": "UDP",
                "node": svc.nodes[0].name, "state": "active"})
        svc.publish(f"cilia.lb.members.{SID + 1}", "lb.backends", {
            "service": SID + 1, "added": [["", svc.bid(p) + 50000] for p in pods[1:4]],
            "removed": []})
        s = in_netns(pods[0].name, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        s.settimeout(3)
        try:
            s.sendto(b"who", ("10.96.0.53", 53))
            data, src = s.recvfrom(64)
        finally:
            s.close()
        assert src == ("10.96.0.53", 53)
        assert data.decode() in {p.ip for p in pods[1:4]}
    finally:
        for u in udp:
            u.stop()
        svc.publish("cilia.lb.service.default.dns", "lb.service.delete",
                    {"id": SID + 1, "namespace": "default", "name": "dns"})


def test_established_flows_keep_their_backend_across_scaling(svc: LbLab) -> None:
    pods = svc.nodes[0].pods
    client = pods[0]
    conns = []
    for _ in range(24):
        s = open_conn(client.name, VIP, 80)
        assert s is not None
        res = read_who(s)
        assert res is not None
        conns.append((s, res[0]))
    try:
        gone = pods[3].ip
        svc.backends(SID, [], removed=[pods[3]])             # 3 -> 2
        assert gone not in spread(svc, 60)                     # removed: no new connections
        svc.backends(SID, pods[4:6])                           # 2 -> 4
        for s, backend in conns:
            if backend != gone:
                assert roundtrip(s), f"connection to {backend} broke on scaling"
        assert set(spread(svc, 120)) == {pods[1].ip, pods[2].ip, pods[4].ip, pods[5].ip}
        table = svc.nodes[0].lbmaps.maglev_tables()
        assert {b for t in table.values() for b in t} == {svc.bid(p) for p in
                                                          (pods[1], pods[2], pods[4], pods[5])}
    finally:
        for s, _ in conns:
            s.close()
        svc.backends(SID, [], removed=pods[4:6])


def test_session_affinity_pins_a_client_to_one_backend(svc: LbLab) -> None:
    svc.service(SID, "web", cluster_ip=VIP, affinity_timeout=60)
    try:
        got = spread(svc, 50)
        assert len(got) == 1, got
        entries = svc.nodes[0].lbmaps.affinity_entries()
        assert list(entries.values()) == [svc.bid(next(p for p in svc.nodes[0].pods
                                                       if p.ip in got))]
    finally:
        svc.service(SID, "web", cluster_ip=VIP)


def test_service_without_backends_drops_with_a_reason(svc: LbLab) -> None:
    pods = svc.nodes[0].pods
    node = svc.nodes[0]
    svc.service(SID + 2, "empty", cluster_ip="10.96.0.99")
    try:
        with FlowReader(node.name) as flows:
            flows.drain()
            assert who(pods[0].name, "10.96.0.99", 80, timeout=DENIED_TIMEOUT_S) is None
            time.sleep(0.05)
            drops = [f for f in flows.drain() if f.reason == DROP_NO_SERVICE]
        assert drops and drops[0].reason_name == "no service backend"
        assert drops[0].dst_ip == "10.96.0.99" and drops[0].src_ip == pods[0].ip
        assert drops[0].src_identity == svc.identity(pods[0])
    finally:
        svc.publish("cilia.lb.service.default.empty", "lb.service.delete",
                    {"id": SID + 2, "namespace": "default", "name": "empty"})


def test_egress_policy_sees_the_backend_behind_the_vip(svc: LbLab) -> None:
    pods = svc.nodes[0].pods
    client, target = pods[0], pods[1]
    # only pod 1 backs the service; a deny from the client to pod 1's identity
    svc.backends(SID, [], removed=pods[2:4])
    svc.configure(egress_deny(svc.identity(client), svc.identity(target), WHO_PORT))
    try:
        with FlowReader(svc.nodes[0].name) as flows:
            flows.drain()
            assert who(client.name, VIP, 80, timeout=DENIED_TIMEOUT_S) is None
            time.sleep(0.05)
            drops = [f for f in flows.drain() if f.verdict == "DROPPED"]
        assert drops and drops[0].dst_ip == target.ip and drops[0].dst_port == WHO_PORT
        assert drops[0].dst_identity == svc.identity(target)
        svc.configure()
        assert who(client.name, VIP, 80) == (target.ip, client.ip)
    finally:
        svc.configure()


def test_lb_conntrack_gc_keeps_live_flows(svc: LbLab) -> None:
    client = svc.nodes[0].pods[0]
    s = open_conn(client.name, VIP, 80)
    assert s is not None and read_who(s) is not None
    try:
        lbmaps = svc.nodes[0].lbmaps
        kinds = {e.kind for e in lbmaps.ct_entries()}
        assert {"service", "revnat"} <= kinds
        assert lbmaps.gc(max_idle_s=3600) == 0            # fresh entries stay
        time.sleep(1.1)
        assert roundtrip(s)                                # traffic refreshes them
        assert lbmaps.gc(max_idle_s=1.0) == 0
        assert lbmaps.gc(max_idle_s=0, now_ns=time.monotonic_ns() + 10**9) > 0
    finally:
        s.close()


def test_terminating_backend_keeps_its_flows_and_takes_no_new_ones(svc: LbLab) -> None:
    pods = svc.nodes[0].pods
    conns = []
    for _ in range(12):
        s = open_conn(pods[0].name, VIP, 80)
        assert s is not None
        res = read_who(s)
        assert res is not None
        conns.append((s, res[0]))
    try:
        victim = next(ip for _, ip in conns)
        pod = next(p for p in pods if p.ip == victim)
        svc.publish(f"cilia.lb.backend.{svc.bid(pod)}", "lb.backend", {
            "id": svc.bid(pod), "address": pod.ip, "port": WHO_PORT, "protocol": "TCP",
            "node": svc.nodes[0].name, "state": "terminating"})
        assert victim not in spread(svc, 60)
        assert all(roundtrip(s) for s, ip in conns if ip == victim)
    finally:
        for s, _ in conns:
            s.close()


def test_agent_restart_rewrites_nothing(svc: LbLab) -> None:
    from services.nodeagent.datapath.lb import LbMaps
    from services.nodeagent.lbstate import LbNodeState

    node = svc.nodes[0]
    fresh = LbNodeState(node.name, node_ips=[node.ip], maglev_size=251)
    fresh.view = node.state.view          # the same events folded again
    fresh.node_addrs, fresh.node_macs = node.state.node_addrs, node.state.node_macs
    with LbMaps(node.name) as maps:       # opened from the pins, like a restarted agent
        results = maps.apply(fresh.plan())
    assert all(r.writes == 0 for r in results.values()), results
    assert results["maglev"].unchanged == 251


def test_a_pod_reaches_itself_through_its_service(svc: LbLab) -> None:
    pods = svc.nodes[0].pods
    client = pods[0]
    svc.backends(SID, [client], removed=pods[2:4])     # backends: the client and pod 1
    try:
        seen: Counter[str] = Counter()
        for _ in range(40):
            res = who(client.name, VIP, 80)
            assert res is not None, "hairpin connection failed"
            backend, source = res
            # the pod never sees its own address as the source of a connection to itself
            assert source == ("169.254.42.1" if backend == client.ip else client.ip)
            seen[backend] += 1
        assert set(seen) == {client.ip, pods[1].ip}
        s = open_conn(client.name, VIP, 80)
        assert s is not None
        try:
            read_who(s)
            assert roundtrip(s, b"x" * 3000)
        finally:
            s.close()
    finally:
        svc.backends(SID, pods[2:4], removed=[client])
