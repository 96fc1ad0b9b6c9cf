"""``cilia trace show``: a trace from JSON-lines span files as an indented waterfall.

The files are what ``CILIA_TRACE_FILE``/``--trace-file`` produce: the SDK's span JSON, one span
per line, several processes appending to one file. Spans are joined by parent id across files
and processes; a span whose parent is not in the files is shown as a root.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import TraceFileError

BAR_WIDTH = 24          # characters of the waterfall bar
KEY_ATTRIBUTES = ("cilia.node", "cilia.map", "cilia.added", "cilia.updated", "cilia.deleted",
                  "cilia.revision", "cilia.realized_revision", "cilia.seq",
                  "messaging.destination", "cilia.objects")
US_PER_S = 1_000_000


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    service: str
    kind: str
    start_us: int
    end_us: int
    attributes: dict[str, Any]
    status: str = ""
    children: list[Span] = field(default_factory=list)

    @property
    def duration_us(self) -> int:
        return max(0, self.end_us - self.start_us)


def _hex(value: Any) -> str:
    text = str(value or "").lower()
    return text[2:] if text.startswith("0x") else text


def _us(text: str) -> int:
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return round(when.timestamp() * US_PER_S)


def parse_span(doc: dict[str, Any]) -> Span:
    """One span from the SDK's JSON form.

    Raises:
        KeyError, ValueError: not a span.
    """
    ctx = doc["context"]
    resource = (doc.get("resource") or {}).get("attributes") or {}
    return Span(_hex(ctx["trace_id"]), _hex(ctx["span_id"]), _hex(doc.get("parent_id")),
                str(doc["name"]), str(resource.get("service.name", "?")),
                str(doc.get("kind", "")).replace("SpanKind.", ""), _us(doc["start_time"]),
                _us(doc["end_time"]), dict(doc.get("attributes") or {}),
                str((doc.get("status") or {}).get("status_code", "")))


def load_spans(paths: Iterable[Path]) -> tuple[list[Span], int]:
    """Every span of the files, and how many lines were not spans (skipped).

    Raises:
        TraceFileError: a file cannot be read.
    """
    spans: list[Span] = []
    bad = 0
    for path in paths:
        try:
            text = Path(path).read_text(errors="replace")
        except OSError as exc:
            raise TraceFileError(f"cannot read span file {path}: {exc}") from exc
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                spans.append(parse_span(json.loads(line)))
            except (ValueError, KeyError, TypeError, AttributeError):
                bad += 1   # a line another process was still writing, or not a span
    return spans, bad


def traces(spans: Iterable[Span]) -> list[dict[str, Any]]:
    """One summary per trace: id, root span, services, span count, start, duration."""
    by: dict[str, list[Span]] = {}
    for s in spans:
        by.setdefault(s.trace_id, []).append(s)
    out = []
    for tid, group in by.items():
        ids = {s.span_id for s in group}
        roots = sorted((s for s in group if s.parent_id not in ids), key=lambda s: s.start_us)
        start = min(s.start_us for s in group)
        end = max(s.end_us for s in group)
        out.append({"trace_id": tid, "root": roots[0].name if roots else "?",
                    "services": sorted({s.service for s in group}), "spans": len(group),
                    "start_us": start, "duration_ms": (end - start) / 1000})
    return sorted(out, key=lambda t: t["start_us"])


def build(spans: Iterable[Span], trace_id: str) -> list[Span]:
    """The roots of one trace, children sorted by start time.

    Raises:
        TraceFileError: no span of that trace.
    """
    tid = _hex(trace_id)
    mine = {s.span_id: s for s in spans if s.trace_id == tid}
    if not mine:
        raise TraceFileError(f"no span of trace {trace_id} in the given files")
    roots: list[Span] = []
    for s in mine.values():
        s.children = []
    for s in sorted(mine.values(), key=lambda s: (s.start_us, s.end_us)):
        parent = mine.get(s.parent_id)
        (parent.children if parent is not None else roots).append(s)
    return roots


def _walk(span: Span, depth: int) -> Iterable[tuple[Span, int]]:
    yield span, depth
    for child in span.children:
        yield from _walk(child, depth + 1)


def waterfall(roots: list[Span]) -> list[dict[str, Any]]:
    """Rows in tree order: depth, offset from the trace's start and duration (ms)."""
    start = min(r.start_us for r in roots)
    rows = []
    for root in roots:
        for s, depth in _walk(root, 0):
            rows.append({"depth": depth, "service": s.service, "name": s.name, "kind": s.kind,
                         "span_id": s.span_id, "parent_id": s.parent_id,
                         "offset_ms": (s.start_us - start) / 1000,
                         "duration_ms": s.duration_us / 1000, "status": s.status,
                         "attributes": {k: s.attributes[k] for k in KEY_ATTRIBUTES
                                        if k in s.attributes}})
    return rows


def render(trace_id: str, rows: list[dict[str, Any]]) -> str:
    """The waterfall as text: tree, service, span name, offset, duration, a bar, attributes."""
    total = max((r["offset_ms"] + r["duration_ms"] for r in rows), default=0.0) or 1.0
    services = sorted({r["service"] for r in rows})
    lines = [f"Trace {_hex(trace_id)}: {len(rows)} spans, {len(services)} services "
             f"({', '.join(services)}), {total:.2f} ms"]
    width = max(len("  " * r["depth"] + f"{r['service']}: {r['name']}") for r in rows)
    for r in rows:
        label = "  " * r["depth"] + f"{r['service']}: {r['name']}"
        lo = int(r["offset_ms"] / total * BAR_WIDTH)
        hi = max(lo + 1, int((r["offset_ms"] + r["duration_ms"]) / total * BAR_WIDTH))
        bar = " " * lo + "#" * (min(hi, BAR_WIDTH) - lo)
        attrs = " ".join(f"{k.removeprefix('cilia.')}={v}" for k, v in r["attributes"].items())
        lines.append(f"{label:<{width}}  +{r['offset_ms']:9.3f} ms {r['duration_ms']:9.3f} ms "
                     f"|{bar:<{BAR_WIDTH}}| {attrs}".rstrip())
    return "\n".join(lines)
