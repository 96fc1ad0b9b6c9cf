"""Lease leader election against the test API server: one leader at a time, takeover after a
crash within the lease, at once after a clean stop, one winner of a 409 race, and a leader that
cannot renew stops before anyone else may start.

Every test samples both candidates' ``leading`` every 50 ms and fails if both ever lead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from services.k8s.leader import LeaseElector
from tests.support.k8sapi import api_server
from tests.support.kubeclient import eventually, kube_client

NAMESPACE = "kube-system"
LEASE = "cilia-k8s-watcher"
LEASE_DURATION = 2.0
RENEW_DEADLINE = 1.5
RETRY_PERIOD = 0.2
SAMPLE_S = 0.05
SLACK_S = 0.6        # scheduling on two shared cores


@pytest.fixture
def api() -> Iterator[Any]:
    with api_server(token="test-token") as server:
        yield server


class Candidate:
    """One elector, running, with what its callbacks saw."""

    def __init__(self, elector: LeaseElector) -> None:
        self.elector = elector
        self.started = 0
        self.stopped = 0
        self.task: asyncio.Task[None] | None = None

    async def _on_started(self) -> None:
        self.started += 1

    async def _on_stopped(self) -> None:
        self.stopped += 1

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run(self._on_started, self._on_stopped))

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    @property
    def leading(self) -> bool:
        return self.elector.is_leader


class Sampler:
    """Samples every candidate's ``leading``; never more than one may be true."""

    def __init__(self, candidates: list[Candidate]) -> None:
        self.candidates = candidates
        self.samples = 0
        self.overlaps: list[list[str]] = []

    async def run(self) -> None:
        while True:
            leaders = [c.elector.identity for c in self.candidates if c.leading]
            if len(leaders) > 1:
                self.overlaps.append(leaders)
            self.samples += 1
            await asyncio.sleep(SAMPLE_S)


@contextlib.asynccontextmanager
async def candidates(api: Any, tmp_path: Path, n: int = 2, start: bool = True,
                     **options: Any) -> AsyncIterator[list[Candidate]]:
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for i in range(n):
            client = await stack.enter_async_context(kube_client(api, tmp_path, f"c{i}"))
            out.append(Candidate(LeaseElector(
                client, NAMESPACE, LEASE, identity=f"candidate-{i}",
                lease_duration=LEASE_DURATION, renew_deadline=RENEW_DEADLINE,
                retry_period=RETRY_PERIOD, **options)))
        sampler = Sampler(out)
        sampling = asyncio.create_task(sampler.run())
        if start:
            for c in out:
                c.start()
        try:
            yield out
        finally:
            for c in out:
                if c.task is not None:
                    await c.stop()
            sampling.cancel()
            await asyncio.gather(sampling, return_exceptions=True)
        assert sampler.samples > 0
        assert sampler.overlaps == [], f"two leaders at once: {sampler.overlaps[:3]}"


def lease(api: Any) -> dict[str, Any]:
    found = api.get("coordination.k8s.io/v1", "Lease", NAMESPACE, LEASE)
    assert found is not None
    return dict(found)


async def one_leader(cs: list[Candidate], timeout: float = 5.0) -> Candidate:
    await eventually("a leader", lambda: sum(c.leading for c in cs) == 1, timeout)
    return next(c for c in cs if c.leading)


async def test_two_candidates_one_leader(api: Any, tmp_path: Path) -> None:
    async with candidates(api, tmp_path) as cs:
        leader = await one_leader(cs)
        await asyncio.sleep(LEASE_DURATION * 1.5)      # renewals keep it; the other waits
        assert [c.leading for c in cs].count(True) == 1 and leader.leading
        assert leader.started == 1 and leader.stopped == 0
        spec = lease(api)["spec"]
        assert spec["holderIdentity"] == leader.elector.identity
        assert spec["leaseDurationSeconds"] == round(LEASE_DURATION)
        assert spec["leaseTransitions"] == 0
        assert spec["acquireTime"] and spec["renewTime"] > spec["acquireTime"]
        standby = next(c for c in cs if c is not leader)
        assert standby.started == 0 and standby.elector.holder == leader.elector.identity


