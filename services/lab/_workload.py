"""Starting a pod's program and waiting until it is ready: the built-in workload, the client
(``cilia/client``) and the cluster DNS server (``cilia/dns``), by image, as a kubelet runs a
container's command."""

from __future__ import annotations

import contextlib
import os
import select
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from services.common.busconfig import BusConfig
from services.common.paths import state_root
from services.common.processes import ProcRef
from services.common.roles import DNS
from services.common.world import DEFAULT_WORLD, World
from services.lab import netns as ns
from services.lab.errors import WorkloadError

READY_TIMEOUT = 10.0   # seconds for the workload to bind its ports
DNS_READY_TIMEOUT = 20.0    # the DNS server folds the lb history before it says ready
READ_CHUNK = 64
LOG_TAIL = 1000        # characters of the log quoted in errors


def start_workload(netns: str, name: str, namespace: str, ports: Iterable[int],
                   logfile: Path) -> ProcRef:
    """Start ``python -m services.workload serve`` in ``netns``, detached, logging to a file.

    Raises:
        WorkloadError: it exited or did not report ready in time (it is killed).
    """
    argv = [sys.executable, "-m", "services.workload", "serve", "--name", name,
            "--namespace", namespace]
    for port in sorted(set(ports)):
        argv += ["--port", str(port)]
    return start_until_ready(netns, argv, logfile, READY_TIMEOUT,
                             f"workload {namespace}/{name} in netns {netns}")


def start_client(netns: str, name: str, namespace: str, targets: Iterable[str],
                 logfile: Path) -> ProcRef:
    """Start ``python -m services.workload client`` in ``netns``: it connects to each
    ``HOST:PORT`` target in a loop from the moment it starts (the ``cilia/client`` image).

    Raises:
        WorkloadError: it exited or did not report ready in time (it is killed).
    """
    argv = [sys.executable, "-m", "services.workload", "client", "--name", name,
            "--namespace", namespace]
    for target in targets:
        argv += ["--target", target]
    return start_until_ready(netns, argv, logfile, READY_TIMEOUT,
                             f"client {namespace}/{name} in netns {netns}")


def start_dns(netns: str, pod: str, namespace: str, node: str, logfile: Path,
              world: World = DEFAULT_WORLD) -> ProcRef:
    """Start ``python -m services.dns serve`` for a kube-dns pod and wait until it answers
    (the lab's names of ``world`` among what it serves).

    The server process runs in the root netns (it needs the bus, as the ``dns`` role of the bus
    in use: ``$CILIA_NATS_URL``, else what ``cilia up`` recorded) and binds its sockets inside
    the pod's netns (see :mod:`services.dns.server`).

    Raises:
        WorkloadError: it exited or did not report ready in time (it is killed).
    """
    bus = BusConfig(None, state_root())
    argv = [sys.executable, "-m", "services.dns", "serve", "--netns", netns,
            "--replica", f"{namespace}/{pod}", "--node", node,
            "--nats-url", bus.url(), "--log-level", "WARNING", *world.to_args()]
    return start_until_ready(None, argv, logfile, DNS_READY_TIMEOUT,
                             f"dns pod {namespace}/{pod} (netns {netns})",
                             env={**os.environ, **bus.role_env(DNS)})


def start_until_ready(netns: str | None, argv: list[str], logfile: Path, timeout: float,
                      what: str, env: Mapping[str, str] | None = None) -> ProcRef:
    """Start ``argv`` (in ``netns``, or here for None) detached, logging to ``logfile``, and
    wait until it writes ``ready`` to the fd passed as ``--ready-fd``.

    Raises:
        WorkloadError: it exited or did not report ready in time (it is killed); the message
            names ``what`` and quotes the end of its log.
    """
    logfile.parent.mkdir(parents=True, exist_ok=True)
    rfd, wfd = os.pipe()
    try:
        with logfile.open("ab") as out, open(os.devnull, "rb") as devnull:
            proc = ns.spawn(netns, [*argv, "--ready-fd", str(wfd)], stdin=devnull,
                            stdout=out, stderr=out, pass_fds=(wfd,), detach=True, env=env)
        os.close(wfd)
        wfd = -1
        ready, _, _ = select.select([rfd], [], [], timeout)
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
        raise WorkloadError(f"{what} did not start:\n{tail}")
    return ns.proc_ref(proc.pid)
