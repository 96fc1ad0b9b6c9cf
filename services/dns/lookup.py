"""``python -m services.dns lookup NAME``: a stub resolver for pods (dnspython's), like ``dig``.

Reads the pod's ``/etc/resolv.conf`` (search domains, ndots) unless ``--server`` is given, and
prints the A records, one per line. Exit status: 0 answered, 1 timeout, 2 NXDOMAIN or no
record, 3 any other error (refused, server failure).
"""

from __future__ import annotations

import argparse

import dns.exception
import dns.resolver

DEFAULT_TIMEOUT_S = 2.0
EXIT_OK, EXIT_TIMEOUT, EXIT_NXDOMAIN, EXIT_ERROR = 0, 1, 2, 3


def lookup(name: str, server: str | None = None, port: int = 53, tcp: bool = False,
           timeout: float = DEFAULT_TIMEOUT_S) -> tuple[int, list[str]]:
    """Resolve ``name`` to IPv4 addresses; returns (exit status, lines to print)."""
    if server:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [server]
        resolver.port = port
    else:
        resolver = dns.resolver.Resolver()   # /etc/resolv.conf: the pod's, under cilia exec
    try:
        answer = resolver.resolve(name, "A", tcp=tcp, lifetime=timeout, search=True)
    except dns.resolver.NXDOMAIN:
        return EXIT_NXDOMAIN, ["NXDOMAIN"]
    except dns.resolver.NoAnswer:
        return EXIT_NXDOMAIN, ["NODATA"]
    except dns.exception.Timeout:
        return EXIT_TIMEOUT, ["timeout"]
    except (dns.resolver.NoNameservers, dns.exception.DNSException) as exc:
        return EXIT_ERROR, [f"error: {exc}"]
    return EXIT_OK, sorted(rr.to_text() for rr in answer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.dns lookup")
    parser.add_argument("name")
    parser.add_argument("--server", default=None, help="ask this server (default: resolv.conf)")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--tcp", action="store_true")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    args = parser.parse_args(argv)
    status, lines = lookup(args.name, args.server, args.port, args.tcp, args.timeout)
    for line in lines:
        print(line, flush=True)
    return status
