"""``cilia connectivity test``: deploy a test namespace, run real connections, report, clean up.

Like ``cilium connectivity test``: progress while it runs, one line per test with its time, a
report at the end, ``--test`` to select, ``-o json``; the exit status is 1 when any test fails.
Only the test namespace and the policies of the scenarios are created and removed; the cluster
DNS (``examples/kube-dns``) is deployed if it is missing and left in place, as cluster
infrastructure. What is deployed and checked is in :mod:`services.cli.connectivity_checks`.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from services.cli import source
from services.cli._context import CliContext, output_option, pass_ctx, print_json
from services.cli.agentcli import recent_flows
from services.cli.connectivity_checks import (
    DROP,
    EXTERNAL,
    HTTP,
    LOOKUP,
    NAMESPACE,
    NXDOMAIN,
    PASS,
    PODS,
    SCENARIOS,
    SERVICES,
    Check,
    CheckResult,
    Env,
    Scenario,
    ScenarioResult,
    objects,
    render_result,
    render_summary,
    select,
    summary,
)
from services.cli.controlplane import collect_status
from services.cli.labcli import current_lab
from services.cli.manifests import Manifest, load, validate_document
from services.common.bus import Bus
from services.common.contract import (
    AGENT_INPUTS,
    IPCACHE_FILTER,
    POLICY_INPUTS,
    ConsumerSpec,
    IpcacheUpsert,
    ServiceRecord,
)
from services.common.errors import CiliaError
from services.common.objects import ObjectError
from services.common.roles import SOURCE
from services.common.runner import STATE_OK
from services.common.world import WORLD_IPS
from services.lab import Kubelet, exec_in_pod
from services.lab.podexec import exec_in_netns
from services.lab.state import load_lab
from services.lb.client import read_view
from services.nodeagent.datapath.errors import DatapathError
from services.nodeagent.datapath.lb import LbMaps

KUBE_DNS = Path(__file__).resolve().parents[2] / "examples" / "kube-dns" / "kube-dns.yaml"
KUBE_DNS_REF = "kube-system/kube-dns"
CONNECT = str(Path(sys.executable).parent / "cilia-connect")
PASS_TIMEOUT_S = 3.0        # a connection that must pass gets this long (on a loaded machine)
DROP_TIMEOUT_S = 1.0        # a connection that must be dropped is given up after this
EXEC_GRACE_S = 20.0         # on top of the probe's own timeout, for the exec itself
READY_TIMEOUT_S = 60.0      # deployment: pods, identities, services in the kernel maps
SETTLE_TIMEOUT_S = 20.0     # a policy change realized by the policy service and every agent
SETTLE_COLLECT_S = 0.1      # heartbeats on the local bus answer within milliseconds
FLOW_WAIT_S = 2.0           # a drop's flow event reaches the agents' recent flows
POLL_S = 0.1
EXEC_TIMEOUT = 124          # the exit status reported for a probe that had to be killed
MANIFEST_SOURCE = "<connectivity test>"
# GET / in the pod (no proxy from the environment): the body is the answering pod's name
HTTP_GET = """
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(f"http://{sys.argv[1]}:{sys.argv[2]}/", timeout=float(sys.argv[3])) as r:
        print(r.read().decode(errors="replace").strip())
except Exception as exc:
    print(f"error: {getattr(exc, 'reason', exc)}")
    sys.exit(1)
