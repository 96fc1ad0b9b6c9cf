"""``--routing tunnel``: cross-node pod traffic in VXLAN with the source identity in the VNI.

One 2-node tunnel lab for the module; the three-tier example is spread over both nodes
(frontend and database on one, backend on the other), and the same scenario runs on a native
lab for the verdict comparison.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from pyroute2 import IPRoute

from services.common.identities import ID_HOST, ID_REMOTE_NODE, ID_WORLD
from services.common.netns import open_iproute
from services.lab import CLUSTER_POD_CIDR, WORLD_IPS, plan_lab
from services.nodeagent.datapath import attached_programs, open_maps
from services.nodeagent.datapath.maps.ipcache import ipcache_keys
from services.nodeagent.datapath.overlay import (
    OVERLAY_DEVICE,
    OVERLAY_PORT,
    PROG_FROM_OVERLAY,
    PROG_TO_OVERLAY,
    overlay_mtu,
)
from tests.support.capture import (
    drain,
    outer_ipv4_sources,
    send_udp,
    sniff,
    vxlan_packets,
    vxlan_payload,
)
from tests.support.cluster import CONNECT, Cluster
from tests.support.threetier import (
    EXPECTED,
    NS,
    PORTS,
    Placement,
    apply_policy,
    deploy,
    placement,
    remove_policy,
    verdicts,
)

LARGE_PAYLOAD = 4000          # bytes: more than one 1450-byte packet, fragments in the tunnel
FLOW_WAIT_S = 10.0


def _netns(lab: Cluster, node: str) -> str:
    return f"cilia-{lab.lab}-{node.removeprefix(lab.lab + '-')}"


def _link(ipr: IPRoute, name: str) -> Any:
    found = ipr.link_lookup(ifname=name)
    assert found, f"{name} missing"
    return ipr.get_links(found[0])[0]


def _flow(lab: Cluster, node: str, src_ip: str, dst_ip: str, port: int,
          verdict: str, since: float = 0.0, direction: str = "ingress") -> dict[str, Any]:
    """Wait for a flow of ``node`` seen after ``since`` (wall clock) and return the latest."""
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        flows = lab.json("observe", "--node", node, "--last", "200")
        found[:] = [f for f in flows if f["src_ip"] == src_ip and f["dst_ip"] == dst_ip
                    and f["dst_port"] == port and f["verdict"] == verdict
                    and f["direction"] == direction and f["time"] >= since]
        return bool(found)

    lab.wait(f"{verdict} flow {src_ip} -> {dst_ip}:{port} on {node}", seen, FLOW_WAIT_S)
    return found[-1]


@contextmanager
def ipcache_without(node: str, ips: Sequence[str]) -> Iterator[None]:
    """Remove the /32 entries of ``ips`` from a node's kernel ipcache; put them back after."""
    maps = open_maps(node)
    backend = maps.ipcache.reconciler.backend
    keys = set(ipcache_keys([f"{ip}/32" for ip in ips]))
    saved = {k: v for k, v in backend.read_all().items() if k in keys}
    assert len(saved) == len(ips), "the entries to remove are not in the ipcache"
    try:
        backend.delete(list(saved))
        assert not keys & set(backend.read_all()), "entries still present"
        yield
    finally:
        backend.update(list(saved.items()))
        maps.close()


@pytest.fixture(scope="module", autouse=True)
def _tunnel_without_the_policy_afterwards(tunnel: Cluster) -> Iterator[None]:
    """The tunnel lab is the package's (test_established): the policy goes at the end."""
    yield
    remove_policy(tunnel)


def test_lab_has_a_vxlan_device_per_node_with_the_overlay_programs(tunnel: Cluster) -> None:
    nodes = [f"{tunnel.lab}-node{i}" for i in (1, 2)]
    for node in nodes:
        netns = _netns(tunnel, node)
        ipr = open_iproute(netns)
        try:
            link = _link(ipr, OVERLAY_DEVICE)
            data = link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
            assert data.get_attr("IFLA_VXLAN_COLLECT_METADATA") == 1
            assert data.get_attr("IFLA_VXLAN_PORT") == OVERLAY_PORT
            assert link.get_attr("IFLA_MTU") == overlay_mtu()
            other = next(n for n in nodes if n != node)
            other_cidr = f"10.244.{other[-1]}.0"
            routes = ipr.get_routes(dst=other_cidr, dst_len=24, table=254)
            assert [(r.get_attr("RTA_OIF"), r.get_attr("RTA_GATEWAY")) for r in routes] == [
                (link["index"], _node_ip(tunnel, other))]
        finally:
            ipr.close()
        assert attached_programs(OVERLAY_DEVICE, netns) == {
            "ingress": PROG_FROM_OVERLAY, "egress": PROG_TO_OVERLAY}


