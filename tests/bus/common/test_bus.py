"""The bus contract on a real nats-server: history stream, de-duplication, rejections."""

from __future__ import annotations

import asyncio
import logging

import msgpack
import pytest
from prometheus_client import REGISTRY

from services.common.bus import Bus, Delivery, HistoryConfig
from services.common.contract import (
    HISTORY_STREAM,
    HISTORY_SUBJECTS,
    identity_subject,
)
from services.common.schemas import SCHEMA_VERSION

HOST = ["reserved:host"]


async def test_the_same_event_published_twice_is_stored_once(bus: Bus) -> None:
    data = {"id": 300, "labels": ["k8s:app=a"]}
    first = await bus.publish(identity_subject(300), "identity.upsert", data, msg_id="m-1")
    again = await bus.publish(identity_subject(300), "identity.upsert", data, msg_id="m-1")
    other = await bus.publish(identity_subject(300), "identity.upsert", data, msg_id="m-2")
    assert not first.duplicate and again.duplicate and not other.duplicate
    info = await bus.js.stream_info(HISTORY_STREAM)
    assert info.state.messages == 2


async def test_a_bad_message_is_counted_and_consumption_goes_on(bus: Bus) -> None:
    seen: list[int] = []

    async def handler(d: Delivery) -> None:
        seen.append(d.event.data["id"])

    def rejected() -> float:
        return REGISTRY.get_sample_value(
            "cilia_bus_messages_total", {"service": "test", "outcome": "rejected"}) or 0.0

    before = rejected()
    await bus.publish(identity_subject(1), "identity.upsert", {"id": 1, "labels": HOST},
                      msg_id="ok-1")
    # Raw publishes bypass the codec: a future schema version and garbage.
    future = msgpack.packb({"v": SCHEMA_VERSION + 1, "type": "identity.upsert",
                            "data": {"id": 2, "labels": HOST}})
    await bus.js.publish(identity_subject(2), future, stream=HISTORY_STREAM)
    await bus.js.publish(identity_subject(3), b"\x00\x01", stream=HISTORY_STREAM)
    await bus.publish(identity_subject(4), "identity.upsert", {"id": 4, "labels": HOST},
                      msg_id="ok-4")
    sub = await bus.consume(["cilia.identity.>"], handler)
    await asyncio.wait_for(sub.caught_up.wait(), 5)
    await bus.publish(identity_subject(5), "identity.upsert", {"id": 5, "labels": HOST},
                      msg_id="ok-5")
    for _ in range(100):
        if 5 in seen:
            break
        await asyncio.sleep(0.02)
    await sub.stop()
    assert seen == [1, 4, 5]
    assert rejected() - before == 2


async def test_snapshot_returns_the_last_event_per_subject(bus: Bus) -> None:
    for i, labels in enumerate((["k8s:a=1"], ["k8s:b=1"], ["k8s:c=1"])):
        await bus.publish(identity_subject(7), "identity.upsert", {"id": 7, "labels": labels},
                          msg_id=f"s-{i}")
    await bus.publish(identity_subject(8), "identity.upsert", {"id": 8, "labels": ["k8s:x=1"]},
                      msg_id="s-8")
    snap = await bus.snapshot(["cilia.identity.>"])
    assert {s: d.event.data["labels"] for s, d in snap.items()} == {
        "cilia.identity.7": ["k8s:c=1"], "cilia.identity.8": ["k8s:x=1"]}


async def test_history_retention_comes_from_configuration(bus: Bus) -> None:
    info = await bus.ensure_history(HistoryConfig(max_age_s=3600, max_bytes=10 << 20))
    assert info.config.max_age == 3600
    assert info.config.max_bytes == 10 << 20
    assert set(info.config.subjects or []) == set(HISTORY_SUBJECTS)


def _bad_value(num: int) -> bytes:
    """A valid envelope with a bad value inside (a list where a label belongs)."""
    return msgpack.packb({"v": SCHEMA_VERSION, "type": "identity.upsert",
                          "data": {"id": num, "labels": [["k8s:a=1"]]}})


async def _raw(bus: Bus, subject: str, payload: bytes) -> int:
    ack = await bus.js.publish(subject, payload, stream=HISTORY_STREAM)
    return ack.seq


