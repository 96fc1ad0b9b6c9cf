"""The Kubernetes watcher against a test API server (tests/support/k8sapi) and a real bus."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common import contract
from services.common.bus import Bus
from services.common.contract import SOURCE_FILTER, ObjectEvent, source_subject
from services.k8s.client import load_configuration
from services.k8s.reflector import Backoff
from services.k8s.service import K8sWatcher
from tests.support.busread import poll, services_ready
from tests.support.k8sapi import ApiServer, api_server
from tests.support.lbobjects import endpointslice, service
from tests.support.objects import pod
from tests.support.procs import service as service_proc

TIMEOUT_S = 15.0
SETTLE_S = 0.5          # time for an event that should not be published to show up anyway


def objects() -> list[dict[str, Any]]:
    """One valid object of every watched kind."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod",
                                                              "labels": {"team": "a"}}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"},
         "spec": {"podCIDR": "10.244.1.0/24"},
         "status": {"addresses": [{"type": "InternalIP", "address": "172.31.0.11"}]}},
        pod("web", labels={"app": "web"}, ip="10.244.1.5"),
        service("web", selector={"app": "web"}),
        endpointslice("web-abc", "web", [("10.244.1.5", {"ready": True})]),
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "deny", "namespace": "default"},
         "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}},
        {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
         "metadata": {"name": "allow", "namespace": "default"},
         "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                  "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}]}},
        {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
         "metadata": {"name": "cw"},
         "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                  "egress": [{"toEndpoints": [{"matchLabels": {"app": "db"}}]}]}},
    ]


