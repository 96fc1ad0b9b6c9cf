"""Starting a kube-dns pod's server for the lab's kubelet (the ``cilia/dns`` image).

The server process runs in the root netns (it needs the bus) and binds its sockets inside the
pod's netns (see :mod:`services.dns.server`). The kubelet records and stops it like any
workload.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
from pathlib import Path

from services.dns.errors import DnsStartError
from services.lab import netns as ns

READY_TIMEOUT_S = 20.0    # the server folds the lb history before it says ready
READ_CHUNK = 64
LOG_TAIL = 1000


def nats_url_for_pods() -> str:
    """The bus the DNS server joins: $CILIA_NATS_URL, else what ``cilia up`` recorded."""
    from services.cli._context import CliContext, default_state_dir

    return CliContext(None, default_state_dir()).url()


def start_dns(netns: str, pod: str, namespace: str, node: str, logfile: Path) -> ns.ProcRef:
    """Start ``python -m services.dns serve`` for a pod and wait until it answers.

    Raises:
        DnsStartError: it exited or did not report ready in time (it is killed).
    """
    argv = [sys.executable, "-m", "services.dns", "serve", "--netns", netns,
            "--replica", f"{namespace}/{pod}", "--node", node,
            "--nats-url", nats_url_for_pods(), "--log-level", "WARNING"]
    logfile.parent.mkdir(parents=True, exist_ok=True)
    rfd, wfd = os.pipe()
    try:
        with logfile.open("ab") as out, open(os.devnull, "rb") as devnull:
            proc = ns.spawn(None, [*argv, "--ready-fd", str(wfd)], stdin=devnull,
                            stdout=out, stderr=out, pass_fds=(wfd,), detach=True)
        os.close(wfd)
        wfd = -1
        ready, _, _ = select.select([rfd], [], [], READY_TIMEOUT_S)
        data = os.read(rfd, READ_CHUNK) if ready else b""
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)
    if data.strip() != b"ready":
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        tail = logfile.read_text(errors="replace")[-LOG_TAIL:]
        raise DnsStartError(f"dns pod {namespace}/{pod} (netns {netns}) did not start:\n{tail}")
    return ns.proc_ref(proc.pid)
