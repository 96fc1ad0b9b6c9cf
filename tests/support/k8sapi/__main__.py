"""``python -m tests.support.k8sapi --kubeconfig FILE``: the test API server as a process.

It stands in for a cluster's API server where there is none (``make demo`` runs the lab on it):
it writes a kubeconfig for itself, prints its URL on the first line of its output and serves
until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import threading
from pathlib import Path

from tests.support.k8sapi._server import api_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.k8sapi")
    parser.add_argument("--kubeconfig", required=True, type=Path,
                        help="where to write the kubeconfig of this server")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with api_server(token=secrets.token_urlsafe(24)) as api:
        api.kubeconfig(args.kubeconfig)
        print(api.url, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
