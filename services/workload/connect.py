"""``cilia-connect``: a connection probe for tests and ``cilia exec``.

    cilia-connect HOST PORT [--udp] [--timeout SECONDS] [--payload TEXT]

Prints ``OK`` (exit 0), ``timeout`` (exit 1), ``refused`` (exit 2) or ``error: ...`` (exit 3).
TCP: a completed handshake is OK. UDP: an echoed payload is OK (the workload echoes).
"""

from __future__ import annotations

import argparse
import socket
import sys
from enum import IntEnum

DEFAULT_TIMEOUT = 2.0
MAX_DATAGRAM = 65535


class Outcome(IntEnum):
    OK = 0
    TIMEOUT = 1
    REFUSED = 2
    ERROR = 3


def probe_tcp(host: str, port: int, timeout: float) -> tuple[Outcome, str]:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return Outcome.OK, "OK"
    except TimeoutError:
        return Outcome.TIMEOUT, "timeout"
    except ConnectionRefusedError:
        return Outcome.REFUSED, "refused"
    except OSError as exc:
        return Outcome.ERROR, f"error: {exc.strerror or exc}"


def probe_udp(host: str, port: int, timeout: float, payload: bytes) -> tuple[Outcome, str]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
            sock.send(payload)
            data = sock.recv(MAX_DATAGRAM)
        except TimeoutError:
            return Outcome.TIMEOUT, "timeout"
        except ConnectionRefusedError:
            return Outcome.REFUSED, "refused"
        except OSError as exc:
            return Outcome.ERROR, f"error: {exc.strerror or exc}"
    if data != payload:
        return Outcome.ERROR, f"error: unexpected reply {data[:64]!r}"
    return Outcome.OK, "OK"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cilia-connect")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--udp", action="store_true", help="UDP echo instead of TCP connect")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("--payload", default="cilia-probe")
    args = parser.parse_args(argv)
    if args.udp:
        outcome, text = probe_udp(args.host, args.port, args.timeout, args.payload.encode())
    else:
        outcome, text = probe_tcp(args.host, args.port, args.timeout)
    print(text, flush=True)
    return int(outcome)


def console() -> None:
    sys.exit(main())
