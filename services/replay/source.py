"""Where a history comes from: the live stream (raw messages, in order) or an exported file."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import NotFoundError

from services.common.bus import Bus
from services.common.contract import HISTORY_STREAM, REPLAY

from .errors import ReplayError
from .historyfile import HistoryHeader, read_history
from .record import Moment, Record, to_ns

READ_TIMEOUT_S = 30.0     # a whole stream read must finish within this


@dataclass(frozen=True)
class History:
    """Records in stream order and where they came from."""

    records: list[Record]
    origin: str                  # "bus nats://..." or "file PATH"
    first_seq: int = 0

    @property
    def last_seq(self) -> int:
        return self.records[-1].seq if self.records else 0


async def read_stream(bus: Bus, since: Moment | None = None,
                      timeout: float = READ_TIMEOUT_S) -> list[Record]:
    """Every message the history stream holds (from ``since`` on), raw, in stream order.

    Raises:
        ReplayError: the stream does not exist or the read did not finish in time.
    """
    try:
        info = await bus.js.stream_info(HISTORY_STREAM)
    except NotFoundError as exc:
        raise ReplayError(f"the bus has no history stream {HISTORY_STREAM}") from exc
    last = info.state.last_seq
    if info.state.messages == 0 or (since is not None and since.seq is not None
                                    and since.seq > last):
        return []
    config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
    if since is not None and since.seq is not None:
        config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = max(1, since.seq)
    records: list[Record] = []
    done = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        meta = msg.metadata
        seq = meta.sequence.stream
        records.append(Record(seq, to_ns(meta.timestamp), msg.subject,
                              dict(msg.headers or {}), bytes(msg.data)))
        if seq >= last or meta.num_pending == 0:
            done.set()

    (subject,) = REPLAY.filters     # the whole stream: one filter
    sub = await bus.js.subscribe(subject, stream=HISTORY_STREAM, cb=on_msg,
                                 ordered_consumer=True, config=config)
    try:
        # The stream holds at least one message at or after the start: wait for it. (The
        # consumer's own pending count is no guide: delivered-but-not-yet-handled messages
        # no longer count as pending.)
        await asyncio.wait_for(done.wait(), timeout)
    except TimeoutError as exc:
        raise ReplayError(f"reading the history stream took longer than {timeout:.0f}s "
                          f"({len(records)} of up to {last} messages)") from exc
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    out = [r for r in records if r.seq <= last]
    if since is not None and since.time_ns is not None:
        out = [r for r in out if r.time_ns >= since.time_ns]
    return out


async def from_bus(bus: Bus, url: str) -> History:
    """The whole stream as a history."""
    records = await read_stream(bus)
    return History(records, f"bus {url}", records[0].seq if records else 0)


def from_file(path: Path) -> tuple[HistoryHeader, History]:
    """A verified history file (see :func:`~services.replay.historyfile.read_history`)."""
    header, records = read_history(path)
    return header, History(records, f"file {path}", header.first_seq)


def exported_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
