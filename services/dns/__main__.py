"""``python -m services.dns serve --netns NS ...`` (a kube-dns pod) or ``... lookup NAME``."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from services.common.world import world
from services.dns import lookup

# The server (the bus, the lb view, the runner) is loaded only to serve: a pod's ``lookup``
# starts in a fifth of the time without it.
SERVER_MODULE = "services.dns.server"
RUNNER_MODULE = "services.common.runner"

USAGE = "usage: python -m services.dns {serve|lookup} ..."


def _serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--netns", default=None, help="listen inside this netns (the pod's)")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--node", default=None, help="the node the pod runs on")
    parser.add_argument("--ready-fd", type=int, default=None,
                        help="write 'ready' here once serving")
    parser.add_argument("--external-name", action="append", default=[], metavar="NAME=IP",
                        help="a name of the lab's world, besides the defaults (repeatable)")
    parser.add_argument("--external-cname", action="append", default=[],
                        metavar="ALIAS=TARGET", help="a CNAME of the lab's world (repeatable)")


def _factory(args: argparse.Namespace) -> Any:
    names = world(args.external_name, args.external_cname)    # checked before binding
    server = importlib.import_module(SERVER_MODULE)
    udp, tcp = server.bind_in_netns(args.netns, args.port)
    return server.DnsService(udp, tcp, args.ready_fd, names)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("serve", "lookup"):
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] == "lookup":
        return lookup.main(argv[1:])
    importlib.import_module(RUNNER_MODULE).service_main("dns", _factory, argv[1:],
                                                         extra_args=_serve_args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
