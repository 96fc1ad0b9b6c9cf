"""``cilia lab up|down|status``: the embedded cluster, wired to the control plane."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import click
import yaml
from tabulate import tabulate

from services.cli import controlplane
from services.cli._context import CliContext, pass_ctx
from services.common.bus import NATS_URL_ENV, Bus, Outgoing
from services.common.buscreds import Credentials
from services.common.contract import KIND_NODE, KIND_POD, ObjectDelete, ObjectEvent, source_subject
from services.common.errors import CiliaError
from services.common.paths import read_json
from services.common.roles import CLI, SOURCE, agent_role
from services.common.world import DEFAULT_WORLD, World, WorldError, world
from services.lab import DEFAULT_LAB, Kubelet, LabError, exec_in_pod, list_labs, load_lab
from services.lab import down as lab_down
from services.lab import up as lab_up
from services.lab.plan import plan_lab
from services.lab.state import lab_dir
from services.lab.topology import K8sSource
from services.nodeagent.lbstate import LB_MODE_ENV

AGENT_MODULE = "services.nodeagent"
LAB_ENV = "CILIA_LAB"
AGENT_READY_S = 60.0


BUS_FILE = "bus.json"        # which bus a lab's agents were started against


def lab_bus(name: str) -> str | None:
    try:
        url = json.loads((lab_dir(name) / BUS_FILE).read_text()).get("nats_url")
    except (OSError, ValueError):
        return None
    return str(url) if url else None


def current_lab(explicit: str | None = None, url: str | None = None) -> str | None:
    """The lab `apply` runs pods in: --lab or $CILIA_LAB, else the default lab or the only one
    up; with ``url``, only a lab whose agents use that bus (a lab belongs to one cluster)."""
    name = explicit or os.environ.get(LAB_ENV)
    labs = [n for n in list_labs() if url is None or lab_bus(n) == url]
    if name:
        return name if name in labs else None
    if DEFAULT_LAB in labs:
        return DEFAULT_LAB
    return labs[0] if len(labs) == 1 else None


def runtime_for(ctx: CliContext, explicit: str | None = None) -> Kubelet | None:
    """The lab kubelet for objects applied to ``ctx``'s bus, if a lab runs on that bus."""
    lab = current_lab(explicit, ctx.url())
    return Kubelet(lab) if lab else None


def start_lab(ctx: CliContext, name: str, nodes: int, routing: str = "native",
              names: World = DEFAULT_WORLD, k8s_api: str | None = None,
              kubeconfig: str | None = None) -> list[str]:
    """Bring the control plane up if it is not, then the lab with one agent per node.

    ``routing`` is ``native`` or ``tunnel`` (VXLAN, the source identity in the VNI);
    ``names``: the lab's world (the external host's names, served by the cluster DNS);
    ``k8s_api``/``kubeconfig``: run the lab as nodes of that Kubernetes API server, with
    cilia's watcher as the source of every object.
    """
    if ctx.explicit_url is None and read_json(ctx.control_plane_file) is None:
        controlplane.up(ctx.state_dir, None)
    url = ctx.url()
    os.environ[NATS_URL_ENV] = url          # the agents inherit it
    access = ctx.access()
    try:
        plan = plan_lab(name, nodes, routing)
        # each agent connects as its own node's role (added to the embedded bus if new)
        controlplane.add_node_roles(ctx.state_dir, url, access, [n.name for n in plan.nodes])
        source = None
        if k8s_api or kubeconfig:
            source = K8sSource(kubeconfig=lab_kubeconfig(name, kubeconfig, k8s_api),
                               watcher_env=controlplane.role_env(url, access, SOURCE))
        state = lab_up(name, nodes, agent_module=AGENT_MODULE, routing=routing,
                       agent_env=lambda node: controlplane.role_env(url, access,
                                                                    agent_role(node)),
                       world=names, k8s=source)
    except LabError as exc:
        raise CiliaError(str(exc)) from exc
    (lab_dir(name) / BUS_FILE).write_text(json.dumps({"nats_url": url}))
    asyncio.run(controlplane.wait_ready(url, {"nodeagent": nodes}, AGENT_READY_S,
                                        creds=ctx.credentials(CLI)))
    lines = [f"node {n.name}: {n.node_ip}, pods {n.pod_cidr} (netns {n.netns})"
             for n in state.plan.nodes] + [f"routing: {routing}", *world_lines(names)]
    if source is not None:
        lines.append(f"Kubernetes API: {k8s_api or 'from ' + str(kubeconfig)} (the lab's "
                     "nodes are registered there; cilia's watcher is the source)")
    return lines


def default_kubeconfig() -> str:
    """``$KUBECONFIG`` (its first file) or ``~/.kube/config``, as kubectl finds it."""
    found = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    return found or str(Path.home() / ".kube" / "config")


def lab_kubeconfig(lab: str, kubeconfig: str | None, server: str | None) -> str:
    """The kubeconfig the lab's processes use: the given one (or the default), its current
    context's cluster pointed at ``server`` when given, kept in the lab's directory.

    Raises:
        CiliaError: the kubeconfig is missing or has no current context.
    """
    path = Path(kubeconfig or default_kubeconfig())
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        context = next(c["context"] for c in doc["contexts"]
                       if c["name"] == doc["current-context"])
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])
    except (OSError, yaml.YAMLError, KeyError, StopIteration, TypeError) as exc:
        raise CiliaError(f"kubeconfig {path}: no usable current context ({exc})") from None
    if server:
        cluster["server"] = server
    out = lab_dir(lab) / "kubeconfig"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(doc), encoding="utf-8")
    out.chmod(0o600)
    return str(out)


