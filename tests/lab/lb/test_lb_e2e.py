"""End to end: Service and Pod objects applied on a real bus, the lb service process, its
events folded by the node reducer into the kernel maps, and real connections to the
ClusterIP it allocated."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli import source
from services.common.bus import Bus, Delivery
from services.common.contract import LB_FILTER
from tests.bus.lb.test_lb_service import backends_of, until
from tests.support.lblab import LbLab, who
from tests.support.lbobjects import echo_pod, service
from tests.support.objects import manifests
from tests.support.procs import service as service_proc

pytestmark = pytest.mark.datapath


@pytest.fixture
def lb_proc(bus: Bus, nats_url: str, tmp_path: Path) -> Iterator[None]:
    with service_proc("services.lb", nats_url, log=tmp_path / "lb.log"):
        yield


@pytest.fixture
def lab() -> Iterator[LbLab]:
    lab = LbLab.create(nodes=1, pods=4)
    try:
        yield lab
    finally:
        lab.destroy()


class Sync:
    """Feeds the node reducer every lb event after the last one it saw, in stream order."""

    def __init__(self, lab: LbLab) -> None:
        self.lab = lab
        self.seq = 0

    async def __call__(self, bus: Bus) -> None:
        got: list[Delivery] = []

        async def keep(d: Delivery) -> None:
            if d.seq > self.seq:
                got.append(d)

        sub = await bus.consume([LB_FILTER], keep, name="test-agent")
        await sub.caught_up.wait()
        await sub.stop()
        for d in got:
            self.lab.publish(d.subject, d.event.type, d.event.data)
            self.seq = d.seq


def spread(lab: LbLab, vip: str, n: int) -> Counter[str]:
    client = lab.nodes[0].pods[0]
    out: Counter[str] = Counter()
    for _ in range(n):
        res = who(client.name, vip, 80)
        assert res is not None
        out[res[0]] += 1
    return out


async def test_applied_service_carries_traffic(bus: Bus, lb_proc: None, lab: LbLab) -> None:
    node = lab.nodes[0]
    pods = node.pods
    objs = [echo_pod(f"e{i}", p.ip, node=node.name) for i, p in enumerate(pods[1:4], start=1)]
    await source.apply(bus, manifests(
        service("web", selector={"app": "echo"}, ports=[{"port": 80, "targetPort": "http"}]),
        *objs))
    view = await until(bus, lambda v: "default/web" in v.ids
                       and len(backends_of(v, "default/web")) == 3)
    vip = view.services[view.ids["default/web"]].cluster_ip
    sync = Sync(lab)
    await sync(bus)
    assert set(spread(lab, vip, 60)) == {p.ip for p in pods[1:4]}
    # the pod behind backend e1 is deleted: the delta reaches the maps, no new connection
    # goes there
    await source.delete(bus, manifests(objs[0]))
    await until(bus, lambda v: len(backends_of(v, "default/web")) == 2)
    await sync(bus)
    assert set(spread(lab, vip, 60)) == {pods[2].ip, pods[3].ip}
    # the Service deleted: its frontend is gone from the kernel
    await source.delete(bus, manifests(service("web")))
    await until(bus, lambda v: "default/web" not in v.ids)
    await sync(bus)
    assert node.lbmaps.service_entries() == {} and node.lbmaps.backend_entries() == {}
