"""``cilia up``/``cilia down``: the embedded bus and one process per service, tracked by PID."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from services.common.bus import NATS_URL_ENV, Bus, HistoryConfig
from services.common.embedded import start_nats
from services.common.errors import CiliaError
from services.common.runner import collect_status

# The control-plane services `cilia up` starts, one process each (python -m services.<name>).
SERVICES: tuple[str, ...] = ("identity", "policy", "lb")
EMBEDDED_PORT = 4222
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


@dataclass
class ProcessRecord:
    name: str
    pid: int
    cmdline: list[str]


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode() for part in raw.split(b"\0") if part]


def is_running(rec: ProcessRecord) -> bool:
    """True if ``rec.pid`` is still the process we started (same command line)."""
    return _cmdline(rec.pid) == rec.cmdline


def _spawn(name: str, cmd: list[str], log_dir: Path, env: dict[str, str]) -> ProcessRecord:
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    return ProcessRecord(name, proc.pid, cmd)


def read_state(state_file: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(state_file.read_text())
        return data
    except (OSError, ValueError):
        return None


def up(state_dir: Path, nats_url: str | None, port: int = EMBEDDED_PORT,
       history: HistoryConfig | None = None, replicas: dict[str, int] | None = None,
       services: tuple[str, ...] = SERVICES) -> dict[str, Any]:
    """Start the control plane in the background and record what was started.

    Raises:
        CiliaError: already running, or a part failed to start.
    """
    state_file = state_dir / "up.json"
    previous = read_state(state_file)
    if previous and any(is_running(ProcessRecord(**p)) for p in previous["processes"]):
        raise CiliaError(f"the control plane is already running (see {state_file}); "
                         "run 'cilia down' first")
    state_dir.mkdir(parents=True, exist_ok=True)
    records: list[ProcessRecord] = []
    state: dict[str, Any] = {"nats_url": nats_url, "embedded": nats_url is None,
                             "store_dir": None, "processes": []}

    def save() -> None:
        state["processes"] = [asdict(r) for r in records]
        state_file.write_text(json.dumps(state, indent=2))

    try:
        if nats_url is None:
            store = state_dir / "nats"
            server = start_nats(store, port=port, log_file=state_dir / "logs" / "nats.log",
                                detach=True)
            records.append(ProcessRecord("nats-server", server.pid, _cmdline(server.pid) or []))
            state.update(nats_url=server.url, store_dir=str(store))
            save()
        asyncio.run(_prepare_bus(state["nats_url"], history))
        env = {**os.environ, NATS_URL_ENV: state["nats_url"]}
        for name in services:
            for i in range((replicas or {}).get(name, 1)):
                cmd = [sys.executable, "-m", f"services.{name}", "--nats-url", state["nats_url"],
                       "--replica", f"{name}-{i}"]
                records.append(_spawn(f"{name}-{i}", cmd, state_dir / "logs", env))
                save()
        expected = {n: (replicas or {}).get(n, 1) for n in services}
        asyncio.run(wait_ready(state["nats_url"], expected, READY_TIMEOUT_S, records))
    except BaseException:
        stop_records(records)
        state_file.unlink(missing_ok=True)
        raise
    return state


async def _prepare_bus(url: str, history: HistoryConfig | None) -> None:
    bus = await Bus.connect(url, "cilia-up")
    try:
        await bus.ensure_history(history)
    finally:
        await bus.close()


async def wait_ready(url: str, expected: dict[str, int], timeout: float,
                     records: list[ProcessRecord] | None = None) -> None:
    """Wait until ``expected[service]`` replicas of each service answer with state ok."""
    bus = await Bus.connect(url, "cilia-up")
    deadline = time.monotonic() + timeout
    try:
        while True:
            for rec in records or []:
                if not is_running(rec):
                    raise CiliaError(f"{rec.name} (pid {rec.pid}) exited during start-up; "
                                     "see its log in the state directory")
            replies = await collect_status(bus)
            ok: dict[str, int] = {}
            for r in replies:
                if r["state"] == "ok":
                    ok[r["service"]] = ok.get(r["service"], 0) + 1
            if all(ok.get(n, 0) >= c for n, c in expected.items()):
                return
            if time.monotonic() > deadline:
                missing = [n for n, c in expected.items() if ok.get(n, 0) < c]
                raise CiliaError(f"services not ready after {timeout:.0f}s: {', '.join(missing)}")
    finally:
        await bus.close()


def stop_records(records: list[ProcessRecord], timeout: float = STOP_TIMEOUT_S) -> list[str]:
    """SIGTERM each process that is still ours (services first, the bus last), then SIGKILL."""
    stopped: list[str] = []
    for rec in sorted(records, key=lambda r: r.name == "nats-server"):
        if not is_running(rec):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while is_running(rec) and time.monotonic() < deadline:
            time.sleep(0.05)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(rec.pid, os.WNOHANG)
        if is_running(rec):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
        stopped.append(f"{rec.name} (pid {rec.pid})")
    return stopped


def down(state_dir: Path, purge: bool = False) -> list[str]:
    """Stop exactly what ``up`` started; with ``purge`` also remove the embedded store."""
    state_file = state_dir / "up.json"
    state = read_state(state_file)
    if state is None:
        return []
    stopped = stop_records([ProcessRecord(**p) for p in state["processes"]])
    state_file.unlink(missing_ok=True)
    if purge and state.get("store_dir"):
        shutil.rmtree(state["store_dir"], ignore_errors=True)
    return stopped