"""


class ConnectivityError(CiliaError):
    """The test could not be set up (no lab, deployment not ready, ...)."""


def _manifests(objs: Sequence[dict[str, Any]]) -> list[Manifest]:
    try:
        return [Manifest(MANIFEST_SOURCE, i, validate_document(o)) for i, o in enumerate(objs)]
    except ObjectError as exc:   # a bug in the scenarios, named
        raise ConnectivityError(f"connectivity test object invalid: {exc}") from exc


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ConnectivityError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL_S)


async def settle(bus: Bus, timeout: float = SETTLE_TIMEOUT_S) -> None:
    """Wait until the policy service, then every agent, handled everything on the bus."""
    deadline = time.monotonic() + timeout

    async def until(what: str, consumer: ConsumerSpec, service: str, key: str) -> None:
        target = await bus.last_seq(consumer.filters)
        while True:
            stats = [r["stats"] for r in await collect_status(bus, SETTLE_COLLECT_S)
                     if r["service"] == service]
            if stats and all(s.get(key, 0) >= target for s in stats):
                return
            if time.monotonic() > deadline:
                raise ConnectivityError(f"timed out waiting for {what} (bus at {target})")
            await asyncio.sleep(POLL_S)

    await until("the policy service", POLICY_INPUTS, "policy", "seq")
    await until("the node agents", AGENT_INPUTS, "nodeagent", "realized")


@dataclass
class Runner:
    """One run against one lab: deploy, resolve the environment, run scenarios, clean up."""

    ctx: CliContext
    lab: str
    echo: Callable[[str], None]
    env: Env | None = None
    unsettled: bool = False     # a policy was deleted and its removal not yet waited for

    # -- deployment --------------------------------------------------------------------------

    def deploy(self) -> None:
        """Deploy the test namespace (and kube-dns if missing); wait until it is realized."""
        state = load_lab(self.lab)
        plan = state.plan
        self.nodes = [n.name for n in plan.nodes]
        self.node_ips = [str(n.node_ip) for n in plan.nodes]
        self.external_netns = plan.external_netns
        self.kubelet = Kubelet(self.lab)
        self.objects = _manifests(objects(self.nodes))
        self.cleanup(quiet=True)     # what an interrupted earlier run left behind
        if len(self.nodes) == 1:
            self.echo("\u2139\ufe0f  Single-node environment detected, cross-node tests "
                      "will be skipped")
        self.echo(f"✨ [{NAMESPACE}] Deploying {len(PODS)} pods and {len(SERVICES)} services "
                  f"on lab {self.lab} ({len(self.nodes)} node(s))...")
        view = self.ctx.run(read_view)
        if KUBE_DNS_REF not in view.ids:
            self.echo(f"✨ [kube-system] Deploying cluster DNS ({KUBE_DNS.name}); it stays "
                      "in place")
            dns = load([str(KUBE_DNS)])
            self.ctx.run(lambda bus: source.apply(bus, dns, self.kubelet), role=SOURCE)
        self.ctx.run(lambda bus: source.apply(bus, self.objects, self.kubelet), role=SOURCE)
        self.echo(f"⌛ [{NAMESPACE}] Waiting for identities, services and policy to be "
                  "realized...")
        self.env = self._wait_ready()

    def _wait_ready(self) -> Env:
        pods = {p["metadata"]["name"]: str(p["status"]["podIP"])
                for p in self.kubelet.list_pods(NAMESPACE)}
        if set(pods) != set(PODS):
            raise ConnectivityError(f"pods of {NAMESPACE}: expected {sorted(PODS)}, "
                                    f"got {sorted(pods)}")

        async def ipcache(bus: Bus) -> set[str]:
            snap = await bus.snapshot([IPCACHE_FILTER])
            return {p.prefix.split("/")[0] for d in snap.values()
                    if isinstance(p := d.event.payload, IpcacheUpsert)}

        _wait("pod identities in the ipcache",
              lambda: set(pods.values()) <= self.ctx.run(ipcache), READY_TIMEOUT_S)
        refs = [f"{NAMESPACE}/{s}" for s in SERVICES] + [KUBE_DNS_REF]
        found: dict[str, ServiceRecord] = {}

        def services_known() -> bool:
            view = self.ctx.run(read_view)
            found.clear()
            found.update({r: view.services[view.ids[r]] for r in refs if r in view.ids})
            return len(found) == len(refs)

        lb_running = any(r["service"] == "lb" and r["state"] == STATE_OK
                         for r in self.ctx.run(collect_status))
        if lb_running:
            _wait("the test services from the lb service", services_known, READY_TIMEOUT_S)
            frontends = {(str(svc.cluster_ip), port.port)
                         for svc in found.values() for port in svc.ports}
            _wait("service frontends in every node's maps",
                  lambda: all(frontends <= self._kernel_frontends(n) for n in self.nodes),
                  READY_TIMEOUT_S)
        else:   # the scenarios that need Services fail, each saying why
            services_known()
            self.echo("⚠️  no lb service answers: service, NodePort and DNS tests will fail")
        self.ctx.run(settle)
        ours = {s: found[f"{NAMESPACE}/{s}"] for s in SERVICES if f"{NAMESPACE}/{s}" in found}
        return Env(pod_ips=pods,
                   cluster_ips={s: str(svc.cluster_ip) for s, svc in ours.items()},
                   node_ports={s: svc.ports[0].node_port for s, svc in ours.items()},
                   node_ips=self.node_ips, world_ips=[str(ip) for ip in WORLD_IPS],
                   nodes=len(self.nodes))

    @staticmethod
    def _kernel_frontends(node: str) -> set[tuple[str, int]]:
        try:
            with LbMaps(node) as maps:
                return {(fe.address, fe.port) for fe, entry in maps.service_entries().items()
                        if entry.size_int}
        except (DatapathError, OSError):
            return set()

    def cleanup(self, quiet: bool = False) -> None:
        """Delete the scenarios' policies and the test namespace's objects (only those)."""
        policies = _manifests([p for s in SCENARIOS for p in s.policies])
        items = list(reversed(self.objects)) + policies
        outcomes = self.ctx.run(lambda bus: source.delete(bus, items, self.kubelet), role=SOURCE)
        gone = [o for o in outcomes if o.result == source.DELETED]
        for pod in self.kubelet.list_pods(NAMESPACE):   # pods the bus no longer knew
            self.kubelet.delete_pod(NAMESPACE, pod["metadata"]["name"])
        if not quiet:
            self.echo(f"🧹 [{NAMESPACE}] Removed {len(gone)} objects of namespace {NAMESPACE}")

    # -- scenarios ---------------------------------------------------------------------------

    def run(self, scenario: Scenario) -> ScenarioResult:
        """Apply the scenario's policies, run its checks in parallel, confirm the drops in the
        flow events, remove the policies."""
        assert self.env is not None
        started = time.monotonic()
        checks = [c for c in scenario.checks if c.node < self.env.nodes]
        if self.env.nodes < scenario.min_nodes or not checks:
            return ScenarioResult(scenario.name, [], 0.0,
                                  skipped=f"needs {scenario.min_nodes} nodes")
        policies = _manifests(list(scenario.policies))
        error = ""
        results: list[CheckResult] = []
        try:
            if policies:
                self.ctx.run(lambda bus: source.apply(bus, policies), role=SOURCE)
            if policies or self.unsettled:   # one wait covers the last removal and this apply
                self.ctx.run(settle)
                self.unsettled = False
            since = time.time()
            with ThreadPoolExecutor(len(checks)) as pool:
                results = list(pool.map(self._check, checks))
            self._confirm_drops(results, since)
        except CiliaError as exc:
            error = str(exc)
        finally:
            if policies:
                self.ctx.run(lambda bus: source.delete(bus, policies), role=SOURCE)
                self.unsettled = True
        return ScenarioResult(scenario.name, results, time.monotonic() - started, error=error)

    def _exec(self, src: str, argv: list[str], timeout: float) -> tuple[int, str]:
        try:
            if src == EXTERNAL:
                proc = exec_in_netns(self.external_netns, argv, timeout=timeout + EXEC_GRACE_S)
            else:
                proc = exec_in_pod(src, argv, namespace=NAMESPACE, lab=self.lab, capture=True,
                                   timeout=timeout + EXEC_GRACE_S)
        except subprocess.TimeoutExpired:
            return EXEC_TIMEOUT, f"no answer in {timeout + EXEC_GRACE_S:.0f}s (killed)"
        out = (proc.stdout or b"").decode(errors="replace").strip()
        err = (proc.stderr or b"").decode(errors="replace").strip()
        return proc.returncode, out or (err.splitlines()[-1] if err else "")

    def _check(self, check: Check) -> CheckResult:
        started = time.monotonic()
        try:
            return self._probe(check, started)
        except KeyError as exc:   # an address the deployment does not have
            what = exc.args[0] if exc.args else check.target
            return CheckResult(check, False, f"no address for {what}",
                               "the lb service has not published this Service")

    def _probe(self, check: Check, started: float) -> CheckResult:
        assert self.env is not None
        if check.kind == LOOKUP:
            code, out = self._exec(check.src, [sys.executable, "-m", "services.dns", "lookup",
                                               check.target, "--timeout",
                                               str(PASS_TIMEOUT_S)], PASS_TIMEOUT_S)
            if check.expect == NXDOMAIN:
                ok = out == "NXDOMAIN"
            else:
                ok = code == 0 and out == self.env.address(check.want)
            return CheckResult(check, ok, out.replace("\n", ",") or f"exit {code}",
                               seconds=time.monotonic() - started)
        timeout = DROP_TIMEOUT_S if check.expect == DROP else PASS_TIMEOUT_S
        if check.kind == HTTP:
            code, out = self._exec(check.src, [sys.executable, "-c", HTTP_GET,
                                               self.env.address(check.target),
                                               str(self.env.port(check)), str(timeout)], timeout)
            return CheckResult(check, code == 0 and out == check.want, out or f"exit {code}",
                               seconds=time.monotonic() - started)
        argv = [CONNECT, self.env.address(check.target), str(self.env.port(check)),
                "--timeout", str(timeout)] + (["--udp"] if check.udp else [])
        code, out = self._exec(check.src, argv, timeout)
        ok = code == 0 if check.expect == PASS else out == "timeout"
        return CheckResult(check, ok, out or f"exit {code}", seconds=time.monotonic() - started)

    def _flow_dst(self, check: Check) -> tuple[str, int]:
        """Where a dropped connection's flow goes (a Service's flow names its backend)."""
        assert self.env is not None
        kind, _, name = check.target.partition(":")
        if kind in ("svc", "nodeport"):
            return self.env.pod_ips[name.rsplit(":", 1)[-1]], check.port
        return self.env.address(check.target), check.port

    def _confirm_drops(self, results: list[CheckResult], since: float) -> None:
        """A connection that timed out as expected passes only if its drop is a flow event."""
        assert self.env is not None
        pending = [r for r in results if r.ok and r.check.expect == DROP]
        deadline = time.monotonic() + FLOW_WAIT_S
        while pending:
            flows = [f for f in self.ctx.run(recent_flows)
                     if f["verdict"] == "DROPPED" and f["time"] >= since - 1]
            for r in list(pending):
                src_ip = self.env.pod_ips.get(r.check.src, "")
                dst_ip, port = self._flow_dst(r.check)
                match = [f for f in flows if f["src_ip"] == src_ip and f["dst_ip"] == dst_ip
                         and f["dst_port"] == port]
                if match:
                    r.detail = f"dropped: {match[-1]['reason_name']}"
                    pending.remove(r)
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(POLL_S * 3)
        for r in pending:
            r.ok = False
            r.outcome = "timeout, but no drop in the flow events"


def run_connectivity(ctx: CliContext, lab: str, patterns: Sequence[str],
                     echo: Callable[[str], None]) -> list[ScenarioResult]:
    """Deploy, run the selected scenarios, clean up (also on failure); returns the results.

    Raises:
        ConnectivityError: the deployment did not become ready (it is cleaned up).
        ValueError: an invalid ``--test`` pattern.
    """
    chosen = select(SCENARIOS, patterns)
    runner = Runner(ctx, lab, echo)
    results: list[ScenarioResult] = []
    try:
        runner.deploy()
        echo(f"🏃 Running {len(chosen)} tests...")
        for i, scenario in enumerate(chosen, 1):
            echo(f"[=] Test [{scenario.name}] [{i}/{len(chosen)}]")
            result = runner.run(scenario)
            results.append(result)
            for line in render_result(result):
                echo(line)
    finally:
        if hasattr(runner, "objects"):
            runner.cleanup()
    return results


@click.group("connectivity")
def connectivity_group() -> None:
    """Connectivity checks of the cluster (like `cilium connectivity`)."""


@connectivity_group.command("test")
@click.option("--test", "patterns", multiple=True, metavar="PATTERN",
              help="run only tests whose name matches (regex; '!' excludes; repeatable)")
@click.option("--lab", default=None, help="lab name (default $CILIA_LAB or the lab that is up)")
@output_option
@pass_ctx
def connectivity_test(ctx: CliContext, patterns: tuple[str, ...], lab: str | None,
                      output: str) -> None:
    """Deploy cilia-test, run real connections (pass and drop), report, clean up."""
    name = current_lab(lab)
    if name is None:
        raise click.ClickException("no lab is up (cilia lab up)")
    as_json = output == "json"

    def echo(line: str) -> None:
        click.echo(line, err=as_json)

    try:
        select(SCENARIOS, patterns)
        results = run_connectivity(ctx, name, patterns, echo)
    except (CiliaError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        print_json({"lab": name, "namespace": NAMESPACE,
                    "tests": [r.to_json() for r in results], "summary": summary(results)})
    else:
        for line in render_summary(results):
            click.echo(line)
    if summary(results)["failed"]:
        sys.exit(1)
