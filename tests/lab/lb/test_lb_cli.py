"""``cilia service list`` from the bus and ``cilia bpf lb list`` from the kernel maps."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli import source
from services.common.bus import Bus
from tests.bus.lb.test_lb_service import backends_of, until
from tests.support.cli import cilia
from tests.support.lblab import LbLab
from tests.support.lbobjects import echo_pod, service
from tests.support.objects import manifests
from tests.support.procs import service as service_proc


@pytest.fixture
def lb_proc(bus: Bus, nats_url: str, tmp_path: Path) -> Iterator[None]:
    with service_proc("services.lb", nats_url, log=tmp_path / "lb.log"):
        yield


async def test_service_list_shows_frontends_and_backends(bus: Bus, nats_url: str,
                                                         lb_proc: None) -> None:
    await source.apply(bus, manifests(
        service("web", selector={"app": "echo"}, type_="NodePort", clusterIP="10.96.3.3",
                ports=[{"port": 80, "targetPort": "http", "nodePort": 30303}]),
        *(echo_pod(f"e{i}", f"10.244.1.{10 + i}") for i in range(2))))
    await until(bus, lambda v: "default/web" in v.ids
                and len(backends_of(v, "default/web")) == 2)
    env = {"CILIA_NATS_URL": nats_url}
    res = cilia("service", "list", env=env)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["ID", "Frontend", "Service", "Type", "Backend"]
    first = lines[1].split()
    assert first[1:] == ["10.96.3.3:80/TCP", "ClusterIP", "1", "=>", "10.244.1.10:8080/TCP",
                         "(active)"]
    assert lines[2].split() == ["2", "=>", "10.244.1.11:8080/TCP", "(active)"]
    assert lines[3].split()[1:4] == ["0.0.0.0:30303/TCP", "NodePort", "1"]
    rows = json.loads(cilia("service", "list", "-o", "json", env=env).stdout)
    assert [(r["frontend"], r["type"], len(r["backends"])) for r in rows] == [
        ("10.96.3.3:80/TCP", "ClusterIP", 2), ("0.0.0.0:30303/TCP", "NodePort", 2)]
    assert rows[0]["service"] == "default/web" and rows[0]["id"] == int(first[0])


def test_bpf_lb_list_reads_the_kernel_maps() -> None:
    lab = LbLab.create(nodes=1, pods=3)
    try:
        pods = lab.nodes[0].pods
        lab.service(21, "web", cluster_ip="10.96.0.21", affinity_timeout=30)
        lab.backends(21, pods[1:3])
        node = lab.nodes[0].name
        rows = json.loads(cilia("bpf", "lb", "list", "--node", node, "-o", "json").stdout)
        assert len(rows) == 1
        row = rows[0]
        assert row["frontend"] == "10.96.0.21:80/TCP" and row["flags"] == ["affinity"]
        assert row["table_size"] == 251
        assert {b["address"] for b in row["backends"]} == {f"{p.ip}:8080" for p in pods[1:3]}
        assert sum(b["slots"] for b in row["backends"]) == 251
        table = cilia("bpf", "lb", "list", "--node", node).stdout
        assert "10.96.0.21:80/TCP" in table and f"{pods[1].ip}:8080/TCP (21)" in table
        assert row["service_id"] == 21
        bad = cilia("bpf", "lb", "list", "--node", "no-such-node")
        assert bad.returncode != 0 and "no-such-node" in bad.stderr
    finally:
        lab.destroy()


def test_kube_proxy_replacement_status_reads_the_device() -> None:
    from services.cli.service import kube_proxy_replacement
    from tests.support.lblab import UPLINK

    lab = LbLab.create(nodes=1, pods=1)
    try:
        node = lab.nodes[0]
        got = kube_proxy_replacement(node.name, UPLINK, node.lab.node_ns)
        assert got["enabled"] and got["text"] == f"True   [{UPLINK} (Direct Routing), SNAT]"
        lab.service(31, "np", type="NodePort", cluster_ip="10.96.0.31",
                    ports=[{"name": "", "port": 80, "protocol": "TCP", "node_port": 30031}])
        fresh = type(node.state)(node.name, node_ips=[node.ip], lb_mode="dsr")
        fresh.view = node.state.view
        node.lbmaps.apply(fresh.plan())
        assert kube_proxy_replacement(node.name, UPLINK, node.lab.node_ns)["mode"] == "DSR"
        assert not kube_proxy_replacement(node.name, "lo", node.lab.node_ns)["enabled"]
    finally:
        lab.destroy()


async def test_kube_proxy_replacement_works_inside_an_event_loop() -> None:
    import asyncio

    from services.cli.service import kube_proxy_replacement

    lab = await asyncio.to_thread(LbLab.create, 1, 1)
    try:
        node = lab.nodes[0]
        # called from a coroutine, as `cilia status` does
        assert kube_proxy_replacement(node.name, "up0", node.lab.node_ns)["enabled"]
    finally:
        await asyncio.to_thread(lab.destroy)
