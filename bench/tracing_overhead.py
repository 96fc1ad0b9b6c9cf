"""Tracing overhead: policy propagation latency with the OTLP exporter on versus off.

Run: .venv/bin/python -m bench.tracing_overhead [--imports 200] [--rounds 3]

"On" exports every span of every process (services, agent) with OTLP/HTTP, as they do in
production (through their span export child processes), to a receiver in its own process that
accepts and discards them, as a collector would; "off" sets no exporter (the API's no-op
tracer). Off and on runs alternate, each on a fresh cluster, and the figures
pool every round so that drift of the machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import multiprocessing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench._common import percentile, summary_ms, write
from bench.agent_propagation import measure
from services.common.embedded import free_port


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _serve(port: int) -> None:
    ThreadingHTTPServer(("127.0.0.1", port), _Sink).serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--imports", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    sink = multiprocessing.get_context("spawn").Process(target=_serve, args=(port,),
                                                         daemon=True)
    sink.start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
    samples: dict[str, list[float]] = {"off": [], "on": []}
    rounds: list[dict[str, Any]] = []
    try:
        for r in range(args.rounds):
            for side in ("off", "on"):
                result = measure(args.imports, env if side == "on" else None)
                samples[side] += result.pop("samples_s")
                rounds.append({"round": r, "side": side, **result})
                lat = result["latency"]
                print(f"round {r + 1} {side:3}: p50 {lat['p50_ms']} ms, "  # type: ignore[index]
                      f"p99 {lat['p99_ms']} ms")  # type: ignore[index]
    finally:
        sink.terminate()
        sink.join()
    off, on = summary_ms(samples["off"]), summary_ms(samples["on"])
    ratio = {k: round(on[k] / off[k] - 1, 3) for k in ("p50_ms", "p99_ms")}
    for side, lat in (("off", off), ("on ", on)):
        print(f"import -> kernel, tracing {side}: p50 {lat['p50_ms']} ms, "
              f"p99 {lat['p99_ms']} ms (n={lat['n']})")
    print(f"overhead: p50 {ratio['p50_ms']:+.1%}, p99 {ratio['p99_ms']:+.1%} (goal <= +10 %)")
    p95 = {s: percentile([v * 1000 for v in samples[s]], 95) for s in samples}
    write("tracing_overhead", {"off": off, "on": on, "overhead": ratio,
                               "p95_ms": p95, "rounds": rounds})


if __name__ == "__main__":
    main()