def test_cross_node_tcp_and_udp(tunnel: Cluster) -> None:
    where = deploy(tunnel)
    assert where.nodes["backend"] != where.nodes["frontend"]
    assert where.nodes["backend"] != where.nodes["database"]
    ips = where.ips
    for src, dst in (("frontend", "backend"), ("backend", "database")):
        assert tunnel.connect(f"deploy/{src}", NS, ips[dst], PORTS[dst]) == "OK"
        assert tunnel.connect(f"deploy/{src}", NS, ips[dst], PORTS[dst], udp=True) == "OK"
    # Pods get the tunnel's MTU, and a datagram bigger than it crosses (fragmented).
    link = tunnel.ok("exec", "deploy/frontend", "-n", NS, "--", "ip", "-o", "link", "show",
                     "eth0")
    assert f"mtu {overlay_mtu()} " in link
    res = tunnel.cilia("exec", "deploy/frontend", "-n", NS, "--", "cilia-connect", ips["backend"],
                       str(PORTS["backend"]), "--udp", "--payload", "x" * LARGE_PAYLOAD)
    assert res.stdout.strip() == "OK", res.stdout + res.stderr
    body = tunnel.ok("exec", "deploy/frontend", "-n", NS, "--", "curl", "-s", "-m", "2",
                     f"http://{ips['backend']}:{PORTS['backend']}/")
    assert body.startswith("backend-")


def _node_ip(lab: Cluster, node: str) -> str:
    return str(plan_lab(lab.lab, 2).node(node).node_ip)


def _from_node(lab: Cluster, node: str, host: str, port: int) -> str:
    """Probe from a node's own network stack (its netns), not from a pod."""
    res = subprocess.run(["ip", "netns", "exec", _netns(lab, node), CONNECT, host, str(port),
                          "--timeout", "1"], capture_output=True, text=True, timeout=30)
    return res.stdout.strip()


def test_node_reaches_a_remote_pod_through_the_tunnel_as_host(tunnel: Cluster) -> None:
    where = placement(tunnel)
    sender, fe = where.nodes["backend"], where.ips["frontend"]
    underlay = f"cilia-{tunnel.lab}-underlay"
    since = time.time()
    with sniff(underlay, "n" + sender.rsplit("node", 1)[1]) as sock:
        assert _from_node(tunnel, sender, fe, PORTS["frontend"]) == "OK"
        packets = vxlan_packets(drain(sock), OVERLAY_PORT)
    # the sender's own address goes out as host (1); the receiver sees a remote node
    assert {p.vni for p in packets if p.inner_dst == fe} == {ID_HOST}
    flow = _flow(tunnel, where.nodes["frontend"], _node_ip(tunnel, sender), fe,
                 PORTS["frontend"], "FORWARDED", since)
    assert flow["src_identity"] == ID_REMOTE_NODE


def test_underlay_carries_vxlan_with_the_source_identity_as_vni(tunnel: Cluster) -> None:
    where = placement(tunnel)
    ips, ids = where.ips, where.identities
    underlay = f"cilia-{tunnel.lab}-underlay"
    port_of_backend_node = "n" + where.nodes["backend"].rsplit("node", 1)[1]
    with sniff(underlay, port_of_backend_node) as sock:
        assert tunnel.connect("deploy/frontend", NS, ips["backend"], PORTS["backend"]) == "OK"
        assert tunnel.connect("deploy/backend", NS, ips["database"], PORTS["database"],
                              udp=True) == "OK"
        frames = drain(sock)
    packets = vxlan_packets(frames, OVERLAY_PORT)
    # pod traffic between nodes never crosses the underlay unencapsulated
    assert not [src for src in outer_ipv4_sources(frames) if src in CLUSTER_POD_CIDR]
    by_pair: dict[tuple[str, str], set[int]] = {}
    for p in packets:
        by_pair.setdefault((p.inner_src, p.inner_dst), set()).add(p.vni)
        assert p.dport == OVERLAY_PORT
        assert p.outer_src.startswith("172.31.0.") and p.outer_dst.startswith("172.31.0.")
    fe, be, db = ips["frontend"], ips["backend"], ips["database"]
    assert by_pair.get((fe, be)) == {ids["frontend"]}, by_pair
    assert by_pair.get((be, fe)) == {ids["backend"]}, by_pair
    assert by_pair.get((be, db)) == {ids["backend"]}, by_pair
    assert by_pair.get((db, be)) == {ids["database"]}, by_pair


def _node_to_backend(lab: Cluster, where: Placement) -> tuple[str, int]:
    """The frontend's node probes the backend (other node): outcome and the receiver's view
    of the source identity."""
    since = time.time()
    node = where.nodes["frontend"]
    outcome = _from_node(lab, node, where.ips["backend"], PORTS["backend"])
    flow = _flow(lab, where.nodes["backend"], _node_ip(lab, node), where.ips["backend"],
                 PORTS["backend"], "DROPPED", since)
    return outcome, flow["src_identity"]


