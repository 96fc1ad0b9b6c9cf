"""The lb service on a real bus, as its own process."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.cli import source
from services.common import contract
from services.common.bus import Bus
from services.common.kvstore import JetStreamStore
from services.lb.client import read_view
from services.lb.events import LbView
from services.lb.ids import SERVICES, LbIds
from services.lb.model import SERVICE_CIDR
from tests.support.busread import count, poll
from tests.support.lbobjects import echo_pod, endpointslice, service
from tests.support.objects import manifests
from tests.support.procs import service as service_proc

TIMEOUT_S = 10.0


@pytest.fixture
def lb_proc(bus: Bus, nats_url: str, tmp_path: Path) -> Iterator[None]:
    with service_proc("services.lb", nats_url, log=tmp_path / "lb.log"):
        yield


async def until(bus: Bus, pred: Callable[[LbView], bool], timeout: float = TIMEOUT_S) -> LbView:
    return await poll(lambda: read_view(bus), pred,
                      lambda v: f"services={v.services} members={v.members} "
                                f"status={v.status}", timeout)


def backends_of(view: LbView, ref: str) -> set[str]:
    sid = view.ids[ref]
    return {f"{view.backends[b].address}:{view.backends[b].port}"
            for _, b in view.members.get(sid, set()) if b in view.backends}


def op_of(view: LbView, ref: str) -> str | None:
    """The op of a Service's last status (None: no status)."""
    st = view.status.get(ref)
    return None if st is None else st.op


def error_of(view: LbView, ref: str) -> str:
    """The error of a Service's last status ("" when none)."""
    return view.status[ref].error or ""


async def test_clusterip_service_from_selector_and_incremental_backend(
        bus: Bus, lb_proc: None) -> None:
    await source.apply(bus, manifests(
        service("web", selector={"app": "echo"}, ports=[{"port": 80, "targetPort": "http"}]),
        *(echo_pod(f"e{i}", f"10.244.1.{10 + i}") for i in range(3))))
    view = await until(bus, lambda v: "default/web" in v.ids
                       and len(backends_of(v, "default/web")) == 3)
    sid = view.ids["default/web"]
    svc = view.services[sid]
    assert ipaddress.IPv4Address(svc.cluster_ip) in SERVICE_CIDR
    assert svc.type == "ClusterIP" and svc.ports[0].node_port == 0
    assert backends_of(view, "default/web") == {"10.244.1.10:8080", "10.244.1.11:8080",
                                                "10.244.1.12:8080"}
    assert view.status["default/web"].op == "ok"
    before = await count(bus, "cilia.lb.>")
    # one more pod: its backend and one membership delta, nothing else
    await source.apply(bus, manifests(echo_pod("e3", "10.244.1.13")))
    view = await until(bus, lambda v: len(backends_of(v, "default/web")) == 4)
    await asyncio.sleep(0.3)
    assert await count(bus, "cilia.lb.>") - before == 2
    assert await count(bus, f"cilia.lb.members.{sid}") == 2
    # a pod deleted: the delta removes it and its backend goes away
    await source.delete(bus, manifests(echo_pod("e0", "10.244.1.10")))
    view = await until(bus, lambda v: "10.244.1.10:8080" not in backends_of(v, "default/web"))
    assert not any(b.address == "10.244.1.10" for b in view.backends.values())


async def test_nodeport_allocation_and_conflicts(bus: Bus, lb_proc: None) -> None:
    await source.apply(bus, manifests(
        service("np1", type_="NodePort", selector={"app": "echo"}),
        service("np2", type_="NodePort", selector={"app": "echo"},
                ports=[{"port": 80, "nodePort": 31000}])))
    view = await until(bus, lambda v: {"default/np1", "default/np2"} <= set(v.ids))
    np1 = view.services[view.ids["default/np1"]].ports[0].node_port
    assert 30000 <= np1 <= 32767
    assert view.services[view.ids["default/np2"]].ports[0].node_port == 31000
    cip = view.services[view.ids["default/np1"]].cluster_ip
    # np3 asks for np2's NodePort and np1's ClusterIP: clear errors, nothing published for it
    await source.apply(bus, manifests(
        service("np3", type_="NodePort", ports=[{"port": 80, "nodePort": 31000}]),
        service("ip3", clusterIP=cip)))
    view = await until(bus, lambda v: op_of(v, "default/np3") == "error"
                       and op_of(v, "default/ip3") == "error")
    assert "31000 is already allocated to default/np2" in error_of(view, "default/np3")
    assert "spec.ports[0].nodePort" in error_of(view, "default/np3")
    assert f"{cip} is already allocated to default/np1" in error_of(view, "default/ip3")
    assert "default/np3" not in view.ids and "default/ip3" not in view.ids
    # once np2 is gone its port is free again, and np3 gets it without being re-applied
    await source.delete(bus, manifests(service("np2")))
    view = await until(bus, lambda v: op_of(v, "default/np3") == "ok")
    assert "default/np2" not in view.ids
    assert view.services[view.ids["default/np3"]].ports[0].node_port == 31000


async def test_endpointslices_win_over_selector(bus: Bus, lb_proc: None) -> None:
    await source.apply(bus, manifests(
        service("db", selector={"app": "echo"}), echo_pod("e0", "10.244.1.10"),
        endpointslice("db-1", "db", [("10.1.0.1", {"ready": True}),
                                     ("10.1.0.2", {"ready": False, "serving": True,
                                                   "terminating": True})])))
    view = await until(bus, lambda v: "default/db" in v.ids
                       and backends_of(v, "default/db") == {"10.1.0.1:9090", "10.1.0.2:9090"})
    states = {b.address: b.state for b in view.backends.values()}
    assert states == {"10.1.0.1": "active", "10.1.0.2": "terminating"}


