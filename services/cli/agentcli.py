"""Node-level commands: ``endpoint list``, ``bpf <map> list`` for every map of the registry
that has a renderer, ``bpf policy get``, ``observe``.

Map contents are read from the kernel (the pinned maps under /sys/fs/bpf/cilia/<node>), so
they show what the datapath holds even while an agent is down. Names and labels come from the
bus. Each ``bpf <map> list`` command is the map module's renderer
(:class:`~services.nodeagent.datapath.maps.spec.Renderer`): its rows for ``-o json`` and its
table.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import click
from nats.aio.msg import Msg
from tabulate import tabulate

from services.cli._context import CliContext, output_option, pass_ctx, print_json
from services.common import control
from services.common.bus import Bus, Delivery
from services.common.codec import decode
from services.common.contract import (
    FLOW_TYPE_DNS,
    FLOW_TYPE_L3_L4,
    FLOWS_CONTROL,
    FLOWS_FILTER,
    IDENTITY_FILTER,
    IPCACHE_FILTER,
    KIND_NODE,
    IdentityUpsert,
    IpcacheUpsert,
    ObjectUpsert,
    flows_subject,
    source_filter,
)
from services.common.errors import CiliaError, CodecError
from services.common.identities import ID_INIT, RESERVED
from services.common.policytypes import ANY_PEER
from services.nodeagent.datapath import DatapathError, open_maps
from services.nodeagent.datapath.constants import PIN_ROOT
from services.nodeagent.datapath.maps import metrics, policy, registry
from services.nodeagent.datapath.maps.spec import MapSpec, Renderer, Row
from services.nodeagent.datapath.nodemaps import close_backend, pinned_factory

OBSERVE_COLLECT_S = 0.5


async def cluster_nodes(bus: Bus) -> list[str]:
    """The nodes registered on the bus (each agent publishes its Node object)."""
    snap = await bus.snapshot([source_filter(KIND_NODE)])
    return sorted(p.name for d in snap.values() if isinstance(p := d.event.payload, ObjectUpsert))


def nodes_with_maps(ctx: CliContext, node: str | None) -> list[str]:
    """``node``, or every node of the cluster whose maps are pinned on this machine."""
    if node:
        return [node]
    return [n for n in ctx.run(cluster_nodes) if (PIN_ROOT / n).is_dir()]


def _open(node: str) -> Any:
    try:
        return open_maps(node)
    except DatapathError as exc:
        raise click.ClickException(f"node {node}: {exc}") from exc


def names_of(snap: Mapping[str, Delivery]) -> tuple[dict[int, list[str]], dict[str, str]]:
    """identity -> labels, and pod IP -> namespace/name, from a snapshot of the identities
    and the ipcache (other events in it are left alone)."""
    payloads = [d.event.payload for d in snap.values()]
    labels = {p.id: sorted(p.labels) for p in payloads if isinstance(p, IdentityUpsert)}
    pods = {p.prefix.split("/")[0]: p.pod or "" for p in payloads
            if isinstance(p, IpcacheUpsert)}
    return labels, pods


async def _names(bus: Bus) -> tuple[dict[int, list[str]], dict[str, str]]:
    """identity -> labels, and pod IP -> namespace/name, from the bus."""
    return names_of(await bus.snapshot([IDENTITY_FILTER, IPCACHE_FILTER]))


def _labels_of(labels: dict[int, list[str]], ident: int) -> list[str]:
    if ident in labels:
        return labels[ident]
    if ident in RESERVED:
        return [f"reserved:{RESERVED[ident]}"]
    return ["reserved:unknown"] if ident == ANY_PEER else [f"identity {ident}"]


def endpoint_rows(ctx: CliContext, node: str | None) -> list[dict[str, Any]]:
    labels, pods = ctx.run(_names)
    rows = []
    for name in nodes_with_maps(ctx, node):
        with _open(name) as maps:
            entries = maps.endpoints.entries()
        for ip, ep in sorted(entries.items(), key=lambda kv: kv[1].endpoint_id):
            rows.append({"node": name, "id": ep.endpoint_id, "identity": ep.identity,
                         "ingress_enforcement": ep.enforce_ingress,
                         "egress_enforcement": ep.enforce_egress, "ipv4": ip,
                         "pod": pods.get(ip, ""), "labels": _labels_of(labels, ep.identity),
                         # still at the init identity: its ADD waits (or it failed closed)
                         "status": "waiting-for-identity" if ep.identity == ID_INIT
                         else "ready"})
    return rows


@click.group("endpoint")
def endpoint_group() -> None:
    """Local endpoints of the nodes."""


@endpoint_group.command("list")
@click.option("--node", default=None, help="one node (default: every node on this machine)")
@output_option
@pass_ctx
def endpoint_list(ctx: CliContext, node: str | None, output: str) -> None:
    """List endpoints (like `cilium endpoint list`)."""
    rows = endpoint_rows(ctx, node)
    if output == "json":
        print_json(rows)
        return
    on = {True: "Enabled", False: "Disabled"}
    click.echo(tabulate(
        [[r["id"], on[r["ingress_enforcement"]], on[r["egress_enforcement"]], r["identity"],
          "\n".join(r["labels"]), r["ipv4"], r["status"], r["node"]] for r in rows],
        headers=["ENDPOINT", "POLICY (ingress)\nENFORCEMENT", "POLICY (egress)\nENFORCEMENT",
                 "IDENTITY", "LABELS (source:key[=value])", "IPv4", "STATUS", "NODE"],
        tablefmt="plain", disable_numparse=True))


@click.group("bpf")
def bpf_group() -> None:
    """What the kernel maps hold."""


def _renderer(spec: MapSpec[Any]) -> Renderer[Any]:
    if spec.renderer is None:
        raise TypeError(f"map {spec.name!r} has no renderer")
    return spec.renderer


def map_rows(ctx: CliContext, spec: MapSpec[Any], node: str | None) -> list[Row]:
    """The rows of one map's renderer for every node with maps here (or one), each with its
    node first (what ``bpf <map> list -o json`` prints)."""
    renderer = _renderer(spec)
    rows: list[Row] = []
    for name in nodes_with_maps(ctx, node):
        try:
            backend = pinned_factory(name)(spec)
            try:
                rows += [{"node": name, **r} for r in renderer.rows(spec.open(backend))]
            finally:
                close_backend(backend)
        except DatapathError as exc:
            raise click.ClickException(f"node {name}: {exc}") from exc
    return rows


def render_map(spec: MapSpec[Any], rows: list[Row]) -> str:
    """The table of ``bpf <map> list`` for rows of :func:`map_rows`."""
    renderer = _renderer(spec)
    return tabulate([renderer.cells(r) for r in rows], headers=list(renderer.headers),
                    tablefmt="plain", disable_numparse=not renderer.numparse)


def metrics_rows(ctx: CliContext, node: str | None) -> list[Row]:
    """The verdict counters of every node with maps here (or one), by reason and direction."""
    return map_rows(ctx, metrics.SPEC, node)


def render_metrics(rows: list[Row]) -> str:
    return render_map(metrics.SPEC, rows)


def _map_group(spec: MapSpec[Any]) -> click.Group:
    """``bpf <command>`` with its ``list`` command, from the map's renderer."""
    renderer = _renderer(spec)

    @click.group(renderer.command, help=renderer.help)
    def group() -> None:
        pass

    @group.command("list", help=renderer.list_help)
    @click.option("--node", default=None)
    @output_option
    @pass_ctx
    def list_command(ctx: CliContext, node: str | None, output: str) -> None:
        rows = map_rows(ctx, spec, node)
        if output == "json":
            print_json(rows)
            return
        click.echo(render_map(spec, rows))

    return group


