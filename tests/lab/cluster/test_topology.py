"""lab up creates the topology it promises; lab down leaves nothing behind."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from bcc import libbcc

from services.common.netns import open_iproute
from services.common.paths import PIN_ROOT
from services.common.processes import ProcRef, is_alive
from services.lab import Kubelet, LabExistsError, down, load_lab, up
from services.lab import netns as ns
from services.lab.errors import LabNotFoundError, TopologyError
from services.lab.state import lab_dir, node_run_dir, node_state_dir
from tests.lab.cluster.conftest import root_snapshot, unique_lab

BPF_MAP_TYPE_HASH = 1


def pin_a_map(path: Path) -> None:
    """Pin a real (tiny) BPF hash map, as the datapath does under the node's directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = libbcc.lib.bcc_create_map(BPF_MAP_TYPE_HASH, b"cilia_test", 4, 4, 4, 0)
    assert fd >= 0
    try:
        assert libbcc.lib.bpf_obj_pin(fd, str(path).encode()) == 0
    finally:
        os.close(fd)


def inventory(netns: str) -> dict[str, Any]:
    with open_iproute(netns) as ipr:
        links = {str(lk.get("ifname")): lk for lk in ipr.get_links()}
        addrs = {(str(a.get("label")), f"{a.get('address')}/{a['prefixlen']}")
                 for a in ipr.get_addr(family=2)}
        routes = {(f"{r.get('dst', '0.0.0.0')}/{r['dst_len']}", r.get("gateway"), r["type"])
                  for r in ipr.get_routes(family=2, table=254)}
    return {"links": links, "addrs": addrs, "routes": routes}


def sysctl(netns: str, key: str) -> str:
    proc = ns.spawn(netns, ["cat", f"/proc/sys/{key.replace('.', '/')}"], stdout=-1)
    out, _ = proc.communicate(timeout=10)
    return out.decode().strip()


def test_up_two_nodes_then_down_leaves_nothing(lab_dirs: Any) -> None:
    before = root_snapshot()
    name = unique_lab()
    try:
        state = up(name, nodes=2)
        plan = state.plan
        prefix = f"cilia-{name}-"
        assert set(ns.list_netns(prefix)) == {f"{prefix}underlay", f"{prefix}external",
                                              f"{prefix}node1", f"{prefix}node2"}
        with pytest.raises(LabExistsError):
            up(name, nodes=2)

        underlay = inventory(plan.underlay_netns)
        br = underlay["links"]["br0"]["index"]
        ports = {n for n, lk in underlay["links"].items() if lk.get("master") == br}
        assert ports == {"n1", "n2", "ext"}

        n1, n2 = plan.nodes
        node1 = inventory(n1.netns)
        assert ("eth0", "172.31.0.11/24") in node1["addrs"]
        assert ("lo", "10.244.1.1/32") in node1["addrs"]
        assert ("10.244.2.0/24", "172.31.0.12", 1) in node1["routes"]     # native routing
        assert ("10.244.1.0/24", None, 7) in node1["routes"]             # unreachable
        assert ("0.0.0.0/0", "172.31.0.254", 1) in node1["routes"]
        assert ("10.244.1.0/24", "172.31.0.11", 1) in inventory(n2.netns)["routes"]
        external = inventory(plan.external_netns)
        assert {("eth0", "172.31.0.254/24"), ("eth0", "203.0.113.10/32")} <= external["addrs"]
        assert sysctl(n1.netns, "net.ipv4.ip_forward") == "1"
        with open_iproute(n1.netns) as ipr:                              # IPv4-only lab
            assert not list(ipr.get_addr(family=socket.AF_INET6))
        assert sysctl(plan.external_netns, "net.ipv4.ip_forward") == "0"

        agents = load_lab(name).agents
        assert set(agents) == {n1.name, n2.name} and all(is_alive(a) for a in agents.values())
        assert state.external is not None and is_alive(state.external)

        pod = Kubelet(name).create_pod({"metadata": {"name": "p"}, "spec": {
            "containers": [{"ports": [{"containerPort": 80}]}]}})
        assert pod["spec"]["nodeName"] == n1.name
        (rec,) = json.loads((lab_dir(name) / "pods.json").read_text())[
            "pods"].values()
        workload = ProcRef.from_json(rec["runtime"]["workload"])
        assert is_alive(workload)

        pins = [PIN_ROOT / n.name / "cilia_test" for n in plan.nodes]
        for pin in pins:
            pin_a_map(pin)
        assert root_snapshot().links == before.links
        assert root_snapshot().routes == before.routes
    finally:
        report = down(name)

    assert ns.list_netns(f"cilia-{name}-") == []
    assert len(report.netns) == 5                       # 4 + the pod's sandbox
    for ref in [*agents.values(), state.external, workload]:
        assert ref is not None and not is_alive(ref)
    for pin in pins:
        assert not pin.parent.exists()
    for node in plan.nodes:
        assert not node_run_dir(node.name).exists() and not node_state_dir(node.name).exists()
    assert not lab_dir(name).exists()
    after = root_snapshot()
    assert after.links == before.links and after.routes == before.routes
    with pytest.raises(LabNotFoundError):
        load_lab(name)


def test_down_without_state_still_sweeps(lab_dirs: Any) -> None:
    """A crash mid-up leaves namespaces but maybe no state: down finds them by prefix."""
    name = unique_lab()
    ns.create_netns(f"cilia-{name}-node1")
    pin = PIN_ROOT / f"{name}-node1" / "m"
    try:
        pin_a_map(pin)
    finally:
        report = down(name)
    assert report.netns == [f"cilia-{name}-node1"]
    assert not pin.parent.exists()


def test_failed_up_leaves_nothing_and_can_be_retried(lab_dirs: Any) -> None:
    name = unique_lab()
    before = root_snapshot()
    try:
        with pytest.raises(TopologyError, match="agent exited during start"):
            up(name, nodes=2, agent_module="services.no_such_agent")
        assert ns.list_netns(f"cilia-{name}-") == []
        with pytest.raises(LabNotFoundError):
            load_lab(name)
        state = up(name, nodes=1, external_ports=())
        assert state.status == "up"
    finally:
        down(name)
    after = root_snapshot()
    assert (after.links, after.routes) == (before.links, before.routes)


async def test_lab_api_works_inside_a_running_event_loop(lab_dirs: Any) -> None:
    """The CLI calls the lab from coroutines: pyroute2's sync API must not hit the loop."""
    name = unique_lab()
    try:
        up(name, nodes=1, external_ports=())
        pod = Kubelet(name).create_pod({"metadata": {"name": "p"}, "spec": {
            "containers": [{"ports": [{"containerPort": 80}]}]}})
        assert pod["status"]["podIP"] == "10.244.1.2"
    finally:
        report = down(name)
    assert len(report.netns) == 4
