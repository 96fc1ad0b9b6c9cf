"""Tracing overhead: policy propagation latency with the OTLP exporter on versus off.

Run: .venv/bin/python -m bench.tracing_overhead [--imports 200]

"On" exports every span of every process (CLI, services, agent) with OTLP/HTTP to a local
receiver that accepts and discards them; "off" sets no exporter (the API's no-op tracer).
"""

from __future__ import annotations

import argparse
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench._common import write
from bench.agent_propagation import measure
from services.common.embedded import free_port


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--imports", type=int, default=200)
    args = parser.parse_args()
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        off = measure(args.imports)
        on = measure(args.imports, {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"})
    finally:
        server.shutdown()
    lat_off, lat_on = off["latency"], on["latency"]
    ratio = {k: round(lat_on[k] / lat_off[k] - 1, 3) for k in ("p50_ms", "p99_ms")}  # type: ignore[index]
    print(f"import -> kernel, tracing off: p50 {lat_off['p50_ms']} ms, p99 {lat_off['p99_ms']} ms")  # type: ignore[index]
    print(f"import -> kernel, tracing on : p50 {lat_on['p50_ms']} ms, p99 {lat_on['p99_ms']} ms")  # type: ignore[index]
    print(f"overhead: p50 {ratio['p50_ms']:+.1%}, p99 {ratio['p99_ms']:+.1%} (goal <= +10 %)")
    write("tracing_overhead", {"off": off, "on": on, "overhead": ratio})


if __name__ == "__main__":
    main()
