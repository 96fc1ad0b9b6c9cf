"""Starting the built-in workload in a netns and waiting until every port is bound."""

from __future__ import annotations

import contextlib
import os
import select
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from services.lab import netns as ns
from services.lab.errors import WorkloadError

READY_TIMEOUT = 10.0   # seconds for the workload to bind its ports
READ_CHUNK = 64
LOG_TAIL = 1000        # characters of the log quoted in errors


def start_workload(netns: str, name: str, namespace: str, ports: Iterable[int],
                   logfile: Path) -> ns.ProcRef:
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
                 logfile: Path) -> ns.ProcRef:
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


def start_until_ready(netns: str | None, argv: list[str], logfile: Path, timeout: float,
                      what: str, env: Mapping[str, str] | None = None) -> ns.ProcRef:
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