MAP_GROUPS = {spec.name: _map_group(spec) for spec in registry.rendered()}
for _group in MAP_GROUPS.values():
    bpf_group.add_command(_group)
bpf_policy = MAP_GROUPS[policy.NAME]


def _find_endpoint(ctx: CliContext, target: str, node: str | None) -> tuple[str, int, int]:
    """(node, endpoint id, identity) of an endpoint given by id, IP or namespace/pod."""
    for r in endpoint_rows(ctx, node):
        if target in (str(r["id"]), r["ipv4"], r["pod"]):
            return r["node"], r["id"], r["identity"]
    raise click.ClickException(f"endpoint {target!r} not found"
                               + (f" on node {node}" if node else ""))


@bpf_policy.command("get")
@click.argument("endpoint")
@click.option("--node", default=None, help="needed when endpoint ids repeat across nodes")
@output_option
@pass_ctx
def bpf_policy_get(ctx: CliContext, endpoint: str, node: str | None, output: str) -> None:
    """Policy map entries of an ENDPOINT (id, IP or namespace/pod), from the kernel."""
    where, _, identity = _find_endpoint(ctx, endpoint, node)
    labels, _ = ctx.run(_names)
    with _open(where) as maps:
        entries = maps.policy.entries(identity)
    rows = [policy.entry_row(k, v, _labels_of(labels, k.peer)) for k, v in entries]
    if output == "json":
        print_json(rows)
        return
    click.echo(tabulate(
        [[r["verdict"], r["direction"].capitalize(), r["peer"], "\n".join(r["labels"]),
          policy.port_proto(r)]
         for r in rows],
        headers=["POLICY", "DIRECTION", "IDENTITY", "LABELS (source:key[=value])",
                 "PORT/PROTO"], tablefmt="plain", disable_numparse=True))


