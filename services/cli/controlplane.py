"""``cilia up``/``cilia down``: the embedded bus and one process per service, tracked by PID.

The embedded bus is secured: TLS, and one nkey user per role with its subject permissions
(:mod:`services.common.roles`); each service process gets its own role's credentials in its
environment.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from services.common.bus import NATS_URL_ENV, Bus, HistoryConfig
from services.common.busconfig import CONTROL_PLANE_FILE
from services.common.buscreds import BusAccess, Credentials
from services.common.bussecrets import BusSecrets, bus_secrets
from services.common.contract import KV_IDENTITIES, KV_SERVICES
from services.common.embedded import NatsServer, reload_nats, start_nats
from services.common.errors import BusError, CiliaError
from services.common.paths import read_json, write_json_atomic
from services.common.processes import (
    BUS_PROCESS,
    ProcessRecord,
    cmdline,
    is_running,
    stop_records,
)
from services.common.roles import ADMIN, CLI, CONTROL_PLANE_ROLES, SERVICE_ROLES, agent_role
from services.common.runner import collect_status

# The control-plane services `cilia up` starts, one process each (python -m services.<name>).
SERVICES: tuple[str, ...] = ("identity", "policy", "lb")
EMBEDDED_PORT = 4222
READY_TIMEOUT_S = 30.0
RELOAD_TIMEOUT_S = 10.0    # for a reloaded bus to accept a new agent's credentials
RELOAD_POLL_S = 0.1
BUCKETS = (KV_IDENTITIES, KV_SERVICES)   # created by `cilia up` (admin), used by the services


def _spawn(name: str, cmd: list[str], log_dir: Path, env: dict[str, str]) -> ProcessRecord:
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    return ProcessRecord(name, proc.pid, cmd)


def start_embedded_bus(state_dir: Path, port: int = EMBEDDED_PORT,
                       detach: bool = True) -> tuple[NatsServer, BusSecrets]:
    """Start the embedded nats-server the way ``cilia up`` does: TLS with the state
    directory's CA, one nkey user per role with its subject permissions (credentials made once
    and reused).

    Raises:
        BusError: the credentials cannot be written or the server does not start.
    """
    secrets = bus_secrets(state_dir)
    secrets.ensure(CONTROL_PLANE_ROLES)
    server = start_nats(state_dir / "nats", port=port, log_file=state_dir / "logs" / "nats.log",
                        detach=detach, config=secrets.config, tls=True)
    return server, secrets


def role_env(url: str, access: BusAccess | None, role: str) -> dict[str, str]:
    """The bus environment of a process that runs as ``role`` (every ``CILIA_NATS_*`` set,
    so nothing of this process's own credentials leaks into it)."""
    creds = access.credentials(role) if access else Credentials(role=role)
    return {NATS_URL_ENV: url, **creds.env()}


def up(state_dir: Path, nats_url: str | None, port: int = EMBEDDED_PORT,
       history: HistoryConfig | None = None, replicas: dict[str, int] | None = None,
       services: tuple[str, ...] = SERVICES, access: BusAccess | None = None) -> dict[str, Any]:
    """Start the control plane in the background and record what was started.

    Without ``nats_url`` the bus is embedded and secured (see :func:`start_embedded_bus`);
    with one, ``access`` holds the credentials and TLS files to use with it (None: an open
    bus). As admin, the history stream and the KV buckets are created before any service
    starts: the services' roles may not create them.

    Raises:
        CiliaError: already running, or a part failed to start.
    """
    state_file = state_dir / CONTROL_PLANE_FILE
    previous = read_json(state_file)
    if previous and any(is_running(ProcessRecord(**p)) for p in previous["processes"]):
        raise CiliaError(f"the control plane is already running (see {state_file}); "
                         "run 'cilia down' first")
    state_dir.mkdir(parents=True, exist_ok=True)
    records: list[ProcessRecord] = []
    state: dict[str, Any] = {"nats_url": nats_url, "embedded": nats_url is None,
                             "store_dir": None, "bus_dir": None,
                             "bus": access.to_json() if access else None, "processes": []}

    def save() -> None:
        state["processes"] = [asdict(r) for r in records]
        write_json_atomic(state_file, state)

    try:
        if nats_url is None:
            server, secrets = start_embedded_bus(state_dir, port)
            records.append(ProcessRecord(BUS_PROCESS, server.pid, cmdline(server.pid) or []))
            access = secrets.access()
            state.update(nats_url=server.url, store_dir=str(server.store_dir),
                         bus_dir=str(secrets.root), bus=access.to_json())
            save()
        url = state["nats_url"]
        admin = access.credentials(ADMIN) if access else None
        asyncio.run(_prepare_bus(url, history, admin))
        for name in services:
            env = {**os.environ, **role_env(url, access, SERVICE_ROLES[name])}
            for i in range((replicas or {}).get(name, 1)):
                cmd = [sys.executable, "-m", f"services.{name}", "--nats-url", url,
                       "--replica", f"{name}-{i}"]
                records.append(_spawn(f"{name}-{i}", cmd, state_dir / "logs", env))
                save()
        expected = {n: (replicas or {}).get(n, 1) for n in services}
        asyncio.run(wait_ready(url, expected, READY_TIMEOUT_S, records, creds=admin))
    except BaseException:
        stop_records(records)
        state_file.unlink(missing_ok=True)
        raise
    return state


async def _prepare_bus(url: str, history: HistoryConfig | None,
                       creds: Credentials | None) -> None:
    """As admin: the history stream and the KV buckets the services use (they may not create
    them)."""
    bus = await Bus.connect(url, "cilia-up", creds=creds or Credentials(role=ADMIN))
    try:
        await bus.ensure_history(history)
        for bucket in BUCKETS:
            await bus.key_value(bucket)
    finally:
        await bus.close()


async def wait_ready(url: str, expected: dict[str, int], timeout: float,
                     records: list[ProcessRecord] | None = None,
                     creds: Credentials | None = None) -> None:
    """Wait until ``expected[service]`` replicas of each service answer with state ok."""
    bus = await Bus.connect(url, "cilia-up", creds=creds or Credentials(role=CLI))
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


def add_node_roles(state_dir: Path, url: str, access: BusAccess | None,
                   nodes: list[str]) -> list[str]:
    """Make sure each node's agent can connect as its own role; returns the roles added.

    On the embedded bus that ``cilia up`` started, missing agent users are created, the server
    configuration rewritten and the server reloaded; this returns once every new user is
    accepted. On another bus the credentials must exist already (an external NATS's users are
    its operator's).

    Raises:
        CiliaError: an agent's credentials are missing, or the reload did not take effect.
    """
    wanted = [agent_role(n) for n in nodes]
    state = read_json(state_dir / CONTROL_PLANE_FILE) or {}
    server = next((ProcessRecord(**p) for p in state.get("processes", [])
                   if p["name"] == BUS_PROCESS), None)
    if not (state.get("embedded") and state.get("nats_url") == url and state.get("bus_dir")
            and server is not None and is_running(server)):
        if access is not None and access.authenticated:
            for role in wanted:
                access.credentials(role)      # raises naming the missing file
        return []
    secrets = BusSecrets(Path(state["bus_dir"]))
    missing = [r for r in wanted if r not in secrets.roles()]
    if not missing:
        return []
    secrets.ensure(missing)
    reload_nats(server.pid)
    asyncio.run(_wait_accepted(url, secrets.access(), missing))
    return missing


async def _wait_accepted(url: str, access: BusAccess, new_roles: list[str]) -> None:
    """Until the reloaded server accepts every new role's credentials."""
    deadline = time.monotonic() + RELOAD_TIMEOUT_S
    for role in new_roles:
        while True:
            try:
                bus = await Bus.connect(url, "cilia-lab", timeout=RELOAD_POLL_S * 10,
                                        creds=access.credentials(role))
            except BusError as exc:
                if time.monotonic() > deadline:
                    raise CiliaError(f"the bus did not accept the new role {role} after "
                                     f"reloading its configuration: {exc}") from exc
                await asyncio.sleep(RELOAD_POLL_S)
                continue
            await bus.close()
            break


def down(state_dir: Path, purge: bool = False) -> list[str]:
    """Stop exactly what ``up`` started; with ``purge`` also remove the embedded store."""
    state_file = state_dir / CONTROL_PLANE_FILE
    state = read_json(state_file)
    if state is None:
        return []
    stopped = stop_records([ProcessRecord(**p) for p in state["processes"]])
    state_file.unlink(missing_ok=True)
    if purge and state.get("store_dir"):
        shutil.rmtree(state["store_dir"], ignore_errors=True)
    return stopped
