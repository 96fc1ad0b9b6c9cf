"""The unit tier's guard, loaded by ``make unit`` (``-p tests.support.unitguard``).

A unit test is pure: it needs no root, no server and no kernel. ``make unit`` runs the tier
without the shared conftest (which starts servers and unpins maps), with every capability
dropped (``setpriv``: no namespaces, no BPF, no raw sockets), and with this guard, which makes
bcc unimportable and starting a nats-server an error. A test that needs any of them fails here
and belongs to another tier (``tests/bus``, ``tests/kernel``, ``tests/lab``).
"""

from __future__ import annotations

import sys

from services.common import embedded
from services.common.errors import BusError

sys.modules["bcc"] = None  # type: ignore[assignment]   # kernel access: none in this tier


def _no_server() -> str:
    raise BusError("a unit test starts no nats-server: move it to tests/bus or beyond")


embedded.nats_server_binary = _no_server