def world_lines(names: World) -> list[str]:
    """The lab's external names, as ``lab up`` prints them."""
    lines = [f"external name: {n} -> {', '.join(str(ip) for ip in ips)}"
             for n, ips in sorted(names.names.items())]
    return lines + [f"external name: {a} -> CNAME {t}" for a, t in sorted(names.cnames.items())]


@click.group("lab")
def lab_group() -> None:
    """The embedded cluster: nodes are network namespaces on this machine."""


@lab_group.command("up")
@click.option("--nodes", default=2, show_default=True, type=click.IntRange(1, 50))
@click.option("--name", default=DEFAULT_LAB, show_default=True)
@click.option("--lb-mode", type=click.Choice(["snat", "dsr"]), default="snat", show_default=True,
              help="how NodePort traffic from outside reaches remote backends (Cilium's "
                   "loadBalancer.mode)")
@click.option("--routing", type=click.Choice(["native", "tunnel"]), default="native",
              show_default=True,
              help="cross-node pod traffic: native routes via the node addresses, or a VXLAN "
                   "tunnel carrying the source identity in the VNI")
@click.option("--external-name", "external_names", multiple=True, metavar="NAME=IP",
              help="a name the lab's DNS resolves to IP, where the external host answers "
                   "(IP in 203.0.113.0/24 or 198.51.100.0/24; NAME may be *.domain; "
                   "repeat for more names or addresses)")
@click.option("--external-cname", "external_cnames", multiple=True, metavar="ALIAS=TARGET",
              help="a CNAME in the lab's world (repeatable)")
@click.option("--k8s-api", default=None, metavar="URL",
              help="run the lab as nodes of this Kubernetes API server (credentials from "
                   "--kubeconfig): cilia's watcher reads every object from it")
@click.option("--kubeconfig", default=None, type=click.Path(exists=True, dir_okay=False),
              help="the kubeconfig of --k8s-api (default $KUBECONFIG, ~/.kube/config)")
@pass_ctx
def up_command(ctx: CliContext, nodes: int, name: str, lb_mode: str, routing: str,
               external_names: tuple[str, ...], external_cnames: tuple[str, ...],
               k8s_api: str | None, kubeconfig: str | None) -> None:
    """Create the lab (and start the control plane if it is not running)."""
    try:
        names = world(external_names, external_cnames)
    except WorldError as exc:
        raise click.BadParameter(str(exc)) from exc
    os.environ[LB_MODE_ENV] = lb_mode        # the agents inherit it
    try:
        for line in start_lab(ctx, name, nodes, routing, names, k8s_api, kubeconfig):
            click.echo(line)
    except CiliaError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"lab {name} is up with {nodes} node(s)")


@lab_group.command("down")
@click.option("--name", default=DEFAULT_LAB, show_default=True)
@pass_ctx
def down_command(ctx: CliContext, name: str) -> None:
    """Remove every namespace, link, pinned map and process of the lab."""
    url = lab_bus(name)
    try:
        pods = Kubelet(name).list_pods() if name in list_labs() else []
        nodes = [n.name for n in load_lab(name).plan.nodes] if name in list_labs() else []
    except LabError:
        pods, nodes = [], []
    try:
        report = lab_down(name)
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"lab {name} is down: removed {len(report.netns)} namespaces, "
               f"stopped {len(report.processes)} processes, {len(report.pins)} pin dirs")
    if url and (pods or nodes):
        try:
            lab_ctx = CliContext(url, ctx.state_dir, ctx.explicit_access)
            gone = asyncio.run(_forget(url, lab_ctx.credentials(SOURCE), pods, nodes))
        except CiliaError as exc:
            click.echo(f"warning: the bus still lists the lab's pods and nodes: {exc}", err=True)
        else:
            click.echo(f"deleted {gone} pods and nodes from the bus")


async def _forget(url: str, creds: Credentials, pods: list[dict[str, Any]],
                  nodes: list[str]) -> int:
    """Tell the bus the lab's pods and nodes are gone, as a kubelet's node going away would."""
    bus = await Bus.connect(url, "cilia-lab", timeout=3.0, creds=creds)
    try:
        gone = [ObjectDelete(kind=KIND_POD, namespace=p["metadata"]["namespace"],
                             name=p["metadata"]["name"]) for p in pods]
        gone += [ObjectDelete(kind=KIND_NODE, namespace="", name=n) for n in nodes]
        items = [Outgoing(source_subject(o.kind, o.namespace, o.name), ObjectEvent.DELETE, o,
                          f"lab-down/{uuid.uuid4()}") for o in gone]
        await bus.publish_batch(items)
        return len(items)
    finally:
        await bus.close()


@lab_group.command("status")
def status_command() -> None:
    """Labs that are up."""
    labs = list_labs()
    click.echo(tabulate([[n] for n in labs], headers=["LAB"], tablefmt="plain")
               if labs else "no lab is up")


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--lab", default=None, help="lab name (default $CILIA_LAB or the lab that is up)")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(target: str, namespace: str, lab: str | None, command: tuple[str, ...]) -> None:
    """Run COMMAND inside a pod's network namespace (POD or deploy/NAME), like kubectl exec."""
    name = current_lab(lab)
    if name is None:
        raise click.ClickException("no lab is up (cilia lab up)")
    try:
        proc = exec_in_pod(target, list(command), namespace=namespace, lab=name)
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc
    raise SystemExit(proc.returncode)


__all__ = ["exec_command", "lab_group", "runtime_for", "start_lab"]
