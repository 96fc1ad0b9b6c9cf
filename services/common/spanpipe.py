"""OTLP export in a child process, for long-running services.

Turning spans into OTLP protobuf and posting them over HTTP is pure Python work; done in a
service's own exporter thread it competes with the event loop for the interpreter lock and
shows in the latency of the changes being traced. A service therefore hands its finished
spans to a child process as plain tuples (a pickle of a few kilobytes through a pipe, written
by the event loop itself) and the child runs the standard OTLP/HTTP exporter, configured by
the same ``OTEL_*`` variables.

Run as ``python -m services.common.spanpipe``: reads batches on stdin until end of file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from typing import IO, Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from services.common.processes import end_process

log = logging.getLogger(__name__)
CHILD_EXIT_TIMEOUT_S = 10.0   # how long shutdown waits for the child to send what it has
FLUSH_INTERVAL_S = 0.1        # how often a service hands its finished spans to the child
CHILD_NICENESS = 10           # the export child runs at a lower CPU priority than its service
MAX_QUEUED_SPANS = 2048       # spans waiting for the next flush (the SDK batcher's default)
MAX_UNSENT_BYTES = 8 << 20    # pickled spans the pipe has not taken yet; beyond: dropped
PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL

_Ctx = tuple[int, int, bool, int, list[tuple[str, str]]]


def _ctx(c: SpanContext) -> _Ctx:
    return (c.trace_id, c.span_id, c.is_remote, int(c.trace_flags), list(c.trace_state.items()))


def _unctx(t: _Ctx) -> SpanContext:
    trace_id, span_id, remote, flags, state = t
    return SpanContext(trace_id, span_id, remote, TraceFlags(flags), TraceState(state))


def to_tuple(span: ReadableSpan) -> tuple[Any, ...]:
    """A finished span as plain values (what crosses the pipe)."""
    scope = span.instrumentation_scope
    return (span.name, _ctx(span.context), _ctx(span.parent) if span.parent else None,
            int(span.kind.value), span.start_time, span.end_time, dict(span.attributes or {}),
            [(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events],
            [(_ctx(link.context), dict(link.attributes or {})) for link in span.links],
            int(span.status.status_code.value), span.status.description,
            (scope.name, scope.version) if scope else None)


def from_tuple(t: tuple[Any, ...], resource: Resource) -> ReadableSpan:
    (name, ctx, parent, kind, start, end, attrs, events, links, code, description,
     scope) = t
    return ReadableSpan(
        name=name, context=_unctx(ctx), parent=_unctx(parent) if parent else None,
        resource=resource, attributes=attrs,
        events=[Event(n, a, timestamp=ts) for n, a, ts in events],
        links=[Link(_unctx(c), a) for c, a in links], kind=SpanKind(kind),
        status=Status(StatusCode(code), description), start_time=start, end_time=end,
        instrumentation_scope=InstrumentationScope(*scope) if scope else None)


class ChildProcessSpanProcessor(SpanProcessor):
    """Sends finished spans to ``python -m services.common.spanpipe`` (started here).

    Finishing a span appends it to a list; every ``interval_s`` the event loop turns the list
    into one pickle and writes it to the child's pipe without blocking. No exporter thread
    competes with the loop for the interpreter lock: the loop does this small piece of work
    between two events. The child batches for export as the SDK does in-process.
    """

    def __init__(self, resource: Resource, interval_s: float = FLUSH_INTERVAL_S,
                 max_queue: int = MAX_QUEUED_SPANS) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE)
        assert self._proc.stdin is not None
        self._pipe: IO[bytes] = self._proc.stdin
        os.set_blocking(self._pipe.fileno(), False)
        self._interval = interval_s
        self._max_queue = max_queue
        self._lock = threading.Lock()
        self._spans: list[ReadableSpan] = []
        self._out = bytearray(pickle.dumps(dict(resource.attributes), PICKLE_PROTOCOL))
        self._broken = False
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def start(self) -> None:
        """Flush periodically: on the running event loop, else on a thread of its own."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._thread = threading.Thread(target=self._flush_thread, name="spanpipe",
                                            daemon=True)
            self._thread.start()
        else:
            self._task = loop.create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.flush()

    def _flush_thread(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            if len(self._spans) >= self._max_queue:
                self._drop(1)
                return
            self._spans.append(span)

    def _drop(self, count: int) -> None:
        if not self.dropped:
            log.warning("span export process %s falls behind: spans are being dropped",
                        self._proc.pid)
        self.dropped += count

    def flush(self) -> None:
        """Hand what has ended to the child, as far as the pipe takes it now."""
        with self._lock:
            batch, self._spans = self._spans, []
            if self._broken:
                return
            if batch:
                if len(self._out) > MAX_UNSENT_BYTES:    # the child is not keeping up
                    self._drop(len(batch))
                else:
                    self._out += pickle.dumps([to_tuple(s) for s in batch], PICKLE_PROTOCOL)
            try:
                sent = os.write(self._pipe.fileno(), self._out) if self._out else 0
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._broken = True
                log.error("span export process %s is gone (%s): spans are dropped",
                          self._proc.pid, exc)
                return
            del self._out[:sent]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.flush()
        return not self._broken

    def shutdown(self) -> None:
        """Send everything (blocking), close the pipe, wait for the child to export it."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
        if self._thread is not None:
            self._thread.join()
        self.flush()
        with self._lock:
            if not self._broken and self._out:
                os.set_blocking(self._pipe.fileno(), True)
                with contextlib.suppress(OSError):
                    self._pipe.write(self._out)
            self._broken = True
            with contextlib.suppress(OSError):
                self._pipe.close()
        end_process(self._proc, CHILD_EXIT_TIMEOUT_S, terminate=False)


def main() -> None:
    """The child: spans from stdin into the SDK's batching processor and OTLP/HTTP exporter
    (``OTEL_BSP_*`` and ``OTEL_EXPORTER_OTLP_*`` apply as usual), until end of file."""
    # Ends when the service closes the pipe, after sending what it has; an interrupt at the
    # terminal reaches the whole process group and is the service's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Telemetry yields the CPU to the work it describes.
    os.nice(CHILD_NICENESS)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s spanpipe %(levelname)s %(message)s")
    source = sys.stdin.buffer
    batcher = BatchSpanProcessor(OTLPSpanExporter())
    try:
        resource = Resource(pickle.load(source))
        while True:
            for t in pickle.load(source):
                batcher.on_end(from_tuple(t, resource))
    except EOFError:
        pass
    finally:
        batcher.shutdown()


if __name__ == "__main__":
    main()
