"""Service processes started by tests, always stopped by PID."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.common.processes import end_process

REPO = Path(__file__).resolve().parents[2]


def start_service(module: str, nats_url: str, *args: str,
                  env: dict[str, str] | None = None,
                  log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m <module>`` against ``nats_url``."""
    full_env = {**os.environ, **(env or {})}
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen([sys.executable, "-m", module, "--nats-url", nats_url, *args],
                                cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
    return end_process(proc, timeout)


@contextmanager
def service(module: str, nats_url: str, *args: str, env: dict[str, str] | None = None,
            log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_service(module, nats_url, *args, env=env, log=log)
    try:
        yield proc
    finally:
        stop_process(proc)