async def test_a_bad_last_message_never_erases_its_subject(bus: Bus) -> None:
    # Readers of "the last message per subject" fall back to the last valid one.
    for i in (7, 8):
        await bus.publish(identity_subject(i), "identity.upsert",
                          {"id": i, "labels": [f"k8s:app=v{i}"]}, msg_id=f"ok-{i}")
    await _raw(bus, identity_subject(7), _bad_value(7))
    await _raw(bus, identity_subject(7), b"garbage")
    await _raw(bus, identity_subject(8), _bad_value(8))
    # a valid event of another object on 8's subject is bad there too
    await _raw(bus, identity_subject(8), msgpack.packb(
        {"v": SCHEMA_VERSION, "type": "identity.upsert",
         "data": {"id": 9, "labels": ["k8s:app=v9"]}}))
    await _raw(bus, identity_subject(10), b"garbage only")
    snap = await bus.snapshot(["cilia.identity.>"])
    assert {s: d.event.data["labels"] for s, d in snap.items()} == {
        "cilia.identity.7": ["k8s:app=v7"], "cilia.identity.8": ["k8s:app=v8"]}
    last = await bus.last_event(identity_subject(7))
    assert last is not None and last.data["labels"] == ["k8s:app=v7"]
    assert await bus.last_event(identity_subject(10)) is None

    seen: dict[str, list[str]] = {}

    async def keep(d: Delivery) -> None:
        seen[d.subject] = d.event.data["labels"]

    sub = await bus.consume(["cilia.identity.>"], keep, deliver="last_per_subject")
    await asyncio.wait_for(sub.caught_up.wait(), 5)
    assert seen == {"cilia.identity.7": ["k8s:app=v7"], "cilia.identity.8": ["k8s:app=v8"]}
    await sub.stop()


async def test_a_bad_last_message_still_ends_the_batch(bus: Bus) -> None:
    # Services become live when nothing is pending; a rejected (or failing) last message
    # never reaches the handler, so the bus says "idle" with its sequence instead.
    await bus.publish(identity_subject(1), "identity.upsert", {"id": 1, "labels": HOST},
                      msg_id="ok-1")
    await bus.publish(identity_subject(2), "identity.upsert", {"id": 2, "labels": HOST},
                      msg_id="ok-2")
    last = await _raw(bus, identity_subject(3), _bad_value(3))
    handled: list[tuple[int, int]] = []
    idle: list[int] = []

    async def handler(d: Delivery) -> None:
        if d.event.data["id"] == 2:
            raise RuntimeError("handler bug")
        handled.append((d.event.data["id"], d.pending))

    async def on_idle(seq: int) -> None:
        idle.append(seq)

    sub = await bus.consume(["cilia.identity.>"], handler, idle=on_idle)
    await asyncio.wait_for(sub.caught_up.wait(), 5)
    for _ in range(100):
        if idle:
            break
        await asyncio.sleep(0.01)
    assert [i for i, _ in handled] == [1] and handled[0][1] > 0 and idle == [last]
    late = await _raw(bus, identity_subject(4), b"garbage")
    for _ in range(100):
        if late in idle:
            break
        await asyncio.sleep(0.01)
    await sub.stop()
    assert idle == [last, late]
    assert bus.rejections.stats() == {"rejected": 2, "failed": 1,
                                      "rejected_by": {"cilia.identity": 2}}


async def test_bad_messages_are_logged_once_per_subject(
        bus: Bus, caplog: pytest.LogCaptureFixture) -> None:
    for _ in range(50):
        await _raw(bus, identity_subject(3), b"\xc1garbage")
        await _raw(bus, identity_subject(4), _bad_value(4))
    seen: list[int] = []

    async def handler(d: Delivery) -> None:
        seen.append(d.seq)

    with caplog.at_level(logging.WARNING, logger="services.common.rejections"):
        sub = await bus.consume(["cilia.identity.>"], handler)
        await asyncio.wait_for(sub.caught_up.wait(), 5)
        await sub.stop()
    lines = [r.getMessage() for r in caplog.records if "rejected message" in r.getMessage()]
    assert len(lines) == 2 and not seen
    assert any(" on cilia.identity.3: " in line and "not a msgpack payload" in line
               for line in lines)
    assert any(" on cilia.identity.4: " in line and "$.labels[0]" in line for line in lines)
    assert bus.rejections.rejected == 100
