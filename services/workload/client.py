"""The client workload: connects to its targets in a loop from the moment it starts.

Started by the lab's kubelet for pods of the ``cilia/client`` image (targets from the
container's ``args``, ``HOST:PORT`` each)::

    python -m services.workload client --name c1 --namespace shop --target 10.244.1.5:8080

One line per attempt on stdout (the pod's log): ``<unix time> <host>:<port> <outcome>`` with
the outcome of ``cilia-connect`` (``OK``, ``timeout``, ``refused``, ``error: ...``). It says
``ready`` before its first attempt, so the first attempt happens as early as the pod can run.
"""

from __future__ import annotations

import argparse
import os
import time

from services.workload.connect import probe_tcp
from services.workload.server import READY

DEFAULT_INTERVAL_S = 0.05   # pause between two rounds of attempts
DEFAULT_TIMEOUT_S = 0.5     # connect timeout of one attempt


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port).

    Raises:
        ValueError: not HOST:PORT with a port 1-65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"target {text!r} is not HOST:PORT")
    return host, int(port)


def run(targets: list[tuple[str, int]], interval: float, timeout: float,
        ready_fd: int | None = None) -> None:
    """Connect to every target in turn, forever (until killed)."""
    if ready_fd is not None:
        os.write(ready_fd, READY)
        os.close(ready_fd)
    while True:
        for host, port in targets:
            _, text = probe_tcp(host, port, timeout)
            print(f"{time.time():.3f} {host}:{port} {text}", flush=True)
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cilia-workload client")
    parser.add_argument("--name", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--target", action="append", default=[], type=parse_target,
                        help="HOST:PORT to connect to (repeatable)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--ready-fd", type=int, default=None)
    args = parser.parse_args(argv)
    run(args.target, args.interval, args.timeout, args.ready_fd)
    return 0
