"""The processes cilia starts: recorded so that a recycled pid is never signalled, and ended.

Two records, for two kinds of owner:

- :class:`ProcRef` (pid + start time from ``/proc/<pid>/stat``): the lab's agents, workloads,
  DNS servers and external host, in the lab's state files;
- :class:`ProcessRecord` (name, pid + command line): what ``cilia up`` started, in ``up.json``.

:func:`end_process` ends a child this process holds a :class:`subprocess.Popen` of.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAT_STARTTIME_FIELD = 21   # index of starttime in /proc/<pid>/stat after the comm field
TERM_GRACE = 2.0            # seconds between SIGTERM and SIGKILL
POLL_INTERVAL = 0.02
RECORD_STOP_TIMEOUT_S = 10.0    # a recorded control-plane process's grace after SIGTERM
RECORD_POLL_S = 0.05
BUS_PROCESS = "nats-server"     # stopped last: the services flush to it while they stop


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


@dataclass(frozen=True)
class ProcRef:
    """A process as it was recorded: pid plus start time (guards against pid reuse)."""

    pid: int
    start: int

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start": self.start}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcRef:
        return cls(int(data["pid"]), int(data["start"]))


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the comm field may hold spaces and parentheses; everything after the last ')' is fixed
    return raw[raw.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """The start time of a running process (clock ticks after boot); None when it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[STAT_STARTTIME_FIELD - 2])


def is_alive(ref: ProcRef) -> bool:
    """True if the recorded process runs (a zombie or a recycled pid is not it)."""
    fields = _stat_fields(ref.pid)
    if fields is None or fields[0] == "Z":
        return False
    return int(fields[STAT_STARTTIME_FIELD - 2]) == ref.start


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _stop(pid: int, alive: Callable[[], bool], term_grace: float, poll: float) -> bool:
    """SIGTERM ``pid``, wait up to ``term_grace`` seconds, then SIGKILL and wait up to
    :data:`TERM_GRACE`; ``alive`` tells whether it is still the process meant. True when
    it ended."""
    for sig, wait in ((signal.SIGTERM, term_grace), (signal.SIGKILL, TERM_GRACE)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while True:
            _reap(pid)
            if not alive():
                return True
            if time.monotonic() >= deadline:
                break
            time.sleep(poll)
    return not alive()


def stop_process(ref: ProcRef, grace: float = TERM_GRACE) -> bool:
    """SIGTERM the recorded process, SIGKILL after ``grace`` seconds; False if it was gone."""
    if not is_alive(ref):
        _reap(ref.pid)
        return False
    return _stop(ref.pid, lambda: is_alive(ref), grace, POLL_INTERVAL)


@dataclass
class ProcessRecord:
    """A process ``cilia up`` started: its name, pid and command line (in ``up.json``)."""

    name: str
    pid: int
    cmdline: list[str]


def cmdline(pid: int) -> list[str] | None:
    """The command line of a running process; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode() for part in raw.split(b"\0") if part]


def is_running(rec: ProcessRecord) -> bool:
    """True if ``rec.pid`` is still the process we started (same command line)."""
    return cmdline(rec.pid) == rec.cmdline


def stop_records(records: list[ProcessRecord],
                 timeout: float = RECORD_STOP_TIMEOUT_S) -> list[str]:
    """SIGTERM each process that is still ours (services first, the bus last), then SIGKILL."""
    stopped: list[str] = []
    for rec in sorted(records, key=lambda r: r.name == BUS_PROCESS):
        if not is_running(rec):
            continue
        _stop(rec.pid, functools.partial(is_running, rec), timeout, RECORD_POLL_S)
        stopped.append(f"{rec.name} (pid {rec.pid})")
    return stopped
