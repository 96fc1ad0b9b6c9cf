"""The reflector's list-and-watch loop against a scripted API (services.k8s.reflector)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from services.common.contract import ObjectEvent
from services.k8s.errors import BrokenStream, Gone
from services.k8s.reflector import Backoff, ListPage, Reflector
from services.k8s.resources import BY_KIND, Resource

PODS = BY_KIND["Pod"]


def pod(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "uid": f"u-{name}",
                         "resourceVersion": rv}, "spec": {}}


class FakeApi:
    """Lists from ``objects`` (pages of ``page``); each watch plays the next script, a list
    of events, exceptions to raise and events to wait for."""

    def __init__(self, objects: list[dict[str, Any]], rv: str) -> None:
        self.objects = objects
        self.rv = rv
        self.scripts: list[list[Any]] = []
        self.watched_from: list[str] = []
        self.lists = 0
        self.done = asyncio.Event()

    async def list(self, resource: Resource, *, limit: int,
                   continue_token: str | None) -> ListPage:
        start = int(continue_token or 0)
        if start == 0:
            self.lists += 1
        items = self.objects[start:start + limit]
        more = start + limit < len(self.objects)
        return ListPage([dict(o) for o in items], self.rv, str(start + limit) if more else None)

    async def watch(self, resource: Resource, *, resource_version: str,
                    timeout_s: int) -> AsyncGenerator[dict[str, Any], None]:
        self.watched_from.append(resource_version)
        if not self.scripts:
            self.done.set()
            await asyncio.Event().wait()
        for step in self.scripts.pop(0):
            if isinstance(step, asyncio.Event):
                await step.wait()
                continue
            if isinstance(step, BaseException):
                raise step
            yield step


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[ObjectEvent, str, str]] = []
        self.synced: list[list[str]] = []

    async def on_change(self, resource: Resource, event_type: ObjectEvent,
                        obj: dict[str, Any]) -> None:
        self.changes.append((event_type, obj["metadata"]["name"],
                             obj["metadata"]["resourceVersion"]))
        assert obj["kind"] == resource.kind and obj["apiVersion"] == resource.api_version

    async def on_synced(self, resource: Resource, vanished: list[dict[str, Any]]) -> None:
        self.synced.append([o["metadata"]["name"] for o in vanished])


async def run_until_idle(reflector: Reflector, api: FakeApi) -> None:
    task = asyncio.create_task(reflector.run())
    try:
        await asyncio.wait_for(api.done.wait(), 5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def reflector(api: FakeApi, sink: Recorder) -> Reflector:
    return Reflector(PODS, api, sink, page=2,
                     backoff=Backoff(first=0.001, maximum=0.002))


async def test_pages_are_listed_whole_then_watched_from_the_lists_version() -> None:
    api = FakeApi([pod(f"p{i}", str(i)) for i in range(5)], rv="5")
    api.scripts = [[{"type": "ADDED", "object": {"kind": "Pod", "apiVersion": "v1",
                                                  **pod("p5", "6")}},
                    {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}]]
    sink = Recorder()
    r = reflector(api, sink)
    await run_until_idle(r, api)
    assert len(r.cache) == 6 and api.lists == 1 and sink.synced == [[]]
    assert sink.changes == [(ObjectEvent.UPSERT, "p5", "6")]
    # the stream ended; the next watch resumes from the bookmark, not from a relist
    assert api.watched_from == ["5", "9"]
    assert r.stats.bookmarks == 1 and r.stats.lists == 1


async def test_a_broken_stream_resumes_from_the_last_event() -> None:
    api = FakeApi([pod("a", "1")], rv="1")
    api.scripts = [[{"type": "MODIFIED", "object": pod("a", "2")}, BrokenStream("cut")],
                   [{"type": "DELETED", "object": pod("a", "3")}]]
    sink = Recorder()
    r = reflector(api, sink)
    await run_until_idle(r, api)
    assert api.watched_from == ["1", "2", "3"] and api.lists == 1
    assert sink.changes == [(ObjectEvent.UPSERT, "a", "2"), (ObjectEvent.DELETE, "a", "3")]
    assert r.cache == {} and r.stats.errors == 1


async def test_gone_relists_and_hands_on_what_vanished() -> None:
    api = FakeApi([pod("a", "1"), pod("b", "2")], rv="2")
    away = asyncio.Event()
    api.scripts = [[away, Gone("too old resource version")]]
    sink = Recorder()
    r = reflector(api, sink)
    task = asyncio.create_task(r.run())
    await asyncio.wait_for(r.synced.wait(), 5)
    api.objects, api.rv = [pod("b", "2"), pod("c", "7")], "8"     # a deleted while away
    away.set()
    await asyncio.wait_for(api.done.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert api.lists == 2 and sink.synced == [[], ["a"]]
    assert sorted(k[2] for k in r.cache) == ["b", "c"]
    assert api.watched_from == ["2", "8"] and r.stats.gone == 1 and r.stats.vanished == 1


async def test_an_error_event_in_the_stream_is_raised_as_its_status() -> None:
    api = FakeApi([], rv="1")
    api.scripts = [[{"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                                  "reason": "Expired", "message": "old"}}]]
    sink = Recorder()
    r = reflector(api, sink)
    await run_until_idle(r, api)
    assert r.stats.gone == 1 and api.lists == 2


def test_backoff_doubles_up_to_its_maximum_with_jitter() -> None:
    b = Backoff(first=1.0, maximum=8.0, jitter=0.5, rng=random.Random(1))
    waits = [b.next() for _ in range(6)]
    for wait, base in zip(waits, [1, 2, 4, 8, 8, 8], strict=True):
        assert base * 0.5 <= wait <= base * 1.5
    b.reset()
    assert b.next() <= 1.5
