"""Click commands for the lab, ready for ``cilia`` to mount (``cli.add_command(lab_group)``).

    cilia lab up [--name cilia] [--nodes N]
    cilia lab down [--name cilia]
    cilia lab status [--name cilia] [-o json]
    cilia exec POD|deploy/NAME [-n NS] [--lab cilia] -- CMD...

Also runnable alone: ``python -m services.lab up --nodes 2``.
"""

from __future__ import annotations

import json
import sys

import click
from tabulate import tabulate

from services.lab import netns as ns
from services.lab.errors import LabError
from services.lab.plan import EXTERNAL_IP, WORLD_IP
from services.lab.podexec import exec_in_pod
from services.lab.podspec import DEFAULT_NAMESPACE
from services.lab.state import list_labs, load_lab
from services.lab.topology import DEFAULT_LAB, down, up

name_option = click.option("--name", "lab", default=DEFAULT_LAB, show_default=True,
                           help="lab name (letters and digits)")


@click.group("lab", help="The embedded lab: nodes as network namespaces on one machine.")
def lab_group() -> None:
    pass


@lab_group.command("up", help=f"Create the lab: an underlay bridge 172.31.0.0/24, node i at "
                              f"172.31.0.(10+i) with pod CIDR 10.244.i.0/24, an external "
                              f"host at {EXTERNAL_IP} and {WORLD_IP}; one agent per node.")
@name_option
@click.option("--nodes", default=1, show_default=True, type=click.IntRange(1, 200))
def up_command(lab: str, nodes: int) -> None:
    try:
        state = up(lab, nodes)
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc
    for node in state.plan.nodes:
        click.echo(f"node {node.name}: {node.node_ip}, pods {node.pod_cidr} "
                   f"(netns {node.netns})")
    click.echo(f"lab {lab} is up")


@lab_group.command("down", help="Remove every namespace, link, pin, file and process of the lab.")
@name_option
def down_command(lab: str) -> None:
    try:
        report = down(lab)
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"lab {lab} is down: removed {len(report.netns)} namespaces, "
               f"stopped {len(report.processes)} processes, {len(report.pins)} pin dirs")


@lab_group.command("status", help="Nodes of the lab and their agents.")
@name_option
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def status_command(lab: str, output: str) -> None:
    try:
        state = load_lab(lab)
    except LabError as exc:
        others = ", ".join(list_labs()) or "none"
        raise click.ClickException(f"{exc} (labs up: {others})") from exc
    rows = []
    for node in state.plan.nodes:
        agent = state.agents.get(node.name)
        rows.append({"node": node.name, "nodeIP": str(node.node_ip),
                     "podCIDR": str(node.pod_cidr), "netns": node.netns,
                     "agent": (f"{agent.pid} running" if agent and ns.is_alive(agent)
                               else "down")})
    if output == "json":
        click.echo(json.dumps({"lab": lab, "status": state.status, "nodes": rows}, indent=2))
    else:
        click.echo(tabulate([list(r.values()) for r in rows],
                            headers=["NODE", "NODE IP", "POD CIDR", "NETNS", "AGENT"]))


@click.command("exec", context_settings={"ignore_unknown_options": True},
               help="Run a command inside a pod's network namespace, like kubectl exec.")
@click.argument("target")
@click.option("-n", "--namespace", default=DEFAULT_NAMESPACE, show_default=True)
@click.option("--lab", default=DEFAULT_LAB, show_default=True)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(target: str, namespace: str, lab: str, command: tuple[str, ...]) -> None:
    try:
        proc = exec_in_pod(target, list(command), namespace=namespace, lab=lab)
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(proc.returncode)
