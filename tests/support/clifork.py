"""Run ``cilia`` commands in processes forked from one that imported the CLI already.

Starting the ``cilia`` executable spends about a second importing the CLI (bcc, pyroute2, nats,
the datapath) before it does anything; end-to-end tests run it thousands of times, often in
loops that wait for the services, which need that CPU themselves. A fork server imports
``services.cli.main`` once; each command is a child forked from it that runs exactly what the
console script runs (``main()`` with the command's argv, environment, working directory and
output files), exits with its exit code and is waited for by the server. The code that runs is
the real CLI's, in a process of its own; only the interpreter start and the imports are shared.

``CILIA_TEST_CLI_EXEC=1`` makes :func:`run` start the executable instead, as before.

The server is started at the first command and stopped by :func:`stop` at exit; it also stops
by itself when the process that started it is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

CILIA = str(Path(sys.executable).parent / "cilia")
EXEC_ENV = "CILIA_TEST_CLI_EXEC"    # "1": start the executable for every command
MAX_REQUEST = 1 << 20               # a command's argv and environment, encoded
SERVER_START_S = 60.0               # the import, on a loaded machine
REAP_POLL_S = 0.02                  # how often the server looks for exited children

_lock = threading.Lock()
_server: tuple[subprocess.Popen[bytes], str, str] | None = None    # process, socket, its dir


def run(args: list[str], *, env: dict[str, str], cwd: str | Path,
        timeout: float) -> subprocess.CompletedProcess[str]:
    """``cilia *args`` as ``subprocess.run(..., capture_output=True, text=True)`` runs it."""
    argv = [CILIA, *args]
    if os.environ.get(EXEC_ENV) == "1":
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    path = _ensure_server()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            open(os.devnull, "rb") as devnull, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        request = json.dumps({"argv": argv, "env": env, "cwd": str(cwd)}).encode()
        socket.send_fds(sock, [request], [devnull.fileno(), out.fileno(), err.fileno()])
        sock.shutdown(socket.SHUT_WR)
        reader = sock.makefile("r")
        pid = _number(reader.readline(), argv)
        sock.settimeout(timeout)
        try:
            line = reader.readline()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise subprocess.TimeoutExpired(argv, timeout) from None
        code = _number(line, argv)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, code, out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))


def _number(line: str, argv: list[str]) -> int:
    if not line.strip():
        raise RuntimeError(f"the cilia fork server went away while running {argv[1:]}")
    return int(line)


def _ensure_server() -> str:
    global _server
    with _lock:
        if _server is not None and _server[0].poll() is None:
            return _server[1]
        sockdir = tempfile.mkdtemp(prefix="cilia-clifork-")
        path = os.path.join(sockdir, "sock")
        proc = subprocess.Popen([sys.executable, "-m", "tests.support.clifork", path],
                                cwd=Path(__file__).resolve().parents[2],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], SERVER_START_S)
        if not ready or proc.stdout.readline().strip() != b"ready":
            proc.kill()
            proc.wait()
            raise RuntimeError("the cilia fork server did not start")
        _server = (proc, path, sockdir)
        return path


def stop() -> None:
    """Stop the fork server (its running children are waited for first)."""
    global _server
    with _lock:
        if _server is None:
            return
        proc, _, sockdir = _server
        _server = None
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(sockdir, "sock"))
        os.rmdir(sockdir)


atexit.register(stop)


# The server side, run as ``python -m tests.support.clifork SOCKET``.

def _child(request: dict[str, Any], fds: list[int], inherited: list[socket.socket]) -> None:
    """In the forked child: become ``cilia argv...`` and never return."""
    code = 0
    try:
        for sock in inherited:      # the server's sockets: not this command's
            sock.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        from services.cli.main import main

        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
    os._exit(code)


def _serve(path: str) -> None:
    import services.cli.main  # noqa: F401  (what every child would import)

    stopping = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    parent = os.getppid()     # the process that started this server: when it is gone, stop
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    children: dict[int, socket.socket] = {}
    while not stopping or children:
        stopping = stopping or os.getppid() != parent
        if not stopping:
            ready, _, _ = select.select([listener], [], [], REAP_POLL_S)
        else:
            ready = []
            select.select([], [], [], REAP_POLL_S)
        if ready:
            conn, _ = listener.accept()
            msg, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 3)
            while True:      # the client shuts its side after the whole request
                more = conn.recv(MAX_REQUEST)
                if not more:
                    break
                msg += more
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                _child(json.loads(msg), fds, [listener, conn, *children.values()])
            for fd in fds:
                os.close(fd)
            conn.sendall(f"{pid}\n".encode())
            children[pid] = conn
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                conn = children.pop(pid)
                with contextlib.suppress(OSError):
                    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                conn.close()
    listener.close()


if __name__ == "__main__":
    _serve(sys.argv[1])
