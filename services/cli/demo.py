"""``cilia demo``: the whole story in one command, from nothing, and back to nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import yaml
from tabulate import tabulate

from services.cli import controlplane, manifests, source
from services.cli._context import CliContext, pass_ctx
from services.cli.agentcli import (
    endpoint_rows,
    format_flow,
    metrics_rows,
    recent_flows,
    render_metrics,
)
from services.cli.connectivity import run_connectivity
from services.cli.connectivity_checks import render_summary, summary
from services.cli.endpointcli import endpoint_details
from services.cli.fqdn import cache_rows, format_cache, learned_names
from services.cli.identity import format_identities, list_identities
from services.cli.labcli import start_lab
from services.cli.service import read_view, render_services, service_rows
from services.cli.status import read_status, render
from services.common.bus import NATS_URL_ENV, Bus
from services.common.contract import FLOW_TYPE_DNS, PolicyEvent, policy_rules_subject
from services.common.embedded import free_port
from services.common.errors import CiliaError, PermissionDenied
from services.common.paths import STATE_DIR_ENV
from services.common.roles import SOURCE, agent_role
from services.lab import Kubelet, exec_in_netns, exec_in_pod, load_lab
from services.lab import down as lab_down
from services.policy.compiler import SubjectPolicy

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
THREE_TIER = EXAMPLES / "three-tier"
# examples/three-tier/ without its policy (applied after the first verdict matrix); the whole
# folder at once is `cilia apply -f examples/three-tier/`.
APP_FILES = ("00-namespace.yaml", "deployments.yaml", "services.yaml", "frontend-nodeport.yaml")
NODE_PORT = 30080
LAB = "demo"
K8S_LAB = "demok8s"     # the lab on a Kubernetes API server
NS = "production"
WAIT_S = 30.0
PROBE_TIMEOUT_S = 1.0
# (source app, destination app, port) pairs of the verdict matrix.
PAIRS = [("frontend", "backend", 8080), ("frontend", "database", 5432),
         ("backend", "database", 5432), ("backend", "frontend", 80),
         ("database", "frontend", 80), ("database", "backend", 8080)]
CONNECT = str(Path(sys.executable).parent / "cilia-connect")
SPOOF = EXAMPLES / "fail-closed" / "spoofed-pod.yaml"
SPOOF_NS, SPOOF_POD = "intruder", "spoof"
FQDN_POD = "external-client"      # examples/fqdn/
BACKEND_PORT = 8080
# the short connectivity run at the end (the whole suite: `cilia connectivity test`)
CONNECTIVITY_TESTS = ("^pod-to-", "external-to-nodeport", "dns", "^client-egress$",
                      "to-entities-world")


def step(text: str) -> None:
    click.secho(f"==> {text}", bold=True)


def _wait(what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise CiliaError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _apps(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for r in rows:
        for lbl in r["labels"]:
            if lbl.startswith("k8s:app=") and r["pod"].startswith(f"{NS}/"):
                out[lbl.split("=", 1)[1]] = r
    return out


def _probe(src: str, dst_ip: str, port: int, lab: str = LAB) -> bool:
    proc = exec_in_pod(f"deploy/{src}", [CONNECT, dst_ip, str(port), "--timeout",
                                         str(PROBE_TIMEOUT_S)],
                       namespace=NS, lab=lab, capture=True, timeout=30)
    return proc.returncode == 0


def verdict_matrix(eps: dict[str, dict[str, Any]], lab: str = LAB) -> str:
    """Real connections for every pair, as a table with identities."""
    with ThreadPoolExecutor(len(PAIRS)) as pool:
        results = list(pool.map(lambda p: _probe(p[0], eps[p[1]]["ipv4"], p[2], lab), PAIRS))
    rows = [[f"{s} ({eps[s]['identity']})", f"{d}:{port} ({eps[d]['identity']})",
             "ALLOWED" if ok else "DENIED"] for (s, d, port), ok in zip(PAIRS, results,
                                                                      strict=True)]
    return tabulate(rows, headers=["FROM (IDENTITY)", "TO (IDENTITY)", "VERDICT"],
                    tablefmt="simple")


def fail_closed(ctx: CliContext, runtime: Kubelet, eps: dict[str, dict[str, Any]]) -> None:
    """A forged pod and a forged bus message, both refused; the kernel's drop counters."""
    step("fail closed: a pod in namespace intruder claims production's frontend labels")
    spoof = manifests.load([str(SPOOF)])
    for outcome in ctx.run(lambda bus: source.apply(bus, spoof, runtime), role=SOURCE):
        click.echo(f"    {outcome}")
    backend = eps["backend"]
    proc = exec_in_pod(SPOOF_POD, [CONNECT, backend["ipv4"], str(BACKEND_PORT), "--timeout",
                                   str(PROBE_TIMEOUT_S)],
                       namespace=SPOOF_NS, lab=LAB, capture=True, timeout=30)
    verdict = "ALLOWED" if proc.returncode == 0 else "DENIED"
    click.echo(f"    {SPOOF_NS}/{SPOOF_POD} -> backend:{BACKEND_PORT} {verdict}")
    for ep in endpoint_details(ctx, f"{SPOOF_NS}/{SPOOF_POD}", None):
        dropped = ep["status"]["labels"]["dropped"]
        click.echo(f"    cilia endpoint get {SPOOF_NS}/{SPOOF_POD}: identity "
                   f"{ep['status']['identity']['id']}, dropped labels:")
        for d in dropped:
            click.echo(f"      {d['key']}={d['value']}  ({d['reason']})")
    node = load_lab(LAB).plan.nodes[0].name
    step(f"fail closed: node {node}'s agent tries to open the backend's policy on the bus")

    async def forge(bus: Bus) -> str:
        rules = SubjectPolicy(backend["identity"]).to_dict() | {"revision": 1}
        try:
            await bus.publish(policy_rules_subject(backend["identity"]), PolicyEvent.RULES,
                              rules, msg_id=f"demo-forged/{time.time_ns()}")
        except PermissionDenied as exc:
            return f"refused: {exc}"
        return "stored (the bus has no authorization!)"

    click.echo("    " + ctx.run(forge, "cilia-demo-forger", role=agent_role(node)))
    step("cilia bpf metrics list  (drops by reason, from the kernel)")
    rows = [r for r in metrics_rows(ctx, None) if r["verdict"] == "DROPPED"]
    for line in render_metrics(rows).splitlines():
        click.echo(f"    {line}")


