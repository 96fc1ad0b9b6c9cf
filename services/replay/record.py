"""One stored event exactly as the history stream holds it, and how moments select a prefix.

A :class:`Record` keeps the raw payload: replay decodes it with the bus's codec, so an
undecodable message is skipped exactly as a live consumer skips it, and an exported file holds
the very bytes the stream held.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time

from .errors import MomentError

NS_PER_S = 1_000_000_000
TRACEPARENT = "traceparent"
_TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_SEQ_RE = re.compile(r"^(?:seq:|#)?(\d+)$")


@dataclass(frozen=True, slots=True)
class Record:
    """One message of the history stream."""

    seq: int
    time_ns: int
    subject: str
    headers: dict[str, str]
    payload: bytes

    @property
    def time(self) -> datetime:
        """The time the stream stored it (UTC)."""
        return datetime.fromtimestamp(self.time_ns / NS_PER_S, UTC)

    @property
    def trace_id(self) -> str:
        """The W3C trace id of the change that published it ("" when it carries none)."""
        return trace_id_of(self.headers)

    def where(self) -> dict[str, object]:
        """Seq, time, subject and trace id: how an event is cited in every output."""
        return {"seq": self.seq, "time": format_time(self.time_ns), "subject": self.subject,
                "trace_id": self.trace_id}


def trace_id_of(headers: dict[str, str]) -> str:
    m = _TRACEPARENT_RE.match((headers.get(TRACEPARENT) or "").strip().lower())
    return m.group(1) if m else ""


def format_time(time_ns: int) -> str:
    """RFC 3339 with microseconds, UTC."""
    return datetime.fromtimestamp(time_ns / NS_PER_S, UTC).isoformat(
        timespec="microseconds").replace("+00:00", "Z")


def to_ns(when: datetime) -> int:
    return round(when.timestamp() * 1_000_000) * 1000


# -- moments ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Moment:
    """A point in the history: a stream sequence, or a wall-clock time (UTC)."""

    seq: int | None = None
    time_ns: int | None = None
    text: str = ""

    def __str__(self) -> str:
        return self.text or (f"seq {self.seq}" if self.seq is not None
                             else format_time(self.time_ns or 0))


def parse_time(text: str, today: datetime | None = None) -> Moment:
    """RFC 3339 (``2026-11-27T10:32:05Z``; no zone means UTC) or ``10:32:05[.123]`` today UTC.

    Raises:
        MomentError: neither form.
    """
    raw = text.strip()
    try:
        if "T" in raw or " " in raw or ("-" in raw[:10] and len(raw) >= 10):
            when = datetime.fromisoformat(raw.replace(" ", "T"))
        else:
            day = (today or datetime.now(UTC)).date()
            when = datetime.combine(day, time.fromisoformat(raw))
    except ValueError as exc:
        raise MomentError(f"time {text!r}: expected RFC 3339 (2026-11-27T10:32:05Z) or "
                          f"HH:MM:SS (today, UTC)") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return Moment(time_ns=to_ns(when), text=text)


def parse_moment(text: str) -> Moment:
    """A sequence (``42``, ``seq:42`` or ``#42``) or a time (see :func:`parse_time`)."""
    m = _SEQ_RE.match(text.strip())
    if m:
        return Moment(seq=int(m.group(1)), text=f"seq {m.group(1)}")
    return parse_time(text)


def moment_of(at: str | None, seq: int | None) -> Moment:
    """The moment of ``--at``/``--seq`` (exactly one must be given).

    Raises:
        MomentError: none or both.
    """
    if (at is None) == (seq is None):
        raise MomentError("give exactly one of --at TIME or --seq N")
    if seq is not None:
        if seq < 0:
            raise MomentError(f"--seq {seq}: a stream sequence is not negative")
        return Moment(seq=seq, text=f"seq {seq}")
    assert at is not None
    return parse_moment(at)


def cut(records: Sequence[Record], moment: Moment) -> int:
    """How many leading records lie at or before ``moment`` (records are in stream order).

    Raises:
        MomentError: the moment is before what the history holds (retention dropped it).
    """
    if moment.seq is not None:
        n = bisect_right([r.seq for r in records], moment.seq)
    else:
        assert moment.time_ns is not None
        n = bisect_right([r.time_ns for r in records], moment.time_ns)
    if n == 0 and records and _before_first(records[0], moment):
        raise MomentError(f"{moment} is before the first event the history holds "
                          f"(seq {records[0].seq} at {format_time(records[0].time_ns)})")
    return n


def _before_first(first: Record, moment: Moment) -> bool:
    # A stream trimmed by retention starts after seq 1: its early state is gone.
    return first.seq > 1 and ((moment.seq is not None and moment.seq < first.seq - 1)
                              or moment.time_ns is not None)
