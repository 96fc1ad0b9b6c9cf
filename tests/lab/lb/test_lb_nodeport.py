"""NodePort and LoadBalancer frontends reached from an external host on the underlay, through
the underlay program: SNAT mode (default) and DSR mode, local backends, and
externalTrafficPolicy Local."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyroute2 import NetNS

from services.nodeagent.datapath import FlowReader
from services.nodeagent.datapath.constants import DROP_NO_SERVICE
from tests.support.lblab import (
    EXT_IP,
    LbLab,
    UdpWho,
    node_ip,
    open_conn,
    read_who,
    roundtrip,
    who,
)
from tests.support.netlab import DENIED_TIMEOUT_S, in_netns

pytestmark = pytest.mark.datapath

NODEPORT = 30080
LOCAL_NODEPORT = 30081
LB_IP = "192.0.2.50"
EXTERNAL_IP = "198.51.100.9"
SID, LOCAL_SID = 11, 12


def nodeport_service(lab: LbLab, sid: int, name: str, port: int, **extra: object) -> None:
    lab.service(sid, name, type="NodePort", cluster_ip=f"10.96.1.{sid}",
                ports=[{"name": "", "port": 80, "protocol": "TCP", "node_port": port}],
                **extra)


@pytest.fixture(scope="module")
def lab() -> Iterator[LbLab]:
    """Two nodes of two pods each; both services are backed by node 1's pods only."""
    lab = LbLab.create(nodes=2, pods=2)
    try:
        with NetNS(lab.ext_ns) as ext:
            ext.route("add", dst=f"{LB_IP}/32", gateway=node_ip(0))
            ext.route("add", dst=f"{EXTERNAL_IP}/32", gateway=node_ip(1))
        remote = lab.nodes[1].pods
        nodeport_service(lab, SID, "web", NODEPORT, lb_ips=[LB_IP], external_ips=[EXTERNAL_IP])
        lab.backends(SID, remote)
        nodeport_service(lab, LOCAL_SID, "local", LOCAL_NODEPORT, ext_local=True)
        lab.backends(LOCAL_SID, remote)
        yield lab
    finally:
        lab.destroy()


def set_mode(lab: LbLab, mode: str) -> None:
    lab.set_mode(mode)


def backends(lab: LbLab) -> set[str]:
    return {p.ip for p in lab.nodes[1].pods}


@pytest.mark.parametrize("mode", ["snat", "dsr"])
def test_nodeport_from_the_external_host(lab: LbLab, mode: str) -> None:
    set_mode(lab, mode)
    seen: set[str] = set()
    for _ in range(20):
        res = who(lab.ext_ns, node_ip(0), NODEPORT)
        assert res is not None, f"{mode}: NodePort on node 0 unreachable"
        backend, source = res
        assert backend in backends(lab)
        # SNAT: the remote backend sees node 0; DSR: it sees the client and answers directly
        assert source == (node_ip(0) if mode == "snat" else EXT_IP)
        seen.add(backend)
    assert seen == backends(lab)
    # the LoadBalancer IP routed to node 0 behaves the same
    res = who(lab.ext_ns, LB_IP, 80)
    assert res is not None and res[1] == (node_ip(0) if mode == "snat" else EXT_IP)
    # full-size segments get through (DSR carries the frontend on the SYN only, so data
    # packets do not grow beyond the MTU)
    for _ in range(4):
        s = open_conn(lab.ext_ns, node_ip(0), NODEPORT)
        assert s is not None
        try:
            assert read_who(s) is not None
            assert roundtrip(s, bytes(range(256)) * 80), f"{mode}: bulk data lost"
        finally:
            s.close()
    # an externalIP routed to node 1, where the backends are local: DNAT only
    res = who(lab.ext_ns, EXTERNAL_IP, 80)
    assert res is not None and res[0] in backends(lab) and res[1] == EXT_IP
    # on node 1 the backends are local: DNAT only, the client's address is kept
    res = who(lab.ext_ns, node_ip(1), NODEPORT)
    assert res is not None and res[0] in backends(lab) and res[1] == EXT_IP


@pytest.mark.parametrize("mode", ["snat", "dsr"])
def test_udp_nodeport_from_the_external_host(lab: LbLab, mode: str) -> None:
    import socket

    set_mode(lab, mode)
    remote = lab.nodes[1].pods
    servers = [UdpWho(p.name, p.ip, 5353) for p in remote]
    try:
        lab.service(13, "dns", type="NodePort", cluster_ip="10.96.1.13",
                    ports=[{"name": "", "port": 53, "protocol": "UDP", "node_port": 30053}])
        for p in remote:
            lab.publish(f"cilia.lb.backend.{lab.bid(p) + 7000}", "lb.backend", {
                "id": lab.bid(p) + 7000, "address": p.ip, "port": 5353, "protocol": "UDP",
                "node": lab.nodes[1].name, "state": "active"})
        lab.publish("cilia.lb.members.13", "lb.backends", {
            "service": 13, "added": [["", lab.bid(p) + 7000] for p in remote], "removed": []})
        s = in_netns(lab.ext_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        s.settimeout(3)
        try:
            s.sendto(b"who", (node_ip(0), 30053))
            data, src = s.recvfrom(64)
        finally:
            s.close()
        assert src == (node_ip(0), 30053)            # the reply comes from the frontend
        assert data.decode() in backends(lab)
    finally:
        for srv in servers:
            srv.stop()
        lab.publish("cilia.lb.service.default.dns", "lb.service.delete",
                    {"id": 13, "namespace": "default", "name": "dns"})


def test_external_traffic_policy_local_uses_local_backends_only(lab: LbLab) -> None:
    set_mode(lab, "snat")
    res = who(lab.ext_ns, node_ip(1), LOCAL_NODEPORT)
    assert res is not None and res[1] == EXT_IP          # local, client address preserved
    with FlowReader(lab.nodes[0].name) as flows:
        flows.drain()
        assert who(lab.ext_ns, node_ip(0), LOCAL_NODEPORT, timeout=DENIED_TIMEOUT_S) is None
        drops = [f for f in flows.drain() if f.reason == DROP_NO_SERVICE]
    assert drops and drops[0].src_ip == EXT_IP and drops[0].dst_port == LOCAL_NODEPORT
    # from pods, the same service uses every backend (internalTrafficPolicy Cluster)
    res = who(lab.nodes[0].pods[0].name, "10.96.1.12", 80)
    assert res is not None and res[0] in backends(lab)


def test_nodeport_programs_no_iptables_rule(lab: LbLab) -> None:
    import subprocess

    for ns in [n.lab.node_ns for n in lab.nodes]:
        out = subprocess.run(["ip", "netns", "exec", ns, "iptables-save"], capture_output=True,
                             text=True, check=True).stdout
        assert "-A " not in out
