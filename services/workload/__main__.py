"""``python -m services.workload {serve|client|connect} ...``."""

from __future__ import annotations

import sys

from services.workload import client, connect, server

USAGE = "usage: python -m services.workload {serve|client|connect} ..."
MODES = {"serve": server.main, "client": client.main, "connect": connect.main}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in MODES:
        print(USAGE, file=sys.stderr)
        return 2
    return MODES[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