def subject(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return source_subject(obj["kind"], meta.get("namespace") or "", meta["name"])


def ref(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta.get("namespace") or "", meta["name"]


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with api_server(token="test-token", bookmark_interval=0.5) as server:
        yield server


@contextlib.asynccontextmanager
async def running(nats_url: str, api: ApiServer, tmp_path: Path,
                  watch_timeout_s: int = 30) -> AsyncIterator[K8sWatcher]:
    """An in-process watcher on its own bus connection, once every kind is listed."""
    config = await load_configuration(str(api.kubeconfig(tmp_path / "kubeconfig")))
    bus = await Bus.connect(nats_url, "k8s")
    watcher = K8sWatcher(config, watch_timeout_s=watch_timeout_s)
    try:
        await watcher.start(bus)
        await asyncio.wait_for(watcher.synced(), TIMEOUT_S)
        yield watcher
    finally:
        await watcher.stop()
        await bus.close()


async def per_subject(bus: Bus) -> dict[str, int]:
    """Messages stored per source subject."""
    info = await bus.js.stream_info(contract.HISTORY_STREAM, subjects_filter=SOURCE_FILTER)
    return dict(info.state.subjects or {})


async def until_counts(bus: Bus, want: dict[str, int]) -> dict[str, int]:
    return await poll(lambda: per_subject(bus),
                      lambda got: all(got.get(s, 0) >= n for s, n in want.items()),
                      lambda got: f"want {want}, bus has {got}", TIMEOUT_S)


async def until_seen(watcher: K8sWatcher, kind: str, rv: str) -> None:
    """Wait until ``kind``'s reflector has handled the API server's write ``rv``."""
    r = watcher.reflectors[kind]
    await poll(lambda: asyncio.sleep(0, r.resource_version),
               lambda got: got is not None and int(got) >= int(rv),
               lambda got: f"{kind} at {got}, want {rv}", TIMEOUT_S)


async def test_initial_sync_publishes_every_object_of_every_kind(
        bus: Bus, nats_url: str, api: ApiServer, tmp_path: Path) -> None:
    created = [api.create(o) for o in objects()]
    async with running(nats_url, api, tmp_path) as watcher:
        snap = await bus.snapshot([SOURCE_FILTER])
        assert set(snap) == {subject(o) for o in created}
        for obj in created:
            d = snap[subject(obj)]
            assert d.event.type == ObjectEvent.UPSERT
            meta = d.event.data["object"]["metadata"]
            assert meta["uid"] == obj["metadata"]["uid"]
            assert meta["resourceVersion"] == obj["metadata"]["resourceVersion"]
            assert d.headers["Nats-Msg-Id"] == \
                f"k8s/{obj['metadata']['uid']}/{obj['metadata']['resourceVersion']}"
            assert d.event.data["kind"] == obj["kind"]
        stats = watcher.stats()
        assert stats["published"] == 8 and stats["skipped"] == 0 and stats["relists"] == 0


async def test_create_update_delete_of_each_kind_publish_one_event_each(
        bus: Bus, nats_url: str, api: ApiServer, tmp_path: Path) -> None:
    async with running(nats_url, api, tmp_path):
        for obj in objects():
            s = subject(obj)
            api.create(obj)
            await until_counts(bus, {s: 1})
            api.patch(*ref(obj), {"metadata": {"labels": {"changed": "yes"}}})
            await until_counts(bus, {s: 2})
            api.delete(*ref(obj))
            await until_counts(bus, {s: 3})
            last = await bus.last_event(s)
            assert last is not None and last.type == ObjectEvent.DELETE, obj["kind"]
        await asyncio.sleep(SETTLE_S)
        assert set((await per_subject(bus)).values()) == {3}


async def test_a_status_only_update_publishes_nothing(
        bus: Bus, nats_url: str, api: ApiServer, tmp_path: Path) -> None:
    web, node = objects()[2], objects()[1]
    api.create(web)
    api.create(node)
    async with running(nats_url, api, tmp_path) as watcher:
        before = await per_subject(bus)
        api.patch(*ref(web), {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                  status=True)
        api.patch(*ref(node), {"status": {"conditions": [
            {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}]}},
            status=True)
        svc = api.create(service("other", selector={"app": "x"}))
        api.patch(*ref(svc), {"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}},
                  status=True)
        await until_seen(watcher, "Service", str(api.resource_version))
        await until_seen(watcher, "Pod", str(api.resource_version))
        await until_seen(watcher, "Node", str(api.resource_version))
        await asyncio.sleep(SETTLE_S)
        after = await per_subject(bus)
        assert after == {**before, subject(svc): 1}
        assert watcher.stats()["kinds"]["Pod"]["unchanged"] >= 1
        # a status field cilia reads is a change
        api.patch(*ref(web), {"status": {"podIP": "10.244.1.6"}}, status=True)
        await until_counts(bus, {subject(web): 2})


async def test_a_bookmark_advances_the_position_a_later_watch_resumes_from(
        bus: Bus, nats_url: str, api: ApiServer, tmp_path: Path) -> None:
    api.create(objects()[2])
    async with running(nats_url, api, tmp_path) as watcher:
        for i in range(3):      # writes of another kind move the resourceVersion on
            api.create(service(f"s{i}", selector={"app": "x"}))
        now = str(api.resource_version)
        await until_seen(watcher, "Pod", now)       # only a bookmark can bring it there
        assert watcher.reflectors["Pod"].stats.bookmarks >= 1
        assert watcher.reflectors["Pod"].stats.events == 0
        # everything before now is forgotten: a watch from the pod's own version would get
        # 410 and relist; the bookmark's position is still served
        api.compact()
        api.cut_streams(mid_event=True)
        await poll(lambda: asyncio.sleep(0, api.watch_calls("pods")), lambda n: n >= 2,
                   lambda n: f"{n} pod watches", TIMEOUT_S)
        api.create(pod("after", labels={"app": "web"}, ip="10.244.1.9"))
        await until_counts(bus, {source_subject("Pod", "default", "after"): 1})
        assert api.list_calls("pods") == 1
        assert watcher.reflectors["Pod"].stats.gone == 0


async def test_a_compacted_position_relists_and_deletes_what_vanished(
        bus: Bus, nats_url: str, api: ApiServer, tmp_path: Path) -> None:
    a = api.create(pod("a", labels={"app": "web"}, ip="10.244.1.5"))
    b = api.create(pod("b", labels={"app": "web"}, ip="10.244.1.6"))
    async with running(nats_url, api, tmp_path) as watcher:
        await until_counts(bus, {subject(a): 1, subject(b): 1})
        pods = watcher.reflectors["Pod"]
        await poll(lambda: asyncio.sleep(0, pods.stats.bookmarks), lambda n: n >= 1,
                   lambda n: "no bookmark yet", TIMEOUT_S)    # the pod watch is streaming
        pods.backoff = Backoff(first=1.0, maximum=1.0, jitter=0.0)
        api.cut_streams(mid_event=True)     # the watch is down for a second...
        api.delete(*ref(b))                 # ...while b is deleted...
        api.compact()                       # ...and its position is compacted away
        await until_counts(bus, {subject(b): 2})
        last = await bus.last_event(subject(b))
        assert last is not None and last.type == ObjectEvent.DELETE
        snap = await bus.snapshot([subject(b)])
        assert snap[subject(b)].headers["Nats-Msg-Id"] == f"k8s/{b['metadata']['uid']}/deleted"
        assert api.list_calls("pods") == 2
        assert pods.stats.gone == 1 and pods.stats.vanished == 1
        assert (await per_subject(bus))[subject(a)] == 1


async def test_a_stream_cut_mid_event_resumes_with_nothing_lost_or_repeated(
        bus: Bus, nats_url: str, api: ApiServer, tmp_path: Path) -> None:
    async with running(nats_url, api, tmp_path) as watcher:
        r = watcher.reflectors["Pod"]

        def deliveries() -> int:
            return r.stats.events + r.stats.bookmarks

        async def streaming(breaks: int) -> None:
            """Wait until the watch after ``breaks`` broken ones delivers something: it is
            set up, so that a cut reaches it."""
            await poll(lambda: asyncio.sleep(0, r.stats.errors), lambda n: n >= breaks,
                       lambda n: f"{n} broken pod watches, want {breaks}", TIMEOUT_S)
            seen = deliveries()
            await poll(lambda: asyncio.sleep(0, deliveries()), lambda n: n > seen,
                       lambda n: f"{n} pod watch deliveries", TIMEOUT_S)

        await streaming(0)
        api.event_delay = 0.02
        pods = [pod(f"p{i}", labels={"app": "web"}, ip=f"10.244.2.{i + 1}") for i in range(20)]
        cuts = 0
        for i, p in enumerate(pods):
            api.create(p)
            if i % 7 == 6:          # cut while events are still on their way
                await asyncio.sleep(0.05)
                api.cut_streams(mid_event=True)
                cuts += 1
                await streaming(cuts)
        api.event_delay = 0.0
        counts = await until_counts(bus, {subject(p): 1 for p in pods})
        await asyncio.sleep(SETTLE_S)
        counts = await per_subject(bus)
        assert all(counts[subject(p)] == 1 for p in pods), counts
        assert api.list_calls("pods") == 1 and api.watch_calls("pods") >= 1 + cuts
        assert r.stats.errors >= cuts
        stats = watcher.stats()["kinds"]["Pod"]
        assert stats["duplicates"] == 0 and stats["published"] == 20 and stats["gone"] == 0


async def test_a_restarted_watcher_publishes_nothing_when_nothing_changed(
        bus: Bus, nats_url: str, api: ApiServer, tmp_path: Path) -> None:
    for o in objects():
        api.create(o)
    async with running(nats_url, api, tmp_path):
        pass
    before = await per_subject(bus)
    assert sum(before.values()) == 8
    async with running(nats_url, api, tmp_path) as watcher:
        await asyncio.sleep(SETTLE_S)
        assert await per_subject(bus) == before
        assert watcher.stats()["published"] == 0


async def test_a_restarted_watcher_publishes_what_changed_while_it_was_away(
        bus: Bus, nats_url: str, api: ApiServer, tmp_path: Path) -> None:
    created = [api.create(o) for o in objects()]
    async with running(nats_url, api, tmp_path):
        pass
    web, cnp = created[2], created[6]
    api.delete(*ref(cnp))
    api.patch(*ref(web), {"metadata": {"labels": {"app": "web2"}}})
    api.patch(*ref(web), {"status": {"phase": "Running"}}, status=True)
    async with running(nats_url, api, tmp_path) as watcher:
        counts = await per_subject(bus)
        assert counts[subject(cnp)] == 2 and counts[subject(web)] == 2
        assert sum(counts.values()) == 10
        stats = watcher.stats()
        assert stats["published"] == 1 and stats["deleted"] == 1


async def test_a_malformed_object_is_skipped_and_the_rest_goes_on(
        bus: Bus, nats_url: str, api: ApiServer, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    bad = pod("bad", labels={"app": "web"})
    bad["spec"]["containers"][0]["ports"] = [{"containerPort": 70000}]
    async with running(nats_url, api, tmp_path) as watcher:
        api.create(bad)
        good = api.create(pod("good", labels={"app": "web"}, ip="10.244.1.7"))
        await until_counts(bus, {subject(good): 1})
        assert subject(bad) not in await per_subject(bus)
        assert watcher.stats()["kinds"]["Pod"]["skipped"] == 1
        assert any("Pod default/bad" in r.getMessage() and "containerPort" in r.getMessage()
                   for r in caplog.records)
        # once fixed, it is published
        fixed = copy.deepcopy(bad)
        fixed["spec"]["containers"][0]["ports"] = [{"containerPort": 8080}]
        api.patch(*ref(bad), {"spec": fixed["spec"]})
        await until_counts(bus, {subject(bad): 1})


async def test_the_service_process_answers_status_as_k8s(
        bus: Bus, nats_url: str, api: ApiServer, tmp_path: Path) -> None:
    api.create(objects()[0])
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
    with service_proc("services.k8s", nats_url, "--kubeconfig", str(kubeconfig),
                      log=tmp_path / "k8s.log"):
        await services_ready(bus, {"k8s"})
        await until_counts(bus, {subject(objects()[0]): 1})
