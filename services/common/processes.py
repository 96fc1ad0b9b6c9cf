"""Ending a child process this process started."""

from __future__ import annotations

import subprocess


def end_process(proc: subprocess.Popen[bytes], timeout: float, *,
                terminate: bool = True) -> int:
    """SIGTERM ``proc`` (unless ``terminate`` is False: it is ending by itself), wait up to
    ``timeout`` seconds, then SIGKILL; returns its exit code."""
    if proc.poll() is None:
        if terminate:
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
