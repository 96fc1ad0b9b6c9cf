"""The pod workload: HTTP 200 (body: the pod name) on TCP and UDP echo, on every port.

Started by the lab's kubelet inside the pod's netns::

    python -m services.workload serve --name frontend-6d8f-abcde --namespace production \
        --port 8080 --port 5432 [--ready-fd N]

It writes ``ready`` to ``--ready-fd`` once every socket is bound, then serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_DATAGRAM = 65535
READY = b"ready\n"


class _HTTPHandler(BaseHTTPRequestHandler):
    server_version = "cilia-workload/1"
    pod_name = ""

    def _reply(self, with_body: bool) -> None:
        body = f"{self.pod_name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(True)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._reply(True)

    def do_HEAD(self) -> None:
        self._reply(False)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.client_address[0]} {format % args}\n")


class _UDPEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(data, self.client_address)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def verify_request(self, request: Any, client_address: Any) -> bool:
        # Every accepted connection is logged, also one that never sends a request: the
        # pod's log says who got through to it.
        sys.stderr.write(f"accept {client_address[0]}:{client_address[1]}\n")
        sys.stderr.flush()
        return True


class _UDPServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = True
    max_packet_size = MAX_DATAGRAM


def build_servers(name: str, ports: list[int],
                  host: str = "0.0.0.0") -> list[socketserver.BaseServer]:
    """Bind an HTTP server and a UDP echo server on each port (binding happens here)."""
    handler = type("PodHTTPHandler", (_HTTPHandler,), {"pod_name": name})
    servers: list[socketserver.BaseServer] = []
    for port in ports:
        servers.append(_HTTPServer((host, port), handler))
        servers.append(_UDPServer((host, port), _UDPEcho))
    return servers


def serve(name: str, ports: list[int], ready_fd: int | None = None) -> None:
    """Serve until killed (SIGTERM's default action ends the process; nothing to flush)."""
    servers = build_servers(name, ports)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    if ready_fd is not None:
        os.write(ready_fd, READY)
        os.close(ready_fd)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    threading.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cilia-workload serve")
    parser.add_argument("--name", required=True, help="the pod name (the HTTP body)")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--port", type=int, action="append", default=[],
                        help="a containerPort (repeatable)")
    parser.add_argument("--ready-fd", type=int, default=None)
    args = parser.parse_args(argv)
    serve(args.name, sorted(set(args.port)), args.ready_fd)
    return 0
