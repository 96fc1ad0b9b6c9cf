"""The elector's loop (services.k8s.leader) over an in-memory Lease API with the API server's
optimistic concurrency (404, 409 on a stale resourceVersion): no HTTP, fast timings.

The same scenarios run against the test API server in tests/bus/k8s/test_leader.py.
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from services.k8s.election import ElectionConfigError
from services.k8s.leader import LeaseElector

DURATION, DEADLINE, RETRY = 1.0, 0.6, 0.1


class LeaseStore:
    """One Lease, as the API server keeps it."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.rv = 0
        self.conflicts = 0
        self.down: set[str] = set()       # identities whose calls fail

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.obj = obj
        return copy.deepcopy(obj)


class FakeCoordination:
    def __init__(self, store: LeaseStore, who: str) -> None:
        self.store, self.who = store, who

    def _check(self) -> None:
        if self.who in self.store.down:
            raise OSError("unreachable")

    async def read_namespaced_lease(self, name: str, namespace: str) -> dict[str, Any]:
        await asyncio.sleep(0)
        self._check()
        if self.store.obj is None:
            raise ApiException(status=404, reason="NotFound")
        return copy.deepcopy(self.store.obj)

    async def create_namespaced_lease(self, namespace: str, body: dict[str, Any]) -> Any:
        await asyncio.sleep(0)
        self._check()
        if self.store.obj is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        return self.store._bump(body)

    async def replace_namespaced_lease(self, name: str, namespace: str,
                                       body: dict[str, Any]) -> Any:
        await asyncio.sleep(0)
        self._check()
        assert self.store.obj is not None
        if body["metadata"].get("resourceVersion") != self.store.obj["metadata"][
                "resourceVersion"]:
            self.store.conflicts += 1
            raise ApiException(status=409, reason="Conflict")
        return self.store._bump(body)


class PlainClient:
    """What the elector asks of an ApiClient besides the Lease calls."""

    @staticmethod
    def sanitize_for_serialization(obj: Any) -> Any:
        return obj


def elector(store: LeaseStore, who: str, **options: Any) -> LeaseElector:
    e = LeaseElector(PlainClient(), "ns", "lease", identity=who,  # type: ignore[arg-type]
                     lease_duration=DURATION, renew_deadline=DEADLINE, retry_period=RETRY,
                     **options)
    e._api = FakeCoordination(store, who)
    return e


async def nothing() -> None:
    return None


async def watch(electors: list[LeaseElector], seconds: float,
                until: Any = None) -> float:
    """Sample ``leading`` every 10 ms for up to ``seconds`` (or until ``until()``); fail on
    two leaders. Returns the time taken."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        assert sum(e.is_leader for e in electors) <= 1, "two leaders at once"
        if until is not None and until():
            break
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def run(e: LeaseElector) -> asyncio.Task[None]:
    return asyncio.create_task(e.run(nothing, nothing))


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_one_leader_and_a_crash_takeover_after_the_lease() -> None:
    store = LeaseStore()
    a, b = elector(store, "a", release_on_cancel=False), elector(store, "b")
    ta, tb = run(a), run(b)
    try:
        await watch([a, b], 1.0, lambda: a.is_leader or b.is_leader)
        leader, standby = (a, b) if a.is_leader else (b, a)
        await watch([a, b], DURATION * 1.5)
        assert leader.is_leader and not standby.is_leader
        await stop(ta if leader is a else tb)
        # if b led, its cancel released: a takes over fast; if a led (no release), b waits
        took = await watch([a, b], DURATION + 1.0, lambda: standby.is_leader)
        assert standby.is_leader
        if leader is a:
            assert DURATION - RETRY - 0.05 <= took <= DURATION + RETRY + 0.3
        else:
            assert took <= RETRY + 0.3
        assert store.obj is not None and store.obj["spec"]["leaseTransitions"] == 1
    finally:
        await stop(ta)
        await stop(tb)


async def test_release_on_cancel_hands_over_at_once() -> None:
    store = LeaseStore()
    a = elector(store, "a")
    ta = run(a)
    await watch([a], 1.0, lambda: a.is_leader)
    b = elector(store, "b")
    tb = run(b)
    await watch([a, b], 0.3)
    await stop(ta)
    assert store.obj is not None and store.obj["spec"]["holderIdentity"] == ""
    took = await watch([a, b], DURATION, lambda: b.is_leader)
    assert b.is_leader and took <= RETRY + 0.2
    await stop(tb)


async def test_a_leader_cut_off_stops_within_the_renew_deadline() -> None:
    store = LeaseStore()
    a, b = elector(store, "a"), elector(store, "b")
    stopped: list[float] = []

    async def on_stopped() -> None:
        stopped.append(time.monotonic())

    ta = asyncio.create_task(a.run(nothing, on_stopped))
    await watch([a], 1.0, lambda: a.is_leader)
    tb = run(b)
    await watch([a, b], 0.3)
    cut = time.monotonic()
    store.down.add("a")
    # its on_stopped_leading runs just after it stops leading: wait for that, not the flag
    await watch([a, b], DEADLINE + RETRY + 0.5, lambda: bool(stopped))
    assert not a.is_leader and stopped and stopped[0] - cut <= DEADLINE + RETRY + 0.2
    await watch([a, b], DURATION + 1.0, lambda: b.is_leader)
    assert b.is_leader
    await stop(ta)
    await stop(tb)


async def test_a_race_for_a_free_lease_has_one_winner() -> None:
    store = LeaseStore()
    store._bump({"metadata": {"name": "lease", "namespace": "ns"},
                 "spec": {"holderIdentity": "", "leaseDurationSeconds": 1}})
    es = [elector(store, f"c{i}") for i in range(4)]
    tasks = [run(e) for e in es]
    await watch(es, 0.5, lambda: any(e.is_leader for e in es))
    await watch(es, DURATION * 1.5)
    assert sum(e.is_leader for e in es) == 1
    assert store.conflicts >= 1
    for t in tasks:
        await stop(t)


async def test_a_failing_leader_callback_releases_and_raises() -> None:
    store = LeaseStore()
    a = elector(store, "a")

    async def broken() -> None:
        raise RuntimeError("publisher crashed")

    with pytest.raises(RuntimeError, match="publisher crashed"):
        await asyncio.wait_for(a.run(broken, nothing), 2.0)
    assert not a.is_leader
    assert store.obj is not None and store.obj["spec"]["holderIdentity"] == ""


def test_unsafe_timings_are_refused() -> None:
    with pytest.raises(ElectionConfigError):
        LeaseElector(PlainClient(), "ns", "lease",  # type: ignore[arg-type]
                     lease_duration=1, renew_deadline=2, retry_period=0.1)
