"""A service's spans reach a real OTLP/HTTP receiver through its export child process."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from services.common.spanpipe import ChildProcessSpanProcessor
from tests.support.otlp import Receiver
from tests.support.wait import wait_until


def _provider(receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
              ) -> tuple[TracerProvider, ChildProcessSpanProcessor]:
    # The child reads the standard variables, as an in-process exporter would.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.port}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "piped"}))
    piped = ChildProcessSpanProcessor(provider.resource, interval_s=0.05)
    provider.add_span_processor(piped)
    return provider, piped


def _wait(receiver: Receiver, count: int) -> list[dict[str, object]]:
    wait_until(f"{count} spans", lambda: len(receiver.spans) >= count, timeout=15,
               interval=0.05)
    with receiver.lock:
        return list(receiver.spans)


async def test_spans_keep_every_field_and_arrive_while_the_service_runs(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    provider, piped = _provider(receiver, monkeypatch)
    piped.start()   # on the running loop, as a service's runner does
    tracer = provider.get_tracer("cilia.test")
    try:
        with tracer.start_as_current_span("other") as other:
            linked = other.get_span_context()
        with (tracer.start_as_current_span("change", kind=SpanKind.PRODUCER) as parent,
              tracer.start_as_current_span(
                  "map patch policy", links=[Link(linked)],
                  attributes={"cilia.node": "n1", "cilia.added": 3}) as span):
            span.add_event("retried", {"attempt": 2})
            span.set_status(Status(StatusCode.ERROR, "map full"))
        # Delivered by the periodic flush, with the provider still running.
        spans = await asyncio.to_thread(_wait, receiver, 3)
    finally:
        provider.shutdown()
    by_name = {s["name"]: s for s in spans}
    patch, change = by_name["map patch policy"], by_name["change"]
    assert patch["service"] == "piped"
    assert patch["trace"] == change["trace"] and patch["parent"] == change["id"]
    assert patch["attrs"] == {"cilia.node": "n1", "cilia.added": 3}
    assert patch["events"] == ["retried"]
    assert patch["links"] == [f"{linked.trace_id:032x}"]
    assert patch["status"] == (StatusCode.ERROR.value, "map full")
    assert change["id"] == f"{parent.get_span_context().span_id:016x}"
    assert 0 < patch["start"] < patch["end"]   # type: ignore[operator]


def test_shutdown_sends_what_is_left(receiver: Receiver,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    provider, piped = _provider(receiver, monkeypatch)
    piped.start()   # no loop running: a thread of its own
    tracer = provider.get_tracer("cilia.test")
    for i in range(300):
        with tracer.start_as_current_span(f"s{i}"):
            pass
    provider.shutdown()     # returns once the child has exported and exited
    with receiver.lock:
        assert sorted(s["name"] for s in receiver.spans) == sorted(f"s{i}" for i in range(300))


def test_a_dead_export_process_drops_spans_and_the_service_goes_on(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    provider, piped = _provider(receiver, monkeypatch)
    tracer = provider.get_tracer("cilia.test")
    os.kill(piped._proc.pid, signal.SIGKILL)
    piped._proc.wait()
    for _ in range(3):
        with tracer.start_as_current_span("lost"):
            pass
        piped.flush()
    assert piped.force_flush() is False
    provider.shutdown()
    assert receiver.spans == []


def test_spans_beyond_the_queue_are_dropped_and_counted(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.port}")
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "piped"}))
    piped = ChildProcessSpanProcessor(provider.resource, max_queue=5)
    provider.add_span_processor(piped)
    tracer = provider.get_tracer("cilia.test")
    for i in range(8):      # never flushed in between: nothing started the flushing
        with tracer.start_as_current_span(f"s{i}"):
            pass
    assert piped.dropped == 3
    provider.shutdown()
    with receiver.lock:
        assert sorted(s["name"] for s in receiver.spans) == [f"s{i}" for i in range(5)]