def format_dns(dns: dict[str, Any]) -> str:
    """What a DNS flow asked and got: ``DNS query a.example.com A -> NOERROR 203.0.113.20
    (ttl 30)``, or ``... -> REFUSED``."""
    answer = dns["rcode"]
    if dns.get("ips"):
        answer += f" {','.join(dns['ips'])} (ttl {dns.get('ttl', 0)})"
    return f"DNS query {dns['query']} {dns['qtype']} -> {answer}"


def format_flow(f: dict[str, Any]) -> str:
    """One flow on one line, as ``hubble observe`` prints it; a DNS flow says what was asked
    and answered where another says its reason and protocol."""
    when = dt.datetime.fromtimestamp(f["time"], dt.UTC).strftime("%b %d %H:%M:%S.%f")
    src = f.get("src_pod") or f["src_ip"]
    dst = f.get("dst_pod") or f["dst_ip"]
    sport = f":{f['src_port']}" if f["src_port"] else ""
    dport = f":{f['dst_port']}" if f["dst_port"] else ""
    dns = f.get("dns") if f.get("type") == FLOW_TYPE_DNS else None
    what = format_dns(dns) if dns else f"{f['reason_name']}, {f['proto_name']}"
    return (f"{when[:-3]}: {src}{sport} (ID:{f['src_identity']}) -> {dst}{dport} "
            f"(ID:{f['dst_identity']}) {f['direction']} {f['verdict']} ({what})")


def flow_matches(f: dict[str, Any], verdict: str | None = None, pod: str | None = None,
                 flow_type: str | None = None) -> bool:
    """Whether a flow passes ``observe``'s filters (None: any); a flow without ``type``
    (from an older agent) is an ``l3_l4`` one."""
    if verdict and f["verdict"] != verdict.upper():
        return False
    if flow_type and f.get("type", FLOW_TYPE_L3_L4) != flow_type:
        return False
    return not pod or pod in (f.get("src_pod"), f.get("dst_pod"))


async def recent_flows(bus: Bus) -> list[dict[str, Any]]:
    """The recent flows every agent keeps, merged in time order (an agent's reply counts only
    if it comes from that node's agent role)."""
    flows: list[dict[str, Any]] = []
    for reply in await control.request(bus, FLOWS_CONTROL, control.flows_claim,
                                       OBSERVE_COLLECT_S):
        flows.extend(reply.data["flows"])
    return sorted(flows, key=lambda f: f["time"])


@click.command("observe")
@click.option("-f", "--follow", is_flag=True, help="keep printing new flows")
@click.option("--verdict", type=click.Choice(["FORWARDED", "DROPPED"], case_sensitive=False))
@click.option("--pod", default=None, help="only flows from or to NAMESPACE/POD")
@click.option("--last", type=int, default=20, show_default=True,
              help="flows shown without --follow")
@click.option("--type", "--protocol", "flow_type", default=None,
              type=click.Choice([FLOW_TYPE_L3_L4, FLOW_TYPE_DNS], case_sensitive=False),
              help="only datapath verdicts (l3_l4) or DNS queries the DNS proxies handled "
                   "(dns)")
@click.option("--node", default=None)
@output_option
@pass_ctx
def observe(ctx: CliContext, follow: bool, verdict: str | None, pod: str | None, last: int,
            flow_type: str | None, node: str | None, output: str) -> None:
    """Flows through the datapath and the DNS proxies (like `hubble observe`)."""

    def show(f: dict[str, Any]) -> None:
        click.echo(json.dumps(f) if output == "json" else format_flow(f))

    async def run(bus: Bus) -> None:
        flows = [f for f in await recent_flows(bus)
                 if flow_matches(f, verdict, pod, flow_type)][-last:]
        if not follow:
            if output == "json":
                print_json(flows)
            else:
                for f in flows:
                    show(f)
            return
        for f in flows:
            show(f)   # --follow -o json: one flow per line
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_flows(msg: Msg) -> None:
            with contextlib.suppress(CodecError):
                for f in decode(msg.data, msg.subject).data["flows"]:
                    queue.put_nowait(f)

        await bus.nc.subscribe(flows_subject(node) if node else FLOWS_FILTER, cb=on_flows)
        while True:
            f = await queue.get()
            if flow_matches(f, verdict, pod, flow_type):
                show(f)

    try:
        ctx.run(run)
    except KeyboardInterrupt:
        pass
    except CiliaError as exc:
        raise click.ClickException(str(exc)) from exc
