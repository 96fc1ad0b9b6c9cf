"""NodePort SNAT allocates a source port per flow (clients sharing a source port all get their
own answers; an exhausted range drops with a reason), and a DSR option is honoured only in DSR
mode and only from a cluster node: forged from the external host it writes nothing."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest
from pyroute2 import NetNS

from services.nodeagent.datapath import FlowReader
from services.nodeagent.datapath.constants import (
    DROP_NAT_NO_MAPPING,
    DROP_UNKNOWN_SENDER,
)
from services.nodeagent.datapath.maps.lb_config import SNAT_PORT_MAX, SNAT_PORT_MIN
from tests.support.frames import ETH_P_IP, eth, ipv4, mac, send, tcp_header
from tests.support.lblab import (
    EXT_IP,
    UNDERLAY_PREFIX,
    UPLINK,
    WHO_PORT,
    LbLab,
    node_ip,
    read_who,
    roundtrip,
)
from tests.support.netlab import in_netns

pytestmark = pytest.mark.datapath

NODEPORT = 30090
SID = 21
CLIENTS = 12
CLIENT_PORT = 62000          # every client binds this source port (inside the SNAT range)
CLIENT_BASE = 120            # client addresses 10.77.0.120 ... on the external host
DSR_OPT = 0x9A               # lib/lb.h DSR_OPT_TYPE
DSR_OPT_LEN = 8
FORGED_SPORT = 40404
SETTLE_S = 0.5


def client_ip(i: int) -> str:
    return f"10.77.0.{CLIENT_BASE + i}"


@pytest.fixture(scope="module")
def lab() -> Iterator[LbLab]:
    """Two nodes of two pods; the NodePort's backends are node 1's pods, so node 0 SNATs."""
    lab = LbLab.create(nodes=2, pods=2)
    try:
        with NetNS(lab.ext_ns) as ext:
            idx = ext.link_lookup(ifname="eth0")[0]
            for i in range(CLIENTS):
                ext.addr("add", index=idx, address=client_ip(i), prefixlen=UNDERLAY_PREFIX)
        lab.service(SID, "web", type="NodePort", cluster_ip="10.96.2.21",
                    ports=[{"name": "", "port": 80, "protocol": "TCP", "node_port": NODEPORT}])
        lab.backends(SID, lab.nodes[1].pods)
        yield lab
    finally:
        lab.destroy()


def connect_from(lab: LbLab, src: str, sport: int) -> socket.socket | None:
    s = in_netns(lab.ext_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(3)
    s.bind((src, sport))
    try:
        s.connect((node_ip(0), NODEPORT))
    except OSError:
        s.close()
        return None
    return s


def test_clients_with_one_source_port_each_get_their_own_answers(lab: LbLab) -> None:
    lab.set_mode("snat")
    conns = [connect_from(lab, client_ip(i), CLIENT_PORT) for i in range(CLIENTS)]
    try:
        assert all(conns), "every client connected"
        backends = set()
        for s in conns:
            assert s is not None
            who = read_who(s)
            assert who is not None and who[1] == node_ip(0), who   # SNAT: node 0 is the source
            backends.add(who[0])
        assert backends == {p.ip for p in lab.nodes[1].pods}
        # all connections open at once; each client's data comes back to that client only
        for i, s in enumerate(conns):
            assert s is not None and roundtrip(s, f"client-{i}-".encode() * 50)
        snat = [e for e in lab.nodes[0].lbmaps.ct_entries()
                if e.kind == "snat" and e.nat.startswith(tuple(f"{client_ip(i)}:{CLIENT_PORT} "
                                                               for i in range(CLIENTS)))]
        assert len(snat) == CLIENTS
        by_backend: dict[str, set[int]] = {}
        for e in snat:
            assert e.dst == node_ip(0) and SNAT_PORT_MIN <= e.dport <= SNAT_PORT_MAX
            by_backend.setdefault(e.src, set()).add(e.dport)
        # one port per flow and backend: the first kept the client's port, the rest collided
        assert sum(len(ports) for ports in by_backend.values()) == CLIENTS
        assert all(CLIENT_PORT in ports for ports in by_backend.values())
        fwd = [e for e in lab.nodes[0].lbmaps.ct_entries() if e.kind == "snat-fwd"
               and e.sport == CLIENT_PORT and e.src.startswith("10.77.0.1")]
        assert len(fwd) == CLIENTS, "each flow keeps its port in an entry of its own"
    finally:
        for s in conns:
            if s is not None:
                s.close()


def test_an_exhausted_port_range_drops_with_a_reason(lab: LbLab) -> None:
    lab.set_mode("snat")
    node = lab.nodes[0]
    node.nodeport.set_config(node.ip, snat_ports=(CLIENT_PORT, CLIENT_PORT))
    conns: list[socket.socket | None] = []
    try:
        with FlowReader(node.name) as flows:
            flows.drain()
            # one port, two backends: a third concurrent flow finds no port for its backend
            for i in range(3):
                conns.append(connect_from(lab, client_ip(i), CLIENT_PORT + 1))
            drops = [f for f in flows.drain() if f.reason == DROP_NAT_NO_MAPPING]
        assert None in conns, "some flow found no free port"
        assert sum(1 for s in conns if s is not None) >= 1
        assert drops and drops[0].dst_port == NODEPORT and drops[0].reason_name == \
            "no mapping for NAT masquerade"
    finally:
        for s in conns:
            if s is not None:
                s.close()
        node.nodeport.set_config(node.ip)


def _forged_syn(lab: LbLab) -> tuple[str, bytes]:
    """A SYN from the external host straight to a pod of node 1, carrying a DSR option that
    claims a frontend: the frame a forger would send."""
    target = lab.nodes[1].pods[0]
    opt = struct.pack("!BBH4s", DSR_OPT, DSR_OPT_LEN, 80, socket.inet_aton("10.96.2.21"))
    pkt = ipv4(EXT_IP, target.ip, 6, tcp_header(FORGED_SPORT, WHO_PORT, 1, flags=0x02),
               options=opt)
    frame = eth(mac(lab.nodes[1].lab.node_ns, UPLINK), mac(lab.ext_ns, "eth0"), ETH_P_IP, pkt)
    return target.ip, frame


@pytest.mark.parametrize("mode", ["snat", "dsr"])
def test_a_forged_dsr_option_from_outside_writes_nothing(lab: LbLab, mode: str) -> None:
    lab.set_mode(mode)
    node = lab.nodes[1]
    assert len(node.lbmaps.node_mac_entries()) == 2, "both nodes' MACs are known"
    pod_ip, frame = _forged_syn(lab)
    with FlowReader(node.name) as flows:
        flows.drain()
        assert send(lab.ext_ns, "eth0", frame)
        time.sleep(SETTLE_S)
        drops = [f for f in flows.drain() if f.reason == DROP_UNKNOWN_SENDER]
    learnt = [e for e in node.lbmaps.ct_entries()
              if e.kind == "revnat" and e.src == pod_ip and e.dport == FORGED_SPORT]
    assert learnt == [], f"{mode}: the forged option wrote a reverse-NAT entry"
    if mode == "dsr":
        assert drops and drops[0].src_ip == EXT_IP and drops[0].reason_name == "unknown sender"
    else:
        assert not drops, "SNAT mode ignores the option"
    # a real DSR flow from node 0 is still learnt on node 1 (its MAC is a node's)
    if mode == "dsr":
        s = connect_from(lab, client_ip(0), CLIENT_PORT + 2)
        assert s is not None and read_who(s) is not None
        s.close()
        assert [e for e in node.lbmaps.ct_entries()
                if e.kind == "revnat" and e.dport == CLIENT_PORT + 2]


def test_purge_forgets_every_flow_of_an_address(lab: LbLab) -> None:
    lab.set_mode("snat")
    conns = [connect_from(lab, client_ip(i), CLIENT_PORT + 3) for i in range(CLIENTS)]
    try:
        assert all(s is not None and read_who(s) for s in conns)
        maps = lab.nodes[0].lbmaps
        gone = lab.nodes[1].pods[0].ip
        kept = lab.nodes[1].pods[1].ip
        entries = maps.ct_entries()

        chose = {e.backend_id for e in entries if e.kind == "snat" and e.src == gone}
        assert chose and [e for e in entries if e.kind == "snat" and e.src == kept]
        deleted = maps.purge([gone])
        after = maps.ct_entries()
        assert deleted > 0
        assert not [e for e in after if gone in (e.src, e.dst) or e.nat.startswith(f"{gone}:")]
        assert not [e for e in after if e.kind in ("service", "snat", "snat-fwd")
                    and e.backend_id in chose], "flows that chose it are forgotten too"
        assert [e for e in after if e.kind == "snat" and e.src == kept], "others stay"
    finally:
        for s in conns:
            if s is not None:
                s.close()