def _check_receiver_drop_identity(lab: Cluster, where: Placement) -> None:
    """The cross-node drop (database -> backend) is seen on the backend's node with the
    database's identity as source."""
    flow = _flow(lab, where.nodes["backend"], where.ips["database"], where.ips["backend"],
                 PORTS["backend"], "DROPPED")
    assert flow["direction"] == "ingress"
    assert flow["src_identity"] == where.identities["database"]
    assert flow["dst_identity"] == where.identities["backend"]
    assert "policy denied" in flow["reason_name"]


def test_policy_verdicts_are_identical_in_native_and_tunnel_mode(tunnel: Cluster,
                                                                 native: Cluster) -> None:
    where = placement(tunnel)
    apply_policy(tunnel)
    in_tunnel = verdicts(tunnel, where)
    assert in_tunnel == EXPECTED
    _check_receiver_drop_identity(tunnel, where)
    host_in_tunnel = _node_to_backend(tunnel, where)
    assert host_in_tunnel == ("timeout", ID_REMOTE_NODE)

    native_where = deploy(native)
    assert native_where.nodes == {a: n.replace(tunnel.lab, native.lab)
                                  for a, n in where.nodes.items()}
    try:
        apply_policy(native)
        assert verdicts(native, native_where) == in_tunnel
        _check_receiver_drop_identity(native, native_where)
        assert _node_to_backend(native, native_where) == host_in_tunnel
        # Without a tunnel the receiver needs the source in its ipcache: without the
        # entry the allowed frontend is world to the backend's node, and dropped.
        with ipcache_without(native_where.nodes["backend"], [native_where.ips["frontend"]]):
            since = time.time()
            assert native.connect("deploy/frontend", NS, native_where.ips["backend"],
                                  PORTS["backend"]) == "timeout"
            flow = _flow(native, native_where.nodes["backend"],
                         native_where.ips["frontend"], native_where.ips["backend"],
                         PORTS["backend"], "DROPPED", since)
            assert flow["src_identity"] == ID_WORLD
    finally:
        remove_policy(native)     # the native lab is the package's (test_established)


def test_only_nodes_of_the_cluster_can_assert_an_identity(tunnel: Cluster) -> None:
    """A VXLAN packet forged with the frontend's identity as VNI: honoured from a node (outer
    source remote-node), ignored from the external host (its source is looked up: world)."""
    where = placement(tunnel)
    receiver = where.nodes["backend"]
    plan = plan_lab(tunnel.lab, 2)
    target = plan.node(receiver)
    sender = next(n for n in plan.nodes if n.name != receiver)
    cases = ((sender.netns, str(WORLD_IPS[1]), "FORWARDED", where.identities["frontend"]),
             (plan.external_netns, str(WORLD_IPS[2]), "DROPPED", ID_WORLD))
    since = time.time()
    for netns, inner_src, _, _ in cases:
        send_udp(netns, str(target.node_ip), OVERLAY_PORT,
                 vxlan_payload(where.identities["frontend"], target.overlay_mac, inner_src,
                               where.ips["backend"], PORTS["backend"]))
    for _, inner_src, verdict, identity in cases:
        flow = _flow(tunnel, receiver, inner_src, where.ips["backend"], PORTS["backend"],
                     verdict, since)
        assert flow["src_identity"] == identity


def test_receiver_trusts_the_vni_without_the_source_in_its_ipcache(tunnel: Cluster) -> None:
    where = placement(tunnel)
    ips, ids = where.ips, where.identities
    receiver = where.nodes["backend"]
    with ipcache_without(receiver, [ips["frontend"], ips["database"]]):
        since = time.time()
        # denied: database -> backend, dropped on the receiver as the database's identity
        assert tunnel.connect("deploy/database", NS, ips["backend"], PORTS["backend"]) \
            == "timeout"
        drop = _flow(tunnel, receiver, ips["database"], ips["backend"], PORTS["backend"],
                     "DROPPED", since)
        assert drop["src_identity"] == ids["database"]
        assert "policy denied" in drop["reason_name"]
        # allowed: frontend -> backend passes the backend's ingress policy as the frontend,
        # and the reply finds the frontend's node through the route into the tunnel
        assert tunnel.connect("deploy/frontend", NS, ips["backend"], PORTS["backend"]) == "OK"
        fwd = _flow(tunnel, receiver, ips["frontend"], ips["backend"], PORTS["backend"],
                    "FORWARDED", since)
        assert fwd["src_identity"] == ids["frontend"]
        assert fwd["reason_name"] == "policy allowed"
    # entries back: the full connection works again
    assert tunnel.connect("deploy/frontend", NS, ips["backend"], PORTS["backend"]) == "OK"