def _curl(url: str) -> str:
    proc = exec_in_pod(FQDN_POD, ["curl", "-s", "-m", "3", "-w", " %{http_code}", url],
                       namespace="default", lab=LAB, capture=True, timeout=60)
    if proc.returncode == 0:
        return " ".join(proc.stdout.decode().split())
    return {6: "not resolved (curl exit 6)",
            28: "dropped (curl exit 28)"}.get(proc.returncode, f"curl exit {proc.returncode}")


def exercise_2(ctx: CliContext, runtime: Kubelet) -> None:
    """The seed's Exercise 2: toFQDNs through the node's DNS proxy."""
    step("cilia apply -f examples/kube-dns/ -f examples/fqdn/  (the seed's Exercise 2: "
         "app=external-client reaches only api.example.com)")
    items = manifests.load([str(EXAMPLES / "kube-dns"), str(EXAMPLES / "fqdn")])
    for outcome in ctx.run(lambda bus: source.apply(bus, items, runtime), role=SOURCE):
        click.echo(f"    {outcome}")
    _wait("the client enforced", lambda: any(
        r["pod"] == f"default/{FQDN_POD}" and r["egress_enforcement"]
        for r in endpoint_rows(ctx, None)))
    for url in ("http://api.example.com/", "http://www.example.com/", "http://203.0.113.21/"):
        click.echo(f"    cilia exec {FQDN_POD} -- curl {url}  ->  {_curl(url)}")
    step("cilia fqdn cache list")
    click.echo(format_cache(cache_rows(ctx.run(learned_names))))
    step("cilia observe --type dns  (the last answers of the pod's lookup)")
    dns = [f for f in ctx.run(recent_flows) if f.get("type") == FLOW_TYPE_DNS
           and f["src_pod"] == f"default/{FQDN_POD}"]
    for f in dns[-3:]:
        click.echo(f"    {format_flow(f)}")


