"""``python -m services.workload serve ...`` or ``python -m services.workload connect ...``."""

from __future__ import annotations

import sys

from services.workload import connect, server

USAGE = "usage: python -m services.workload {serve|connect} ..."


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("serve", "connect"):
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] == "serve":
        return server.main(argv[1:])
    return connect.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