async def test_restart_publishes_nothing_and_keeps_numbers(bus: Bus, nats_url: str,
                                                           tmp_path: Path) -> None:
    objs = manifests(service("web", selector={"app": "echo"}, type_="NodePort"),
                     *(echo_pod(f"e{i}", f"10.244.1.{10 + i}") for i in range(3)))
    await source.apply(bus, objs)
    with service_proc("services.lb", nats_url, log=tmp_path / "lb1.log"):
        first = await until(bus, lambda v: "default/web" in v.ids
                            and len(backends_of(v, "default/web")) == 3)
        await asyncio.sleep(0.3)
    stored = await count(bus, "cilia.lb.>")
    with service_proc("services.lb", nats_url, log=tmp_path / "lb2.log"), \
            service_proc("services.lb", nats_url, log=tmp_path / "lb3.log"):
        await source.apply(bus, manifests(echo_pod("e3", "10.244.1.13")))
        second = await until(bus, lambda v: len(backends_of(v, "default/web")) == 4)
        await asyncio.sleep(0.5)
    # two replicas and a restart: only the new backend and its delta, each stored once
    assert await count(bus, "cilia.lb.>") - stored == 2
    assert second.ids == first.ids
    assert second.services[second.ids["default/web"]] == first.services[first.ids["default/web"]]


async def test_ids_are_safe_with_racing_replicas(bus: Bus) -> None:
    kv = await bus.key_value(contract.KV_SERVICES)
    a, b = LbIds(JetStreamStore(kv)), LbIds(JetStreamStore(kv))
    owners = [f"ns/svc{i}" for i in range(30)]
    got_a, got_b = await asyncio.gather(
        asyncio.gather(*(a.allocate(SERVICES, o) for o in owners)),
        asyncio.gather(*(b.allocate(SERVICES, o) for o in reversed(owners))))
    assert list(got_a) == list(reversed(got_b))
    assert len(set(got_a)) == len(owners)


async def test_shared_external_frontend_is_a_conflict(bus: Bus, lb_proc: None) -> None:
    await source.apply(bus, manifests(
        service("first", selector={"app": "echo"}, externalIPs=["192.0.2.7"])))
    await until(bus, lambda v: "default/first" in v.ids)
    await source.apply(bus, manifests(
        service("second", selector={"app": "echo"}, externalIPs=["192.0.2.7"]),
        service("third", selector={"app": "echo"}, externalIPs=["192.0.2.7"],
                ports=[{"port": 443}])))
    view = await until(bus, lambda v: "default/second" in v.status and "default/third" in v.ids)
    assert view.status["default/second"].op == "error"
    assert "192.0.2.7:80/TCP is already used by Service default/first" in \
        error_of(view, "default/second")
    assert "default/second" not in view.ids        # another port on the same IP is fine


async def test_objects_deleted_while_down_are_cleaned_up_once(bus: Bus, nats_url: str,
                                                              tmp_path: Path) -> None:
    objs = manifests(service("gone", selector={"app": "echo"}, clusterIP="10.96.9.9"),
                     service("clash", clusterIP="10.96.9.9"), echo_pod("e0", "10.244.1.10"))
    await source.apply(bus, objs)
    with service_proc("services.lb", nats_url, log=tmp_path / "lb1.log"):
        await until(bus, lambda v: {"default/gone", "default/clash"} <= set(v.status))
    await source.delete(bus, manifests(service("gone"), service("clash")))
    with service_proc("services.lb", nats_url, log=tmp_path / "lb2.log"):
        view = await until(bus, lambda v: not v.ids and not v.backends and all(
            st.op == "delete" for st in v.status.values()))
        await asyncio.sleep(0.3)
    assert set(view.status) == {"default/gone", "default/clash"}
    stored = await count(bus, "cilia.lb.>")
    with service_proc("services.lb", nats_url, log=tmp_path / "lb3.log"):
        await asyncio.sleep(1.0)
    assert await count(bus, "cilia.lb.>") == stored


async def test_a_pod_event_dirties_only_the_services_selecting_it() -> None:
    from datetime import datetime

    from services.common.bus import Delivery
    from services.common.codec import decode, encode
    from services.lb.service import LbService

    svc = LbService()       # not live yet: events are only folded

    async def feed(obj: dict, deleted: bool = False) -> None:  # type: ignore[type-arg]
        meta = obj["metadata"]
        data = {"kind": obj["kind"], "namespace": meta["namespace"], "name": meta["name"],
                "object": obj}
        event = decode(encode("object.delete" if deleted else "object.upsert", data))
        # pending > 0: the event is folded, not reconciled yet
        await svc._on_source(Delivery("s", event, 1, datetime.now(), {}, 5))

    for i in range(300):
        await feed(service(f"s{i}", selector={"app": f"a{i}"}))
    await feed(service("other", "prod", selector={"app": "a7"}))
    svc._dirty.clear()
    svc._live = True
    await feed(echo_pod("p7", "10.244.1.7", app="a7"))
    assert svc._dirty == {"default/s7"}
    svc._dirty.clear()
    relabelled = echo_pod("p7", "10.244.1.7", app="a8")      # leaves s7, joins s8
    await feed(relabelled)
    assert svc._dirty == {"default/s7", "default/s8"}
    svc._dirty.clear()
    await feed(relabelled, deleted=True)
    assert svc._dirty == {"default/s8"}