def _k8s_post(url: str, token: str, obj: dict[str, Any]) -> None:
    """POST one object to the API server, as kubectl create does."""
    group, _, version = obj["apiVersion"].rpartition("/")
    plural = {"Namespace": "namespaces", "Deployment": "deployments", "Service": "services",
              "CiliumNetworkPolicy": "ciliumnetworkpolicies"}[obj["kind"]]
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    ns = obj["metadata"].get("namespace")
    path = f"{base}/namespaces/{ns}/{plural}" if ns and plural != "namespaces" \
        else f"{base}/{plural}"
    req = urllib.request.Request(url + path, data=json.dumps(obj).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10):
        pass


def _k8s_get(url: str, token: str, path: str) -> dict[str, Any]:
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def kubernetes_source(ctx: CliContext) -> None:
    """Exercise 1 again, written to a Kubernetes API server instead of `cilia apply`.

    There is no cluster here: the project's test API server (``tests/support/k8sapi``, the real
    wire protocol) stands in for one, in a process of its own. A second control plane and a
    1-node lab run on it (``lab up --k8s-api``): the lab's kubelet, scheduler and Deployment
    controller work from the API, and cilia's watcher is the bus's only source."""
    k8s_ctx = CliContext(None, ctx.state_dir / "k8s")
    k8s_ctx.state_dir.mkdir(parents=True, exist_ok=True)
    kubeconfig = k8s_ctx.state_dir / "kubeconfig"
    step("Kubernetes as the source: a Kubernetes API server (the project's test server, "
         "standing in for a cluster) and cilia lab up --k8s-api URL --kubeconfig FILE")
    server = subprocess.Popen([sys.executable, "-m", "tests.support.k8sapi", "--kubeconfig",
                               str(kubeconfig)], cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().decode().strip()
        token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
        k8s_ctx.explicit_url = controlplane.up(k8s_ctx.state_dir, None,
                                               port=free_port())["nats_url"]
        for line in start_lab(k8s_ctx, K8S_LAB, 1, k8s_api=url, kubeconfig=str(kubeconfig)):
            click.echo(f"    {line}")
        step("POST examples/three-tier (namespace, deployments, services, policy) to the API "
             "server, as kubectl create -f does")
        docs = [d for f in ("00-namespace.yaml", "deployments.yaml", "services.yaml",
                            "policy.yaml")
                for d in yaml.safe_load_all((THREE_TIER / f).read_text()) if d]
        for doc in docs:
            _k8s_post(url, token, doc)
            click.echo(f"    {doc['kind'].lower()}/{doc['metadata']['name']} created")
        def running() -> list[dict[str, Any]]:
            pods = _k8s_get(url, token, f"/api/v1/namespaces/{NS}/pods")["items"]
            return [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]

        _wait("three pods running, their policy in the kernel", lambda: len(running()) == 3
              and sum(r["ingress_enforcement"] for r in endpoint_rows(k8s_ctx, None)
                      if r["pod"].startswith(f"{NS}/")) >= 2, timeout=60)
        step("the pods as the API server holds them (scheduled, run and reported by the lab)")
        click.echo(tabulate([[p["metadata"]["name"], p["spec"].get("nodeName"),
                              p["status"].get("podIP"), p["status"].get("phase")]
                             for p in running()], headers=["NAME", "NODE", "IP", "STATUS"],
                            tablefmt="plain"))
        step("verdict matrix (real connections), every object from the watcher")
        click.echo(verdict_matrix(_apps(endpoint_rows(k8s_ctx, None)), K8S_LAB))
    finally:
        step("cleaning up: the lab on the API server, its control plane, the API server")
        asyncio.set_event_loop(None)
        with contextlib.suppress(CiliaError):
            lab_down(K8S_LAB)
        controlplane.down(k8s_ctx.state_dir, purge=True)
        server.terminate()
        server.wait(timeout=30)


@click.command()
@click.option("--keep", is_flag=True, help="leave everything running for exploring")
@click.option("--nodes", default=2, show_default=True, type=click.IntRange(1, 8))
@pass_ctx
def demo(ctx: CliContext, keep: bool, nodes: int) -> None:
    """From nothing: bus, services, a lab, the seed's three-tier app and its policy."""
    started = time.monotonic()
    failed: list[str] = []
    demo_ctx = CliContext(None, ctx.state_dir / "demo")
    os.environ[STATE_DIR_ENV] = str(demo_ctx.state_dir)
    step("starting the control plane (embedded NATS JetStream + services)")
    state = controlplane.up(demo_ctx.state_dir, None, port=free_port())
    url = state["nats_url"]
    os.environ[NATS_URL_ENV] = url
    demo_ctx.explicit_url = url
    try:
        click.echo("    NATS " + url + "; " + ", ".join(
            f"{p['name']} pid {p['pid']}" for p in state["processes"]))
        step(f"cilia lab up --nodes {nodes}")
        for line in start_lab(demo_ctx, LAB, nodes):
            click.echo(f"    {line}")
        node_ips = [str(n.node_ip) for n in load_lab(LAB).plan.nodes]
        runtime = Kubelet(LAB)
        step("cilia apply " + " ".join(f"-f examples/three-tier/{f}" for f in APP_FILES)
             + "  (all but the policy)")
        app = manifests.load([str(THREE_TIER / f) for f in APP_FILES])
        for outcome in demo_ctx.run(lambda bus: source.apply(bus, app, runtime), role=SOURCE):
            click.echo(f"    {outcome}")
        _wait("endpoints with identities", lambda: len(
            [r for r in endpoint_rows(demo_ctx, None) if r["identity"] >= 256]) >= 3)
        step("cilia identity list")
        click.echo(format_identities(demo_ctx.run(list_identities)))
        eps = _apps(endpoint_rows(demo_ctx, None))
        step("verdict matrix without policy (real connections)")
        click.echo(verdict_matrix(eps))
        step("cilia apply -f examples/three-tier/policy.yaml  (the seed's Exercise 1; "
             "the whole folder is applied now)")
        pol = manifests.load([str(THREE_TIER / "policy.yaml")])
        for outcome in demo_ctx.run(lambda bus: source.apply(bus, pol), role=SOURCE):
            click.echo(f"    {outcome}")
        _wait("policy in the kernel", lambda: sum(
            r["ingress_enforcement"] for r in endpoint_rows(demo_ctx, None)) >= 2)
        eps = _apps(endpoint_rows(demo_ctx, None))
        step("verdict matrix with the policy (real connections)")
        click.echo(verdict_matrix(eps))
        step("cilia service list")
        click.echo(render_services(service_rows(demo_ctx.run(read_view))))
        step(f"from the external host (outside the cluster) to NodePort {NODE_PORT} on each node")
        for node_ip in node_ips:
            proc = exec_in_netns(f"cilia-{LAB}-external",
                                 [CONNECT, node_ip, str(NODE_PORT), "--timeout", "2"],
                                 capture=True, timeout=30)
            click.echo(f"    {node_ip}:{NODE_PORT} -> {proc.stdout.decode().strip()}")
        fail_closed(demo_ctx, runtime, eps)
        exercise_2(demo_ctx, runtime)
        step("cilia observe --verdict DROPPED")

        async def drops(bus: Bus) -> list[dict[str, Any]]:
            return [f for f in await recent_flows(bus) if f["verdict"] == "DROPPED"]

        for f in demo_ctx.run(drops)[-4:]:
            click.echo(f"    {format_flow(f)}")
        step("cilia connectivity test --test " + " --test ".join(CONNECTIVITY_TESTS))
        results = run_connectivity(demo_ctx, LAB, CONNECTIVITY_TESTS,
                                   lambda line: click.echo(f"    {line}"))
        for line in render_summary(results)[1:]:
            click.echo(f"    {line}")
        failed = summary(results)["failed_tests"]
        step("cilia status")
        click.echo(render(*read_status(demo_ctx, WAIT_S)))
        kubernetes_source(demo_ctx)
        click.echo(f"\ndone in {time.monotonic() - started:.1f}s")
    finally:
        if keep:
            click.echo(f"left running: export CILIA_STATE_DIR={demo_ctx.state_dir} "
                       f"CILIA_NATS_URL={url} CILIA_LAB={LAB}; cilia lab down --name {LAB}; "
                       "cilia down")
        else:
            step("cleaning up: cilia lab down, cilia down")
            asyncio.set_event_loop(None)
            lab_down(LAB)
            controlplane.down(demo_ctx.state_dir, purge=True)
    if failed:
        raise click.ClickException(f"connectivity tests failed: {', '.join(failed)}")
