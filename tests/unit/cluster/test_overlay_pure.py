"""The overlay's pure parts: identity marks, VNIs, the lab plan, configs, the VXLAN parser."""

from __future__ import annotations

import ipaddress
import re
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.identities import ID_HOST, ID_REMOTE_NODE, ID_WORLD, LOCAL_IDENTITY_FLAG
from services.lab import LabConfigError, LabState, plan_lab
from services.lab.plan import MAX_NODES
from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath import overlay as ov
from services.nodeagent.endpoints import EndpointError, NodeConfig
from tests.support.capture import parse_vxlan

OVERLAY_H = c.BPF_SRC_DIR / "lib" / "overlay.h"


@given(st.integers(min_value=1, max_value=ov.VNI_MAX))
def test_identity_mark_round_trips_and_carries_the_magic(identity: int) -> None:
    mark = ov.identity_mark(identity)
    assert mark & ov.MARK_MAGIC_HOST_MASK == ov.MARK_MAGIC_IDENTITY
    assert ov.mark_identity(mark) == identity
    assert mark < 1 << 32


def test_marks_without_the_magic_carry_no_identity() -> None:
    assert ov.mark_identity(0) == 0
    assert ov.mark_identity(0x12340000) == 0
    with pytest.raises(ValueError, match="identity 0"):
        ov.identity_mark(0)


def test_vni_carries_cluster_identities_only() -> None:
    assert ov.vni_of(300) == 300
    assert ov.vni_of(ID_HOST) == ID_HOST
    assert ov.vni_of(ID_WORLD) == 0                       # the receiver looks it up
    assert ov.vni_of(LOCAL_IDENTITY_FLAG | 7) == 0        # CIDR identities are node-local
    assert ov.received_identity(ID_HOST) == ID_REMOTE_NODE
    assert ov.received_identity(300) == 300


def _define(name: str) -> int:
    m = re.search(rf"^#define {name} (0x[0-9A-Fa-f]+|\d+)", OVERLAY_H.read_text(), re.M)
    assert m, name
    return int(m.group(1), 0)


def test_python_constants_match_the_c_header() -> None:
    assert _define("MARK_MAGIC_IDENTITY") == ov.MARK_MAGIC_IDENTITY
    assert _define("MARK_MAGIC_HOST_MASK") == ov.MARK_MAGIC_HOST_MASK
    assert _define("OVERLAY_VNI_MAX") == ov.VNI_MAX
    assert _define("DROP_NO_TUNNEL_ENDPOINT") == ov.DROP_NO_TUNNEL_ENDPOINT
    assert _define("CILIA_ID_REMOTE_NODE") == ID_REMOTE_NODE
    assert c.REASON_NAMES[ov.DROP_NO_TUNNEL_ENDPOINT] == "no tunnel endpoint"


def test_plan_routing_modes() -> None:
    assert plan_lab("lab", 2).routing == "native"
    assert plan_lab("lab", 2).pod_mtu == 0
    tunnel = plan_lab("lab", 2, "tunnel")
    assert tunnel.tunnel and tunnel.pod_mtu == ov.UNDERLAY_MTU - ov.VXLAN_OVERHEAD == 1450
    with pytest.raises(LabConfigError, match="routing must be one of native, tunnel, got 'bgp'"):
        plan_lab("lab", 2, "bgp")


def test_overlay_macs_are_unique_and_locally_administered() -> None:
    macs = [n.overlay_mac for n in plan_lab("lab", MAX_NODES, "tunnel").nodes]
    assert len(set(macs)) == MAX_NODES
    for mac in macs:
        first = int(mac.split(":")[0], 16)
        assert first & 0x02 and not first & 0x01           # local, unicast


def test_old_node_configs_and_lab_states_load_as_native() -> None:
    old = {"name": "n1", "node_ip": "172.31.0.11", "pod_cidr": "10.244.1.0/24",
           "netns": "x", "state_dir": "/tmp/s", "socket_path": "/tmp/s.sock"}
    cfg = NodeConfig.from_json(old)
    assert (cfg.routing, cfg.pod_mtu) == ("native", 0)
    assert NodeConfig.from_json(cfg.to_json()) == cfg
    tunnel = NodeConfig.from_json({**old, "routing": "tunnel", "pod_mtu": 1450})
    assert (tunnel.routing, tunnel.pod_mtu) == ("tunnel", 1450)
    with pytest.raises(EndpointError, match="missing field 'node_ip'"):
        NodeConfig.from_json({k: v for k, v in old.items() if k != "node_ip"})
    state = LabState(name="lab", nodes=2, routing="tunnel")
    data = state.to_json()
    assert LabState.from_json(data).plan.routing == "tunnel"
    del data["routing"]
    assert LabState.from_json(data).routing == "native"


def test_setup_overlay_rejects_unknown_modes_and_skips_native() -> None:
    assert ov.setup_overlay("n1", None, "native") is None
    with pytest.raises(ValueError, match="routing: 'gre' is not one of native, tunnel"):
        ov.setup_overlay("n1", None, "gre")


def _frame(vni: int, port: int = ov.OVERLAY_PORT) -> bytes:
    def ip(src: str, dst: str, proto: int, payload: bytes) -> bytes:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                           ipaddress.IPv4Address(src).packed,
                           ipaddress.IPv4Address(dst).packed) + payload

    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    inner = eth + ip("10.244.1.2", "10.244.2.3", 6, b"\x00" * 20)
    vxlan = struct.pack("!B3xI", 0x08, vni << 8)
    udp = struct.pack("!HHHH", 40000, port, 8 + len(vxlan) + len(inner), 0)
    return eth + ip("172.31.0.11", "172.31.0.12", 17, udp + vxlan + inner)


def test_vxlan_parser() -> None:
    pkt = parse_vxlan(_frame(21334), ov.OVERLAY_PORT)
    assert pkt is not None
    assert (pkt.outer_src, pkt.outer_dst, pkt.vni) == ("172.31.0.11", "172.31.0.12", 21334)
    assert (pkt.inner_src, pkt.inner_dst, pkt.inner_proto) == ("10.244.1.2", "10.244.2.3", 6)
    assert parse_vxlan(_frame(5, port=4789), ov.OVERLAY_PORT) is None
    assert parse_vxlan(_frame(5)[:40], ov.OVERLAY_PORT) is None