async def test_a_crashed_leader_is_replaced_within_the_lease(api: Any, tmp_path: Path) -> None:
    async with candidates(api, tmp_path, release_on_cancel=False) as cs:
        leader = await one_leader(cs)
        standby = next(c for c in cs if c is not leader)
        await asyncio.sleep(RETRY_PERIOD * 3)
        killed = time.monotonic()
        await leader.stop()                        # no release: the lease stays held
        assert lease(api)["spec"]["holderIdentity"] == leader.elector.identity
        await eventually("the standby leads", lambda: standby.leading,
                         LEASE_DURATION + RETRY_PERIOD + SLACK_S)
        took = time.monotonic() - killed
        # it waited for the lease to lapse: not before the duration minus one retry period
        assert took >= LEASE_DURATION - RETRY_PERIOD - 0.05, took
        spec = lease(api)["spec"]
        assert spec["holderIdentity"] == standby.elector.identity
        assert spec["leaseTransitions"] == 1
        assert leader.stopped == 1 and standby.started == 1


async def test_a_clean_stop_releases_the_lease_at_once(api: Any, tmp_path: Path) -> None:
    async with candidates(api, tmp_path) as cs:
        leader = await one_leader(cs)
        standby = next(c for c in cs if c is not leader)
        await asyncio.sleep(RETRY_PERIOD * 3)
        stopped = time.monotonic()
        await leader.stop()
        assert not leader.leading and leader.stopped == 1
        await eventually("the standby leads", lambda: standby.leading,
                         RETRY_PERIOD + SLACK_S)
        assert time.monotonic() - stopped < LEASE_DURATION - RETRY_PERIOD
        assert lease(api)["spec"]["holderIdentity"] == standby.elector.identity


async def test_the_last_candidate_releases_to_nobody(api: Any, tmp_path: Path) -> None:
    async with candidates(api, tmp_path, n=1) as (only,):
        await one_leader([only])
        await only.stop()
    spec = lease(api)["spec"]
    assert (spec["holderIdentity"] or "", spec["leaseDurationSeconds"]) == ("", 1)


async def test_a_409_race_for_a_free_lease_has_one_winner(api: Any, tmp_path: Path) -> None:
    api.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": LEASE, "namespace": NAMESPACE},
                "spec": {"holderIdentity": "", "leaseDurationSeconds": 1}})
    conflicts: list[str] = []
    async with candidates(api, tmp_path, start=False) as cs:
        # Both read the same resourceVersion before either writes: one PUT must get 409.
        barrier = asyncio.Barrier(2)
        for c in cs:
            plain = c.elector._api.replace_namespaced_lease

            async def racing(*args: Any, _plain: Any = plain, _c: Candidate = c,
                             **kwargs: Any) -> Any:
                if not conflicts:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(2):
                            await barrier.wait()
                try:
                    return await _plain(*args, **kwargs)
                except ApiException as exc:
                    if exc.status == 409:
                        conflicts.append(_c.elector.identity)
                    raise

            c.elector._api.replace_namespaced_lease = racing
        for c in cs:
            c.start()
        leader = await one_leader(cs)
        await asyncio.sleep(LEASE_DURATION)
        assert [c.leading for c in cs].count(True) == 1 and leader.leading
        assert len(conflicts) == 1 and conflicts[0] != leader.elector.identity
        assert lease(api)["spec"]["holderIdentity"] == leader.elector.identity


async def test_a_leader_that_cannot_renew_stops_before_the_lease_lapses(
        api: Any, tmp_path: Path) -> None:
    async with candidates(api, tmp_path) as cs:
        leader = await one_leader(cs)
        standby = next(c for c in cs if c is not leader)

        async def unreachable(*args: Any, **kwargs: Any) -> Any:
            raise aiohttp.ClientConnectionError("API server unreachable")

        cut = time.monotonic()
        leader.elector._api.read_namespaced_lease = unreachable
        leader.elector._api.replace_namespaced_lease = unreachable
        await eventually("the leader stops", lambda: not leader.leading,
                         RENEW_DEADLINE + RETRY_PERIOD + SLACK_S)
        assert time.monotonic() - cut <= RENEW_DEADLINE + RETRY_PERIOD + SLACK_S
        assert leader.stopped == 1
        await eventually("the standby leads", lambda: standby.leading,
                         LEASE_DURATION + RETRY_PERIOD + SLACK_S)
