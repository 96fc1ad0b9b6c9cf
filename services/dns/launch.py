"""Starting a kube-dns pod's server for the lab's kubelet (the ``cilia/dns`` image).

The server process runs in the root netns (it needs the bus) and binds its sockets inside the
pod's netns (see :mod:`services.dns.server`). The kubelet records and stops it like any
workload.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from services.dns.errors import DnsStartError
from services.lab import netns as ns
from services.lab._workload import start_until_ready
from services.lab.errors import WorkloadError

READY_TIMEOUT_S = 20.0    # the server folds the lb history before it says ready


def bus_for_pods() -> tuple[str, dict[str, str]]:
    """The bus the DNS server joins ($CILIA_NATS_URL, else what ``cilia up`` recorded) and its
    environment: the ``dns`` role's credentials."""
    from services.cli._context import CliContext, default_state_dir
    from services.common.roles import DNS

    ctx = CliContext(None, default_state_dir())
    return ctx.url(), {**os.environ, **ctx.role_env(DNS)}


def start_dns(netns: str, pod: str, namespace: str, node: str, logfile: Path) -> ns.ProcRef:
    """Start ``python -m services.dns serve`` for a pod and wait until it answers.

    Raises:
        DnsStartError: it exited or did not report ready in time (it is killed).
    """
    url, env = bus_for_pods()
    argv = [sys.executable, "-m", "services.dns", "serve", "--netns", netns,
            "--replica", f"{namespace}/{pod}", "--node", node,
            "--nats-url", url, "--log-level", "WARNING"]
    try:
        return start_until_ready(None, argv, logfile, READY_TIMEOUT_S,
                                 f"dns pod {namespace}/{pod} (netns {netns})", env=env)
    except WorkloadError as exc:
        raise DnsStartError(str(exc)) from exc
