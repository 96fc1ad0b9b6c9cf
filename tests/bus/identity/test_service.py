"""The identity service on a real bus, as its own process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from services.cli import source
from services.common import contract
from services.common.bus import Bus
from services.common.kvstore import JetStreamStore
from services.common.runner import collect_status
from services.common.schemas import SCHEMA_VERSION
from tests.support.busread import count, live, wait_for
from tests.support.objects import manifests, namespace, pod
from tests.support.procs import service

IDENT = ["cilia.identity.>"]
IPC = ["cilia.ipcache.>"]


@pytest.fixture
def identity_proc(bus: Bus, nats_url: str, tmp_path: Path) -> Iterator[None]:
    with service("services.identity", nats_url, "--grace", "1",
                 log=tmp_path / "identity.log"):
        yield


def _ids(snap: dict) -> dict[str, int]:  # type: ignore[type-arg]
    """pod-name label value -> identity, from identity events."""
    out = {}
    for d in live(snap, "identity.upsert"):
        for lbl in d["labels"]:
            if lbl.startswith("k8s:app="):
                out[lbl.split("=", 1)[1]] = d["id"]
    return out


def _ipcache(snap: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {d["prefix"]: d for d in live(snap, "ipcache.upsert")}


async def test_pods_get_identities_and_ipcache_entries(bus: Bus, identity_proc: None) -> None:
    await source.apply(bus, manifests(
        namespace("production", {"env": "prod"}),
        pod("fe-1", "production", {"app": "frontend"}, ip="10.244.1.10"),
        pod("fe-2", "production", {"app": "frontend"}, ip="10.244.1.11"),
        pod("be-1", "production", {"app": "backend"}, ip="10.244.1.12"),
        pod("pending", "production", {"app": "db"})))
    snap = await wait_for(bus, IPC, lambda s: len(_ipcache(s)) == 3)
    idents = _ids(await bus.snapshot(IDENT))
    ipc = _ipcache(snap)
    # One number per label set, shared by pods that have it; reserved ones are published too.
    assert ipc["10.244.1.10/32"]["identity"] == ipc["10.244.1.11/32"]["identity"] \
        == idents["frontend"]
    assert ipc["10.244.1.12/32"]["identity"] == idents["backend"] != idents["frontend"]
    assert ipc["10.244.1.10/32"]["host_ip"] == "172.31.0.11"
    assert ipc["10.244.1.10/32"]["pod"] == "production/fe-1"
    assert all(256 <= n <= 65535 for n in idents.values())
    # A pod without an IP has an identity but no ipcache entry.
    assert "db" in idents
    reserved = {d["id"]: d["labels"] for d in live(await bus.snapshot(IDENT), "identity.upsert")
                if d["id"] < 256}
    assert reserved == {1: ["reserved:host"], 2: ["reserved:world"],
                        3: ["reserved:unmanaged"], 4: ["reserved:health"],
                        5: ["reserved:init"], 6: ["reserved:remote-node"],
                        7: ["reserved:kube-apiserver"], 8: ["reserved:ingress"]}


async def test_label_change_moves_the_pod_and_delete_removes_it(bus: Bus,
                                                              identity_proc: None) -> None:
    await source.apply(bus, manifests(pod("a", labels={"app": "one"}, ip="10.244.1.20")))
    snap = await wait_for(bus, IPC, lambda s: "10.244.1.20/32" in _ipcache(s))
    first = _ipcache(snap)["10.244.1.20/32"]["identity"]
    await source.apply(bus, manifests(pod("a", labels={"app": "two"}, ip="10.244.1.20")))
    snap = await wait_for(
        bus, IPC, lambda s: _ipcache(s).get("10.244.1.20/32", {}).get("identity") not in
        (None, first))
    second = _ipcache(snap)["10.244.1.20/32"]["identity"]
    assert _ids(await bus.snapshot(IDENT))["two"] == second
    await source.delete(bus, manifests(pod("a", labels={"app": "two"}, ip="10.244.1.20")))
    await wait_for(bus, IPC, lambda s: "10.244.1.20/32" not in _ipcache(s))
    # Both identities are unused now: after the 1 s grace period they are released.
    snap = await wait_for(bus, IDENT, lambda s: not {"one", "two"} & set(_ids(s)))
    keys = set(await JetStreamStore(await bus.js.key_value(contract.KV_IDENTITIES)).keys())
    assert f"id.{first}" not in keys and f"id.{second}" not in keys


async def test_namespace_label_change_rederives_every_pod_in_it(bus: Bus,
                                                                identity_proc: None) -> None:
    await source.apply(bus, manifests(
        namespace("shop", {"team": "a"}),
        pod("p1", "shop", {"app": "x"}, ip="10.244.1.30"),
        pod("p2", "shop", {"app": "y"}, ip="10.244.1.31")))
    await wait_for(bus, IPC, lambda s: {"10.244.1.30/32", "10.244.1.31/32"} <= set(_ipcache(s)))
    await source.apply(bus, manifests(namespace("shop", {"team": "b"})))

    def relabelled(s: dict) -> bool:  # type: ignore[type-arg]
        by_id = {d["id"]: d["labels"] for d in live(s, "identity.upsert")}
        ipc = _ipcache(s)
        return all("k8s:io.cilium.k8s.namespace.labels.team=b" in
                   by_id.get(ipc.get(p, {}).get("identity"), [])
                   for p in ("10.244.1.30/32", "10.244.1.31/32"))

    await wait_for(bus, ["cilia.identity.>", "cilia.ipcache.>"], relabelled)


async def test_restart_keeps_every_number_and_republishes_nothing(
        bus: Bus, nats_url: str, tmp_path: Path) -> None:
    objs = manifests(*(pod(f"p{i}", labels={"app": f"a{i}"}, ip=f"10.244.2.{i + 1}")
                       for i in range(20)))
    with service("services.identity", nats_url, log=tmp_path / "id1.log"):
        await source.apply(bus, objs)
        snap = await wait_for(bus, IPC, lambda s: len(_ipcache(s)) == 20)
    before = {p: d["identity"] for p, d in _ipcache(snap).items()}
    stored = await count(bus, "cilia.>")
    with service("services.identity", nats_url, log=tmp_path / "id2.log"):
        # A pod applied after the restart proves the new process is live.
        await source.apply(bus, manifests(pod("late", labels={"app": "a3"}, ip="10.244.2.99")))
        snap = await wait_for(bus, IPC, lambda s: "10.244.2.99/32" in _ipcache(s))
    after = {p: d["identity"] for p, d in _ipcache(snap).items()}
    assert {p: after[p] for p in before} == before
    assert after["10.244.2.99/32"] == before["10.244.2.4/32"]   # same labels, same number
    # Only the new pod's source event and its ipcache entry were added.
    assert await count(bus, "cilia.>") == stored + 2
    kv = await bus.js.key_value(contract.KV_IDENTITIES)
    entry = await kv.get(f"id.{before['10.244.2.1/32']}")
    assert msgpack.unpackb(entry.value)["labels"][0] == "k8s:app=a0"


async def _report(bus: Bus, node: str, ns: str, name: str, ip: str | None,
                  payload_node: str | None = None) -> None:
    subject = contract.agent_endpoint_subject(node, ns, name)
    if ip is None:
        await bus.publish(subject, "endpoint.delete",
                          {"node": node, "namespace": ns, "pod": name}, msg_id=f"d-{subject}")
        return
    await bus.publish(subject, "endpoint.upsert",
                      {"node": payload_node or node, "namespace": ns, "pod": name, "ip": ip,
                       "endpoint_id": 3, "container_id": "c0ffee"}, msg_id=f"u-{subject}-{ip}")


async def _identity_stats(bus: Bus) -> dict[str, Any]:
    return next(r["stats"] for r in await collect_status(bus) if r["service"] == "identity")


async def test_the_scheduled_node_s_report_gives_the_address(bus: Bus,
                                                             identity_proc: None) -> None:
    # Scheduled on node1, no address yet (CNI ADD is running): its agent's report counts.
    await source.apply(bus, manifests(pod("web", "shop", {"app": "web"})))
    await _report(bus, "node1", "shop", "web", "10.244.1.40")
    snap = await wait_for(bus, IPC, lambda s: "10.244.1.40/32" in _ipcache(s))
    entry = _ipcache(snap)["10.244.1.40/32"]
    assert entry["pod"] == "shop/web" and entry["node"] == "node1"
    assert entry["identity"] == _ids(await bus.snapshot(IDENT))["web"]
    # Another node's agent cannot place the pod elsewhere, nor can a payload that names
    # another node than its subject.
    await _report(bus, "node2", "shop", "web", "10.244.2.66")
    await _report(bus, "node1", "shop", "web", "10.244.1.99", payload_node="node2")
    await source.apply(bus, manifests(pod("probe", "shop", {"app": "probe"},
                                          ip="10.244.1.41")))
    snap = await wait_for(bus, IPC, lambda s: "10.244.1.41/32" in _ipcache(s))
    assert "10.244.2.66/32" not in _ipcache(snap) and "10.244.1.99/32" not in _ipcache(snap)
    assert _ipcache(snap)["10.244.1.40/32"]["pod"] == "shop/web"
    stats = await _identity_stats(bus)
    # (the payload naming another node than its subject is refused by the bus contract)
    assert stats["endpoint_reports"] == 2 and stats["rejected"] == 1, stats
    # The endpoint goes: so does its address (the pod never got a status.podIP).
    await _report(bus, "node1", "shop", "web", None)
    await wait_for(bus, IPC, lambda s: "10.244.1.40/32" not in _ipcache(s))


async def test_status_pod_ip_serves_pods_without_a_report(bus: Bus,
                                                          identity_proc: None) -> None:
    await source.apply(bus, manifests(pod("old", "shop", {"app": "old"}, ip="10.244.1.50")))
    await wait_for(bus, IPC, lambda s: "10.244.1.50/32" in _ipcache(s))
    # A report for the pod's node wins over the status (the agent knows the address first).
    await _report(bus, "node1", "shop", "old", "10.244.1.51")
    snap = await wait_for(bus, IPC, lambda s: "10.244.1.51/32" in _ipcache(s))
    assert "10.244.1.50/32" not in _ipcache(snap)


async def test_spoofed_labels_are_dropped_and_counted(bus: Bus, identity_proc: None) -> None:
    spoof = pod("spoof", "other", {"app": "s", "io.cilium.k8s.namespace.labels.team": "a",
                                   "io.cilium.k8s.policy.serviceaccount": "robot"},
                ip="10.244.1.60")
    await source.apply(bus, manifests(namespace("other"), spoof))
    # A source that skips validation and writes a key Kubernetes forbids (one claiming a
    # source) is refused whole by the bus contract: the pod gets no identity at all.
    raw = pod("raw", "other", {"app": "r", "reserved:host": ""}, ip="10.244.1.61")
    await bus.js.publish(contract.source_subject("Pod", "other", "raw"), msgpack.packb(
        {"v": SCHEMA_VERSION, "type": "object.upsert",
         "data": {"kind": "Pod", "namespace": "other", "name": "raw", "object": raw}}),
        stream=contract.HISTORY_STREAM)
    snap = await wait_for(bus, [*IPC, *IDENT], lambda s: "10.244.1.60/32" in _ipcache(s))
    labels = {d["id"]: d["labels"] for d in live(snap, "identity.upsert")}
    ident = labels[_ipcache(snap)["10.244.1.60/32"]["identity"]]
    assert "k8s:io.cilium.k8s.policy.serviceaccount=default" in ident
    assert not [lbl for lbl in ident if "team" in lbl or "robot" in lbl]
    assert "10.244.1.61/32" not in _ipcache(snap)
    stats = await _identity_stats(bus)
    assert stats["labels_dropped"] == 2 and stats["pods_with_dropped_labels"] == 1, stats
    assert stats["rejected"] == 1, stats
    # Re-applying the same pod does not count its labels again.
    await source.apply(bus, manifests(pod("spoof", "other", {
        "app": "s", "io.cilium.k8s.namespace.labels.team": "a",
        "io.cilium.k8s.policy.serviceaccount": "robot", "v": "2"}, ip="10.244.1.60")))
    await wait_for(bus, IDENT, lambda s: any("k8s:v=2" in d["labels"]
                                             for d in live(s, "identity.upsert")))
    assert (await _identity_stats(bus))["labels_dropped"] == 2
