"""Waiting for what the bus says, with deadlines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from services.common.bus import Bus, Delivery

T = TypeVar("T")


async def poll(fetch: Callable[[], Awaitable[T]], predicate: Callable[[T], bool],
               describe: Callable[[T], str], timeout: float = 10.0) -> T:
    """Fetch until ``predicate`` holds on what was fetched, and return it; after ``timeout``
    an AssertionError with ``describe`` of the last fetch."""
    deadline = time.monotonic() + timeout
    while True:
        got = await fetch()
        if predicate(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; {describe(got)}")
        await asyncio.sleep(0.05)


async def wait_for(bus: Bus, filters: list[str],
                   predicate: Callable[[dict[str, Delivery]], bool],
                   timeout: float = 10.0) -> dict[str, Delivery]:
    """Poll the bus's current state until ``predicate`` holds; returns that state."""
    return await poll(lambda: bus.snapshot(filters), predicate,
                      lambda snap: f"waiting on {filters}; last state: "
                                   f"{ {s: d.event for s, d in snap.items()} }", timeout)


def live(snap: dict[str, Delivery], event_type: str) -> list[dict[str, Any]]:
    """The data of every subject whose last event is ``event_type``."""
    return [d.event.data for d in snap.values() if d.event.type == event_type]


async def count(bus: Bus, subject_filter: str) -> int:
    """Messages stored in the history stream under ``subject_filter``."""
    from services.common import contract

    info = await bus.js.stream_info(contract.HISTORY_STREAM, subjects_filter=subject_filter)
    return sum((info.state.subjects or {}).values())


async def services_ready(bus: Bus, services: set[str], timeout: float = 30.0) -> None:
    """Wait until a replica of each of ``services`` answers status requests as ready (the
    services made the history stream by then: a command may publish)."""
    from services.common.runner import STATE_OK, collect_status

    deadline = time.monotonic() + timeout
    while True:
        replies = await collect_status(bus)
        if services <= {r["service"] for r in replies if r["state"] == STATE_OK}:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {sorted(services)} to be ready: "
                                 f"{replies}")
        await asyncio.sleep(0.05)
