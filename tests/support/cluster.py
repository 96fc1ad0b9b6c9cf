"""A whole cluster for tests: its own nats-server, the services, a lab with agents.

Everything is started by the fixture and removed by it (namespaces, pins, processes), also
when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.cli import controlplane
from services.cli.controlplane import SERVICES
from services.common.bus import Bus
from services.common.buscreds import BusAccess, Credentials
from services.common.contract import AGENT_INPUTS, POLICY_INPUTS
from services.common.embedded import NatsServer, free_port, start_nats
from services.common.roles import ADMIN, CLI, SERVICE_ROLES
from services.common.runner import collect_status
from tests.support import clifork
from tests.support.procs import REPO, start_service, stop_process
from tests.support.wait import wait_until

CILIA = clifork.CILIA
CONNECT = str(Path(sys.executable).parent / "cilia-connect")
SETTLE_POLL_S = 0.1     # between two status requests while settling (each gathers 0.3 s)


@dataclass
class Cluster:
    url: str
    lab: str
    state_dir: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    access: BusAccess | None = None     # the bus's credentials (None: an open bus)

    def creds(self, role: str = ADMIN) -> Credentials:
        """A role's credentials on this cluster's bus (admin: may publish anything)."""
        return self.access.credentials(role) if self.access else Credentials(role=role)

    def service_env(self, service: str) -> dict[str, str]:
        """The environment a control-plane service runs with here (its role's credentials)."""
        return {**self.env, **controlplane.role_env(self.url, self.access,
                                                    SERVICE_ROLES[service])}

    def start_service(self, service: str, log: Path) -> subprocess.Popen[bytes]:
        """Start (or restart) one control-plane service of this cluster with its role."""
        return start_service(f"services.{service}", self.url, env=self.service_env(service),
                             log=log)

    async def bus(self, role: str = ADMIN, name: str = "test") -> Bus:
        """A connection to the cluster's bus as ``role``."""
        return await Bus.connect(self.url, name, creds=self.creds(role))

    def cilia(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``cilia *args`` in this cluster's environment (forked from a warm CLI: clifork)."""
        return clifork.run(list(args), env=self.env, cwd=REPO, timeout=timeout)

    def ok(self, *args: str) -> str:
        res = self.cilia(*args)
        assert res.returncode == 0, f"cilia {' '.join(args)}: {res.stdout}{res.stderr}"
        return res.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "-o", "json"))

    def connect(self, target: str, namespace: str, host: str, port: int,
                timeout: float = 1.0, udp: bool = False) -> str:
        """Probe from a pod: 'OK', 'timeout', 'refused' or 'error: ...'."""
        args = ["exec", target, "-n", namespace, "--", CONNECT, host, str(port),
                "--timeout", str(timeout)]
        if udp:
            args.append("--udp")
        return self.cilia(*args, timeout=timeout + 30).stdout.strip()

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
        wait_until(what, check, timeout)

    def endpoints(self) -> list[dict[str, Any]]:
        return list(self.json("endpoint", "list"))

    def pod_ips(self, namespace: str) -> dict[str, str]:
        """app label -> pod IP, from the kernel's endpoint map."""
        out = {}
        for ep in self.endpoints():
            if not ep["pod"].startswith(f"{namespace}/"):
                continue
            for lbl in ep["labels"]:
                if lbl.startswith("k8s:app="):
                    out[lbl.split("=", 1)[1]] = ep["ipv4"]
        return out

    def settle(self, timeout: float = 20.0) -> None:
        """Wait until the policy service and every agent handled everything on the bus.

        Asks the services for their status on one bus connection, as ``cilia status`` does,
        instead of starting the CLI for each poll: a CLI start costs a second of CPU that the
        services being waited for need on a loaded machine.
        """
        async def caught_up(bus: Bus, service: str, key: str, filters: list[str]) -> None:
            snap = await bus.snapshot(filters)
            seq = max((d.seq for d in snap.values()), default=0)
            deadline = time.monotonic() + timeout
            while True:
                stats = [r["stats"] for r in await collect_status(bus)
                         if r["service"] == service]
                if stats and all(s[key] >= seq for s in stats):   # none answering: not yet
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out waiting for {service} to catch up "
                                         f"with seq {seq}: {stats}")
                await asyncio.sleep(SETTLE_POLL_S)

        async def run() -> None:
            bus = await self.bus(CLI)
            try:
                await caught_up(bus, "policy", "seq", POLICY_INPUTS.filters)
                await caught_up(bus, "nodeagent", "realized", AGENT_INPUTS.filters)
            finally:
                await bus.close()

        asyncio.run(run())


@contextmanager
def cluster(tmp: Path, nodes: int = 1, extra_env: dict[str, str] | None = None,
            routing: str = "native", secure: bool = True,
            lab_args: Sequence[str] = ()) -> Iterator[Cluster]:
    """Start nats-server, identity and policy services, and a lab with ``nodes`` agents.

    The bus is started exactly as ``cilia up`` starts it (TLS, one credential per role, the
    history stream and KV buckets made by the admin), and each service runs with its own role's
    credentials; ``secure=False`` starts an open bus instead (benchmarks compare the two).
    ``extra_env`` reaches every process started (services, agents, CLI calls); ``routing``
    is the lab's ``--routing`` (native or tunnel); ``lab_args`` go to ``cilia lab up`` too.
    """
    lab = "t" + secrets.token_hex(2)
    state = tmp / "state"
    server: NatsServer | None = None
    access: BusAccess | None = None
    if secure:
        up = controlplane.up(state, None, port=free_port(), services=())
        url = up["nats_url"]
        access = BusAccess.from_json(up["bus"])
    else:
        server = start_nats(tmp / "nats", log_file=tmp / "nats.log")
        url = server.url
    env = {**os.environ, "CILIA_STATE_DIR": str(state), "CILIA_NATS_URL": url,
           "CILIA_LAB": lab, "CILIA_RUN_DIR": str(tmp / "run"), **(extra_env or {})}
    c = Cluster(url, lab, state, env, access=access)
    try:
        for name in SERVICES:
            c.procs.append(c.start_service(name, tmp / f"{name}.log"))
        res = c.cilia("lab", "up", "--nodes", str(nodes), "--name", lab, "--routing", routing,
                      *lab_args, timeout=180)
        if res.returncode != 0:
            logs = "".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                           for p in sorted((state / "lab" / lab / "logs").glob("*.log")))
            raise AssertionError(f"lab up failed: {res.stdout}{res.stderr}\n{logs}")
        yield c
    finally:
        down = c.cilia("lab", "down", "--name", lab, timeout=120)
        for proc in c.procs:
            stop_process(proc)
        if server is not None:
            server.stop()
        else:
            controlplane.down(state)
        # Agents of this lab name our temporary directory in their command line: one left
        # running (a lab brought down and up again by a test) is ours to stop.
        strays = _processes_naming(str(tmp))
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not strays, f"lab {lab} left processes {strays}: {down.stdout}{down.stderr}"


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@contextmanager
def temp_cluster(nodes: int = 1, prefix: str = "cilia-cluster-",
                 **kwargs: Any) -> Iterator[Cluster]:
    """:func:`cluster` in a temporary directory of its own, removed afterwards.

    Not under pytest's basetemp: another pytest session on the machine may prune that.
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with cluster(tmp, nodes=nodes, **kwargs) as c:
            yield c
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
