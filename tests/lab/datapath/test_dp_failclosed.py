"""The pod veth programs fail closed, on real frames: what they cannot classify is dropped and
counted by reason (ARP passes), non-linear packets are parsed after a pull, later IPv4
fragments are enforced by their first fragment's ports, and ICMP errors of tracked flows pass
as related while others meet the policy."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from pyroute2 import NetNS

from services.common.policytypes import PROTO_UDP, Direction, PolicyKey, Verdict
from services.nodeagent.datapath import Counter, FlowReader, FlowRecord, VerdictCount
from tests.lab.datapath.conftest import ID_POD1, ID_POD2, Env
from tests.lab.datapath.test_dp_policy_traffic import configure, tcp_rule
from tests.support.cli import cilia
from tests.support.frames import (
    ETH_P_8021Q,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    IP_MF,
    Capture,
    eth,
    frag_needed,
    ipv4,
    ipv6_udp,
    mac,
    send,
    tcp_header,
    udp,
    vlan,
)
from tests.support.netlab import (
    ALLOWED_TIMEOUT_S,
    DENIED_TIMEOUT_S,
    UdpEcho,
    in_netns,
    tcp_ok,
    tcp_open,
)

pytestmark = pytest.mark.datapath

IN, OUT = Direction.INGRESS, Direction.EGRESS
ECHO_PORT, CLOSED_PORT = 5353, 5354
BIG = 4000                  # bytes of UDP payload: three fragments at MTU 1500
IP_MTU = 14                 # getsockopt: the path MTU the kernel knows for a connected socket
PMTU = 1200                 # what the forged "fragmentation needed" announces
JUMBO_MTU, ETH_MTU = 9000, 1500
PAGED_BYTES = 5120          # UDP payload: the frame is more than a page
ETH_P_EXPERIMENTAL = 0x88B5  # IEEE local experimental ethertype: an unknown L3
LEN_8023 = 0x0040           # an 802.3 length field where an ethertype belongs


def counts(env: Env) -> dict[VerdictCount, Counter]:
    metrics = env.maps.metrics()
    try:
        return metrics.read()
    finally:
        metrics.close()


def grew(before: dict[VerdictCount, Counter], after: dict[VerdictCount, Counter],
         reason: str, direction: str, verdict: str = "DROPPED") -> int:
    key = VerdictCount(verdict, reason, direction)
    return after.get(key, Counter(0, 0)).packets - before.get(key, Counter(0, 0)).packets


def wait_flows(flows: FlowReader, pred: Callable[[FlowRecord], bool], n: int = 1,
               wait_s: float = 2.0) -> list[FlowRecord]:
    seen: list[FlowRecord] = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and len([r for r in seen if pred(r)]) < n:
        seen += flows.poll(50)
    return [r for r in seen if pred(r)]


@pytest.fixture
def echo(env: Env) -> Iterator[None]:
    """UDP echo on pod 2, on a port the tests allow and one they do not."""
    p2 = env.pods[1]
    servers = [UdpEcho(p2.name, p2.ip, port) for port in (ECHO_PORT, CLOSED_PORT)]
    try:
        yield
    finally:
        for srv in servers:
            srv.stop()


def _macs(env: Env, pod_index: int = 0) -> tuple[bytes, bytes]:
    pod = env.pods[pod_index]
    return mac(env.lab.node_ns, pod.host_if), mac(pod.name, "eth0")


def test_unclassifiable_frames_from_a_pod_are_dropped_by_reason(env: Env) -> None:
    p1, p2, _ = env.pods
    configure(env)            # nothing enforced: these drops owe nothing to policy
    host, pod = _macs(env)
    six = bytes.fromhex("fd00" + "00" * 13 + "01"), bytes.fromhex("fd00" + "00" * 13 + "02")
    probe = udp(p1.ip, p2.ip, 4000, ECHO_PORT, b"x")
    frames = {
        ("unsupported L3 protocol", 2): [
            eth(host, pod, ETH_P_IPV6, ipv6_udp(*six, b"v6")),
            eth(host, pod, ETH_P_EXPERIMENTAL, b"\0" * 46)],
        ("VLAN traffic disallowed by VLAN filter", 1): [
            eth(host, pod, ETH_P_8021Q, vlan(100, ETH_P_IP, ipv4(p1.ip, p2.ip, 17, probe)))],
        ("unsupported L2 protocol", 1): [eth(host, pod, LEN_8023, b"\0" * 64)],
        ("invalid packet", 4): [
            eth(host, pod, ETH_P_IP, ipv4(p1.ip, p2.ip, 17, probe, ihl=4)),
            eth(host, pod, ETH_P_IP, ipv4(p1.ip, p2.ip, 17, probe, tot_len=200)),
            eth(host, pod, ETH_P_IP, ipv4(p1.ip, p2.ip, 6, b"\0" * 12)),   # TCP cut short
            eth(host, pod, ETH_P_IP, ipv4(p1.ip, p2.ip, 17, b"\0" * 4))],  # UDP cut short
    }
    before = counts(env)
    with FlowReader(env.node) as flows:
        flows.drain()
        for batch in frames.values():
            for frame in batch:
                send(p1.name, "eth0", frame)
        total = sum(n for _, n in frames)
        records = wait_flows(flows, lambda r: r.verdict == "DROPPED" and r.reason != 133,
                             total)
    after = counts(env)
    for (reason, n) in frames:
        # the pods' kernels send IPv6 of their own (router solicitations, MLD): at least
        if reason == "unsupported L3 protocol":
            assert grew(before, after, reason, "egress") >= n, reason
        else:
            assert grew(before, after, reason, "egress") == n, reason
    assert sorted(r.reason for r in records if r.reason != 139) == [134] * 4 + [166, 182]
    assert len([r for r in records if r.reason == 139]) >= 2
    ours = [r for r in records if r.reason != 139]
    assert {r.ifindex for r in ours} == {p1.ifindex}
    assert {(r.src_ip, r.dst_ip) for r in ours if r.reason == 134} == {(p1.ip, p2.ip)}


def test_the_kernel_s_own_ipv6_and_vlan_traffic_is_dropped(env: Env) -> None:
    """Real IPv6 from the pod's stack leaves no trace beyond the veth; tagged frames and
    IPv6 toward the pod never reach it, ARP does."""
    p1 = env.pods[0]
    configure(env)
    host, pod = _macs(env)
    before = counts(env)
    with NetNS(p1.name) as ns:
        idx = ns.link_lookup(ifname="eth0")[0]
        ns.addr("add", index=idx, address="fd00::1", prefixlen=128, family=socket.AF_INET6,
                flags=0x02)                                   # IFA_F_NODAD
        ns.route("add", dst="fd00::/64", oif=idx, family=socket.AF_INET6)
        ns.neigh("add", dst="fd00::2", lladdr=":".join(f"{b:02x}" for b in host),
                 ifindex=idx, family=socket.AF_INET6, state=0x80)
    try:
        s = in_netns(p1.name, lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
        try:
            for _ in range(3):
                s.sendto(b"six", ("fd00::2", 9))
        finally:
            s.close()
        assert grew(before, counts(env), "unsupported L3 protocol", "egress") >= 3
        # toward the pod (cil_to_pod): sent out of the host-side veth from the node
        with Capture(p1.name, "eth0") as cap:
            # the program's drop on the veth's egress reaches the sender as ENOBUFS
            assert not send(env.lab.node_ns, p1.host_if, eth(
                pod, host, ETH_P_IPV6, ipv6_udp(bytes(16), bytes(16), b"in")))
            assert not send(env.lab.node_ns, p1.host_if, eth(pod, host, ETH_P_8021Q, vlan(
                7, ETH_P_IP, ipv4("10.244.7.2", p1.ip, 17, udp("10.244.7.2", p1.ip, 1, 2,
                                                                 b"tag")))))
            arp = eth(pod, host, ETH_P_ARP, bytes.fromhex("0001080006040001") + host
                      + socket.inet_aton("169.254.1.1") + bytes(6) + socket.inet_aton(p1.ip))
            assert send(env.lab.node_ns, p1.host_if, arp)
            got = cap.frames(1.0, until=lambda f: f[12:14] == ETH_P_ARP.to_bytes(2, "big"))
        types = {int.from_bytes(f[12:14], "big") for f in got}
        assert ETH_P_ARP in types, "ARP passes"
        assert not types & {ETH_P_IPV6, ETH_P_8021Q}, types
        after = counts(env)
        assert grew(before, after, "unsupported L3 protocol", "ingress") >= 1
        assert grew(before, after, "VLAN traffic disallowed by VLAN filter", "ingress") == 1
    finally:
        with NetNS(p1.name) as ns:
            idx = ns.link_lookup(ifname="eth0")[0]
            ns.addr("del", index=idx, address="fd00::1", prefixlen=128, family=socket.AF_INET6)


def _udp_exchange(env: Env, payload: bytes, port: int, nonlinear: bool) -> bytes | None:
    """pod1 -> pod2:port from a bound socket: the frame itself is hand-made (``nonlinear``:
    only its Ethernet header in the skb's linear area); the echo, if any, comes back to the
    socket."""
    p1, p2, _ = env.pods
    host, pod = _macs(env)
    s = in_netns(p1.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    s.bind((p1.ip, 0))
    s.settimeout(ALLOWED_TIMEOUT_S if port == ECHO_PORT else DENIED_TIMEOUT_S)
    sport = s.getsockname()[1]
    try:
        send(p1.name, "eth0", eth(host, pod, ETH_P_IP, ipv4(
            p1.ip, p2.ip, 17, udp(p1.ip, p2.ip, sport, port, payload))), nonlinear=nonlinear)
        return s.recv(65535)
    except OSError:
        return None
    finally:
        s.close()


@contextmanager
def jumbo(env: Env) -> Iterator[None]:
    """Pods 1 and 2 and their host-side veths with a jumbo MTU: a frame of more than a page
    is what the kernel builds non-linear (AF_PACKET keeps smaller ones linear)."""
    links = [(p.name, "eth0") for p in env.pods[:2]] + [
        (env.lab.node_ns, p.host_if) for p in env.pods[:2]]

    def set_mtu(mtu: int) -> None:
        for ns, ifname in links:
            with NetNS(ns) as n:
                n.link("set", index=n.link_lookup(ifname=ifname)[0], mtu=mtu)

    set_mtu(JUMBO_MTU)
    try:
        yield
    finally:
        set_mtu(ETH_MTU)


def test_non_linear_packets_are_pulled_and_enforced(env: Env, echo: None) -> None:
    configure(env, enforce={1: (True, False)}, policy={
        PolicyKey(ID_POD2, ID_POD1, IN, PROTO_UDP, ECHO_PORT, ECHO_PORT): Verdict.ALLOW})
    before = counts(env)
    paged = bytes(range(256)) * (PAGED_BYTES // 256)
    with jumbo(env):
        assert _udp_exchange(env, paged, ECHO_PORT, nonlinear=True) == paged
        assert _udp_exchange(env, paged, CLOSED_PORT, nonlinear=True) is None
    after = counts(env)
    assert grew(before, after, "policy denied", "ingress") == 1, \
        "the non-linear packet was parsed and met the policy"
    assert grew(before, after, "policy allowed", "ingress", "FORWARDED") == 1
    assert _udp_exchange(env, b"linear", ECHO_PORT, nonlinear=False) == b"linear"


def _big_udp(env: Env, port: int) -> bytes | None:
    p1, p2, _ = env.pods
    s = in_netns(p1.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    s.settimeout(ALLOWED_TIMEOUT_S if port == ECHO_PORT else DENIED_TIMEOUT_S)
    try:
        s.sendto(bytes(range(250)) * (BIG // 250), (p2.ip, port))
        return s.recv(65535)
    except OSError:
        return None
    finally:
        s.close()


def test_fragments_follow_their_first_fragment(env: Env, echo: None) -> None:
    p1, p2, _ = env.pods
    # both pods enforce ingress: the echo's fragments come back only as a tracked reply
    configure(env, enforce={0: (True, False), 1: (True, False)}, policy={
        PolicyKey(ID_POD2, ID_POD1, IN, PROTO_UDP, ECHO_PORT, ECHO_PORT): Verdict.ALLOW})
    with FlowReader(env.node) as flows:
        flows.drain()
        assert _big_udp(env, ECHO_PORT) == bytes(range(250)) * (BIG // 250), \
            "every fragment both ways got through"
        assert _big_udp(env, CLOSED_PORT) is None
        drops = wait_flows(flows, lambda r: r.verdict == "DROPPED"
                           and r.dst_port == CLOSED_PORT, 3)
    # all three fragments of the denied datagram met the policy with the first's ports
    assert len(drops) == 3 and {r.reason_name for r in drops} == {"policy denied"}
    assert {(r.src_ip, r.dst_ip, r.proto) for r in drops} == {(p1.ip, p2.ip, PROTO_UDP)}
    # a later fragment whose first never came: dropped with its own reason, even when open
    configure(env)
    host, pod = _macs(env)
    before = counts(env)
    with FlowReader(env.node) as flows:
        flows.drain()
        send(p1.name, "eth0", eth(host, pod, ETH_P_IP, ipv4(
            p1.ip, p2.ip, 17, b"\0" * 64, ident=0x7777, frag=185)))
        send(p1.name, "eth0", eth(host, pod, ETH_P_IP, ipv4(
            p1.ip, p2.ip, 17, b"\0" * 64, ident=0x7778, frag=IP_MF | 185)))
        lost = wait_flows(flows, lambda r: r.reason == 175, 2)
    assert len(lost) == 2 and {r.src_ip for r in lost} == {p1.ip}
    assert grew(before, counts(env), "first logical datagram fragment not found",
                "egress") == 2


def _next_seq(frames: list[bytes], src: str, sport: int) -> int:
    """The sequence number after the last data segment ``src:sport`` sent in ``frames``."""
    seq = None
    for f in frames:
        ip = f[14:]
        if f[12:14] != ETH_P_IP.to_bytes(2, "big") or ip[9] != 6:
            continue
        ihl = (ip[0] & 0xF) * 4
        tcp = ip[ihl:]
        if socket.inet_ntoa(ip[12:16]) != src or struct.unpack("!H", tcp[:2])[0] != sport:
            continue
        plen = struct.unpack("!H", ip[2:4])[0] - ihl - (tcp[12] >> 4) * 4
        if plen:
            seq = struct.unpack("!I", tcp[4:8])[0] + plen
    assert seq is not None, "no data segment captured"
    return seq


def test_icmp_frag_needed_of_an_established_flow_passes_ingress_enforcement(env: Env) -> None:
    p1, p2, _ = env.pods
    # pod1 enforces ingress with no rule at all; its own connection to pod2 is allowed
    configure(env, enforce={0: (True, False)})
    icmp_in = in_netns(p1.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                      socket.IPPROTO_ICMP))
    icmp_in.settimeout(ALLOWED_TIMEOUT_S)
    conn = tcp_open(p1, p2.ip, 80)
    try:
        sport = conn.getsockname()[1]
        with Capture(p2.name, "eth0") as cap:
            conn.sendall(b"m" * 100)
            assert conn.recv(100)
            seq = _next_seq(cap.frames(0.3), p1.ip, sport)
        quoted = ipv4(p1.ip, p2.ip, 6, tcp_header(sport, 80, seq))[:28]
        untracked = ipv4(p1.ip, p2.ip, 6, tcp_header(sport + 1, 81, seq))[:28]
        before = counts(env)
        sender = in_netns(p2.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                         socket.IPPROTO_ICMP))
        try:
            sender.sendto(frag_needed(PMTU, untracked), (p1.ip, 0))
            sender.sendto(frag_needed(PMTU, quoted), (p1.ip, 0))
        finally:
            sender.close()
        got = []
        deadline = time.monotonic() + ALLOWED_TIMEOUT_S
        while time.monotonic() < deadline and len(got) < 1:
            data = icmp_in.recv(2048)
            if data[20] == 3 and data[21] == 4:
                got.append(data[28:56])
        assert got == [quoted], "only the error of the tracked connection passes"
        time.sleep(DENIED_TIMEOUT_S)    # the untracked one had its chance too
        after = counts(env)
        assert grew(before, after, "policy denied", "ingress") == 1, \
            "the unrelated error met pod1's ingress policy"
        assert conn.getsockopt(socket.IPPROTO_IP, IP_MTU) == PMTU, \
            "path MTU discovery took the error into account"
    finally:
        conn.close()
        icmp_in.close()


def test_metrics_list_shows_the_counters(env: Env) -> None:
    p1, p2, _ = env.pods
    configure(env, enforce={1: (True, False)},
              policy={tcp_rule(ID_POD2, ID_POD1, IN, 80): Verdict.ALLOW})
    assert tcp_ok(p1, p2.ip, 80)
    host, pod = _macs(env)
    send(p1.name, "eth0", eth(host, pod, ETH_P_IPV6, ipv6_udp(bytes(16), bytes(16), b"x")))
    expected = {(r.code, r.direction): r for r in _by_reason(env)}
    res = cilia("bpf", "metrics", "list", "--node", env.node, "-o", "json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    shown = {(r["reason_code"], r["direction"]): r for r in rows}
    assert set(expected) <= set(shown), "every counter the map holds is listed"
    v6 = shown[(139, "egress")]
    assert (v6["reason"], v6["verdict"], v6["node"]) == (
        "unsupported L3 protocol", "DROPPED", env.node)
    assert v6["packets"] >= 1 and v6["bytes"] >= 60
    assert shown[(1, "ingress")]["verdict"] == "FORWARDED"
    table = cilia("bpf", "metrics", "list", "--node", env.node).stdout.splitlines()
    assert table[0].split() == ["REASON", "DIRECTION", "PACKETS", "BYTES", "NODE"]
    assert any(line.startswith("unsupported L3 protocol") and " EGRESS " in line
               for line in table[1:])


def _by_reason(env: Env) -> list:  # type: ignore[type-arg]
    metrics = env.maps.metrics()
    try:
        return metrics.by_reason()
    finally:
        metrics.close()
