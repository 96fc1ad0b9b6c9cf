"""Shared bench plumbing: an isolated nats-server, results as JSON."""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.common.embedded import NatsServer, start_nats

RESULTS = Path(__file__).resolve().parent / "results"


@contextmanager
def nats() -> Iterator[NatsServer]:
    with tempfile.TemporaryDirectory(prefix="cilia-bench-") as tmp:
        server = start_nats(Path(tmp) / "store")
        try:
            yield server
        finally:
            server.stop()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"p50_ms": round(percentile(ms, 50), 3), "p99_ms": round(percentile(ms, 99), 3),
            "mean_ms": round(statistics.fmean(ms), 3), "max_ms": round(max(ms), 3),
            "n": len(ms)}


def write(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    print(f"wrote {path}")
    return path
