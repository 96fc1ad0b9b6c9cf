"""OpenTelemetry set-up from the standard variables, and trace context over NATS headers.

Tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set (OTLP/HTTP
exporter) or when ``CILIA_TRACE_FILE`` names a JSON-lines file. Otherwise the API's no-op
provider stays in place: spans cost a function call and nothing is injected into headers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import IO, Any

from opentelemetry import context, propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)

from services.common.spanpipe import ChildProcessSpanProcessor

TRACE_FILE_ENV = "CILIA_TRACE_FILE"
_OTLP_ENVS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

_provider: Any = None
_trace_out: IO[str] | None = None


def tracing_enabled() -> bool:
    return _provider is not None


def setup_tracing(service_name: str, *, export_in_child: bool = False) -> None:
    """Install an SDK tracer provider if the environment asks for one; idempotent.

    ``OTEL_SERVICE_NAME`` wins over ``service_name`` as the standard says.

    Args:
        export_in_child: OTLP encoding and sending run in a child process
            (:mod:`services.common.spanpipe`), off the interpreter lock of a long-running
            service; a short-lived command exports itself.
    """
    global _provider, _trace_out
    if _provider is not None:
        return
    otlp = any(os.environ.get(v) for v in _OTLP_ENVS)
    trace_file = os.environ.get(TRACE_FILE_ENV)
    if not otlp and not trace_file:
        return
    attrs = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attrs))
    if otlp and export_in_child:
        piped = ChildProcessSpanProcessor(provider.resource)
        piped.start()
        provider.add_span_processor(piped)
    elif otlp:
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if trace_file:
        # One span per line; appends from several processes stay whole lines.
        _trace_out = open(trace_file, "a", buffering=1)  # noqa: SIM115 - lives with the provider
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
            out=_trace_out, formatter=lambda span: span.to_json(indent=None) + "\n")))
    trace.set_tracer_provider(provider)
    _provider = provider


def shutdown_tracing() -> None:
    """Flush and stop the exporters (call once at process exit)."""
    global _provider, _trace_out
    if _provider is not None:
        _provider.shutdown()
        _provider = None
    if _trace_out is not None:
        _trace_out.close()
        _trace_out = None


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add the current W3C trace context (``traceparent``/``tracestate``) to ``headers``."""
    propagate.inject(headers)
    return headers


def extract_context(headers: Mapping[str, str] | None) -> context.Context:
    """The trace context carried by message headers (empty context when none)."""
    return propagate.extract(dict(headers or {}))
