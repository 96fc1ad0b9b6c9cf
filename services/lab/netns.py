"""Network namespace and process plumbing for the lab (the I/O shell around the plan).

pyroute2 creates and removes named namespaces. Two things pyroute2 does not do are done with
the setns(2) system call directly (through ctypes, as pyroute2 itself does):

- sysctls of a namespace: a short-lived thread enters the netns and writes ``/proc/sys``
  (``/proc/sys/net`` belongs to the netns of the thread that opens it);
- processes started in a namespace: the child enters the netns between fork and exec (they are
  tracked as :class:`~services.common.processes.ProcRef`, so a recycled pid is never signalled).
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pyroute2 import netns as pr_netns

from services.common.netns import LIBC, NETNS_RUN_DIR, netns_path, run_in_netns, setns_net
from services.common.processes import ProcRef, start_time
from services.lab.errors import TopologyError

CLONE_NEWNS = 0x00020000    # a private mount namespace (the pod's resolv.conf)
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 1 << 19          # mounts made in the child never propagate back
RESOLV_CONF = b"/etc/resolv.conf"


def netns_exists(name: str) -> bool:
    return (NETNS_RUN_DIR / name).exists()


def list_netns(prefix: str = "") -> list[str]:
    return sorted(n for n in pr_netns.listnetns() if n.startswith(prefix))


def create_netns(name: str) -> None:
    """Create a named netns.

    Raises:
        TopologyError: it exists already or creation failed.
    """
    if netns_exists(name):
        raise TopologyError(f"netns {name} already exists")
    try:
        pr_netns.create(name)
    except OSError as exc:
        raise TopologyError(f"netns {name}: cannot create: {exc}") from exc


def create_ipv4_netns(name: str) -> None:
    """Create a named netns with IPv6 off (the lab is IPv4 only: no ND/MLD noise on veths).

    ``default`` covers interfaces created or moved in later (veths, the pod's eth0).
    """
    create_netns(name)
    try:
        for scope in ("all", "default"):
            write_sysctl(name, f"net.ipv6.conf.{scope}.disable_ipv6", "1")
    except TopologyError:
        remove_netns(name)
        raise


def remove_netns(name: str) -> bool:
    """Remove a named netns; False when it did not exist."""
    if not netns_exists(name):
        return False
    pr_netns.remove(name)
    return True


def write_sysctl(netns: str, key: str, value: str) -> None:
    """Write ``/proc/sys/<key with dots as slashes>`` inside a netns.

    Raises:
        TopologyError: the netns or the sysctl does not exist.
    """
    try:
        run_in_netns(netns, lambda: Path("/proc/sys", *key.split(".")).write_text(value))
    except OSError as exc:
        raise TopologyError(f"netns {netns}: sysctl {key}={value}: {exc}") from exc


def _bind_resolv_conf(path: bytes) -> None:
    """In a forked child: a private mount namespace where ``path`` is /etc/resolv.conf (what
    ``ip netns exec`` does with /etc/netns/<name>/resolv.conf)."""
    for ok in (LIBC.unshare(CLONE_NEWNS) == 0,
               LIBC.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None) == 0,
               LIBC.mount(path, RESOLV_CONF, None, MS_BIND, None) == 0):
        if not ok:
            err = ctypes.get_errno()
            raise OSError(err, f"resolv.conf bind mount: {os.strerror(err)}")


def spawn(netns: str | None, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
          stdin: int | IO[Any] | None = None, stdout: int | IO[Any] | None = None,
          stderr: int | IO[Any] | None = None, pass_fds: Sequence[int] = (),
          detach: bool = False, resolv_conf: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside a named netns (None: the caller's netns).

    Args:
        detach: start a new session, so the process outlives the caller's terminal.
        resolv_conf: a file the process sees as /etc/resolv.conf (the pod's DNS settings).

    Raises:
        TopologyError: the netns does not exist.
        OSError: the program cannot be executed.
    """
    fd = -1
    if netns is not None:
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY)
        except FileNotFoundError:
            raise TopologyError(f"netns {netns} does not exist") from None

    resolv = resolv_conf.encode() if resolv_conf else None

    def enter() -> None:
        if fd >= 0:
            setns_net(fd)
        if resolv is not None:
            _bind_resolv_conf(resolv)

    try:
        return subprocess.Popen(list(argv), env=dict(env) if env is not None else None,
                                stdin=stdin, stdout=stdout, stderr=stderr,
                                pass_fds=tuple(pass_fds), start_new_session=detach,
                                preexec_fn=enter if fd >= 0 or resolv else None)
    finally:
        if fd >= 0:
            os.close(fd)


def proc_ref(pid: int) -> ProcRef:
    """Record a running process.

    Raises:
        TopologyError: the process is gone.
    """
    start = start_time(pid)
    if start is None:
        raise TopologyError(f"process {pid} exited")
    return ProcRef(pid, start)


def pids_in_netns(name: str) -> list[int]:
    """Pids of the processes whose network namespace is the named netns."""
    try:
        target = os.stat(netns_path(name))
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EACCES, errno.ESRCH):
                continue
            raise
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino) and int(entry) != os.getpid():
            found.append(int(entry))
    return found
