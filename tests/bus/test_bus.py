"""The bus contract on a real nats-server: history stream, de-duplication, rejections."""

from __future__ import annotations

import asyncio

import msgpack
from prometheus_client import REGISTRY

from services.common import subjects
from services.common.bus import Bus, Delivery, HistoryConfig
from services.common.schemas import SCHEMA_VERSION


async def test_the_same_event_published_twice_is_stored_once(bus: Bus) -> None:
    data = {"id": 300, "labels": ["k8s:app=a"]}
    first = await bus.publish(subjects.identity(300), "identity.upsert", data, msg_id="m-1")
    again = await bus.publish(subjects.identity(300), "identity.upsert", data, msg_id="m-1")
    other = await bus.publish(subjects.identity(300), "identity.upsert", data, msg_id="m-2")
    assert not first.duplicate and again.duplicate and not other.duplicate
    info = await bus.js.stream_info(subjects.HISTORY_STREAM)
    assert info.state.messages == 2


async def test_a_bad_message_is_counted_and_consumption_goes_on(bus: Bus) -> None:
    seen: list[int] = []

    async def handler(d: Delivery) -> None:
        seen.append(d.event.data["id"])

    def rejected() -> float:
        return REGISTRY.get_sample_value(
            "cilia_bus_messages_total", {"service": "test", "outcome": "rejected"}) or 0.0

    before = rejected()
    await bus.publish(subjects.identity(1), "identity.upsert", {"id": 1, "labels": []},
                      msg_id="ok-1")
    # Raw publishes bypass the codec: a future schema version and garbage.
    future = msgpack.packb({"v": SCHEMA_VERSION + 1, "type": "identity.upsert",
                            "data": {"id": 2, "labels": []}})
    await bus.js.publish(subjects.identity(2), future, stream=subjects.HISTORY_STREAM)
    await bus.js.publish(subjects.identity(3), b"\x00\x01", stream=subjects.HISTORY_STREAM)
    await bus.publish(subjects.identity(4), "identity.upsert", {"id": 4, "labels": []},
                      msg_id="ok-4")
    sub = await bus.consume(["cilia.identity.>"], handler)
    await asyncio.wait_for(sub.caught_up.wait(), 5)
    await bus.publish(subjects.identity(5), "identity.upsert", {"id": 5, "labels": []},
                      msg_id="ok-5")
    for _ in range(100):
        if 5 in seen:
            break
        await asyncio.sleep(0.02)
    await sub.stop()
    assert seen == [1, 4, 5]
    assert rejected() - before == 2


async def test_snapshot_returns_the_last_event_per_subject(bus: Bus) -> None:
    for i, labels in enumerate((["a"], ["b"], ["c"])):
        await bus.publish(subjects.identity(7), "identity.upsert", {"id": 7, "labels": labels},
                          msg_id=f"s-{i}")
    await bus.publish(subjects.identity(8), "identity.upsert", {"id": 8, "labels": ["x"]},
                      msg_id="s-8")
    snap = await bus.snapshot(["cilia.identity.>"])
    assert {s: d.event.data["labels"] for s, d in snap.items()} == {
        "cilia.identity.7": ["c"], "cilia.identity.8": ["x"]}


async def test_history_retention_comes_from_configuration(bus: Bus) -> None:
    info = await bus.ensure_history(HistoryConfig(max_age_s=3600, max_bytes=10 << 20))
    assert info.config.max_age == 3600
    assert info.config.max_bytes == 10 << 20
    assert set(info.config.subjects or []) == set(subjects.HISTORY_SUBJECTS)
