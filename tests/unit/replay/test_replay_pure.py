"""Pure parts of replay: moments, subject filters, the history file format, span trees."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.codec import encode
from services.common.contract import subject_matches
from services.replay import (
    HistoryFileError,
    HistoryHeader,
    MomentError,
    Record,
    Replay,
    Tracker,
    all_maps,
    cut,
    decode_history,
    encode_history,
    moment_of,
    parse_moment,
    parse_time,
    read_history,
)
from services.replay.spans import build, load_spans, waterfall
from tests.support.procs import REPO

T0 = 1_800_000_000 * 10**9


def _rec(seq: int, subject: str | None = None, payload: bytes | None = None) -> Record:
    data = payload if payload is not None else encode(
        "identity.upsert", {"id": 300 + seq, "labels": [f"k8s:app=a{seq}"]})
    return Record(seq, T0 + seq * 10**9, subject or f"cilia.identity.{300 + seq}",
                  {"traceparent": f"00-{seq:032x}-{seq:016x}-01"}, data)


def test_moments() -> None:
    today = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    assert parse_time("10:32:05", today).time_ns == parse_time("2026-11-27T10:32:05Z").time_ns
    assert parse_time("2026-11-27T10:32:05+01:00").time_ns == \
        parse_time("2026-11-27T09:32:05Z").time_ns
    assert parse_time("2026-11-27 10:32:05.5").time_ns == \
        parse_time("10:32:05.500000", today).time_ns
    assert parse_moment("42").seq == 42 and parse_moment("seq:7").seq == 7
    with pytest.raises(MomentError, match="expected RFC 3339"):
        parse_time("yesterday")
    with pytest.raises(MomentError, match="exactly one"):
        moment_of(None, None)
    with pytest.raises(MomentError, match="exactly one"):
        moment_of("10:00:00", 3)


def test_cut_by_sequence_and_time() -> None:
    recs = [_rec(i) for i in range(1, 6)]
    assert cut(recs, parse_moment("3")) == 3
    assert cut(recs, parse_moment("0")) == 0
    when = datetime.fromtimestamp((T0 + 3 * 10**9 + 5) / 1e9, UTC)
    assert cut(recs, parse_time(when.isoformat())) == 3
    # A history trimmed by retention cannot answer for moments before it.
    with pytest.raises(MomentError, match="before the first event"):
        cut(recs[2:], parse_moment("1"))


def test_subject_filters_follow_nats() -> None:
    assert subject_matches("cilia.src.pod.ns.a", "cilia.src.pod.>")
    assert not subject_matches("cilia.src.pod", "cilia.src.pod.>")
    assert subject_matches("cilia.policy.rules.5", "cilia.policy.*.5")
    assert not subject_matches("cilia.policy.rules.5.x", "cilia.policy.*.5")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2**40), st.text(min_size=1, max_size=20),
                          st.binary(max_size=64)), max_size=20))
def test_history_file_round_trip(items: list[tuple[int, str, bytes]]) -> None:
    recs = [Record(i + 1, t, f"cilia.x.{s!r}", {"k": s}, p) for i, (t, s, p) in enumerate(items)]
    header, back = decode_history(encode_history(HistoryHeader("CILIA", "now"), recs))
    assert back == recs
    assert (header.count, header.first_seq) == (len(recs), 1 if recs else 0)


def test_every_single_byte_change_or_cut_is_detected() -> None:
    data = encode_history(HistoryHeader("CILIA", "now"), [_rec(i) for i in range(1, 4)])
    for i in range(len(data)):
        with pytest.raises(HistoryFileError):
            decode_history(data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:])
        with pytest.raises(HistoryFileError):
            decode_history(data[:i])


def test_undecodable_events_are_skipped_as_the_bus_does() -> None:
    rp = Replay()
    rp.fold([_rec(1), _rec(2, payload=b"\xc1garbage"), _rec(3)])
    assert (rp.events, rp.skipped, rp.seq) == (2, 1, 3)
    assert sorted(rp.cluster.identities) == [301, 303]


def _span(name: str, sid: int, parent: int | None, start_ms: int, dur_ms: int,
          service: str = "svc") -> str:
    def at(ms: int) -> str:
        return datetime.fromtimestamp(1_800_000_000 + ms / 1000, UTC).isoformat() \
            .replace("+00:00", "Z")
    return json.dumps({"name": name, "context": {"trace_id": "0x" + "ab" * 16,
                                                 "span_id": f"0x{sid:016x}"},
                       "kind": "SpanKind.INTERNAL",
                       "parent_id": None if parent is None else f"0x{parent:016x}",
                       "start_time": at(start_ms), "end_time": at(start_ms + dur_ms),
                       "attributes": {"cilia.node": "n1", "other": 1},
                       "resource": {"attributes": {"service.name": service}}})


def test_span_tree_across_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(_span("root", 1, None, 0, 10, "cli") + "\n" + _span("pub", 2, 1, 1, 1, "cli")
                 + "\n{half a line")
    b.write_text(_span("late", 4, 3, 6, 2) + "\n" + _span("consume", 3, 2, 5, 4) + "\n")
    spans, bad = load_spans([a, b])
    assert bad == 1
    rows = waterfall(build(spans, "ab" * 16))
    assert [(r["name"], r["depth"]) for r in rows] == [("root", 0), ("pub", 1), ("consume", 2),
                                                      ("late", 3)]
    assert [r["offset_ms"] for r in rows] == pytest.approx([0, 1, 5, 6])
    assert rows[3]["attributes"] == {"cilia.node": "n1"}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    """3,000 events from the bench's generator (bench/ runs as a module from the repo root)."""
    path = tmp_path_factory.mktemp("gen") / "h.cilia"
    code = ("import sys; from pathlib import Path; from bench.replay_speed import Generator; "
            "from services.replay import HistoryHeader, write_history; "
            "write_history(Path(sys.argv[1]), HistoryHeader('CILIA', 'test'), "
            "Generator(events=3000, live_pods=120).run())")
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, check=True)
    return read_history(path)[1]


@pytest.mark.parametrize("cut_at", [700, 2500])
def test_tracked_maps_equal_a_fresh_fold(generated: list[Record], cut_at: int) -> None:
    """The tracker's incremental maps (diff/explain) equal the from-scratch rendering
    (state) at every moment, on a generated history with pod churn, named ports and the
    policy service's own output."""
    nodes = ["node0", "node3"]
    rp = Replay(nodes)
    rp.fold(generated[:cut_at])
    tracker = Tracker(rp)
    tracker.fold(generated[cut_at:])
    fresh = Replay(nodes)
    fresh.fold(generated)
    assert tracker.maps == all_maps(fresh)
    assert tracker.maps["node/node0"]["policy"] and tracker.maps["cluster"]["selectors"]
