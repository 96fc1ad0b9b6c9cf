"""``cilia service list`` (from the bus) and ``cilia bpf lb list`` (from the kernel maps).

The columns follow Cilium's: one row per frontend, then one ``N => ip:port/PROTO (state)``
line per backend.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click
from tabulate import tabulate

from services.cli._context import CliContext, output_option, pass_ctx, print_json
from services.common.bus import Bus
from services.common.contract import ServicePortRecord, ServiceRecord
from services.lb.client import read_view
from services.lb.events import LbView
from services.nodeagent import datapath
from services.nodeagent.datapath.constants import PROG_FROM_NETDEV, PROG_TO_NETDEV
from services.nodeagent.datapath.errors import DatapathError
from services.nodeagent.datapath.lb import LbMaps
from services.nodeagent.lbstate import PORT_INDEX_BITS

ANY_ADDRESS = "0.0.0.0"


def frontends(svc: ServiceRecord, port: ServicePortRecord) -> list[tuple[str, str]]:
    """(frontend, type) rows of one service port, as Cilium lists them."""
    proto = port.protocol
    rows = []
    if svc.cluster_ip:
        rows.append((f"{svc.cluster_ip}:{port.port}/{proto}", "ClusterIP"))
    for ip in svc.external_ips:
        rows.append((f"{ip}:{port.port}/{proto}", "ExternalIPs"))
    for ip in svc.lb_ips:
        rows.append((f"{ip}:{port.port}/{proto}", "LoadBalancer"))
    if port.node_port:
        rows.append((f"{ANY_ADDRESS}:{port.node_port}/{proto}", "NodePort"))
    return rows


def service_rows(view: LbView) -> list[dict[str, Any]]:
    """One row per frontend with its backends (what ``-o json`` prints)."""
    rows = []
    for sid in sorted(view.services):
        svc = view.services[sid]
        members = view.members.get(sid, set())
        for port in svc.ports:
            bes: list[dict[str, Any]] = []
            for name, bid in sorted(members, key=lambda m: m[1]):
                be = view.backends.get(bid)
                if name == port.name and be is not None:
                    bes.append({"id": bid, "address": f"{be.address}:{be.port}",
                                "protocol": be.protocol, "state": be.state or "active",
                                "node": be.node or "", "pod": be.pod or ""})
            bes.sort(key=lambda b: tuple(int(x) for x in b["address"].replace(":", ".").split(".")))
            for frontend, kind in frontends(svc, port):
                rows.append({"id": sid, "frontend": frontend, "type": kind,
                             "service": f"{svc.namespace}/{svc.name}",
                             "port_name": port.name, "backends": bes,
                             "session_affinity": bool(svc.affinity_timeout),
                             "external_traffic_policy": "Local" if svc.ext_local
                             else "Cluster"})
    return rows


def render_services(rows: list[dict[str, Any]]) -> str:
    table = []
    for r in rows:
        lines = [f"{i} => {b['address']}/{b['protocol']} ({b['state']})"
                 for i, b in enumerate(r["backends"], start=1)]
        table.append([r["id"], r["frontend"], r["type"], "\n".join(lines)])
    return tabulate(table, headers=["ID", "Frontend", "Service Type", "Backend"],
                    tablefmt="plain", disable_numparse=True)


@click.group("service")
def service_group() -> None:
    """Services and their backends."""


@service_group.command("list")
@output_option
@pass_ctx
def service_list(ctx: CliContext, output: str) -> None:
    """List services (like `cilium service list`), from the bus."""

    async def read(bus: Bus) -> LbView:
        return await read_view(bus)

    view = ctx.run(read)
    rows = service_rows(view)
    if output == "json":
        print_json(rows)
        return
    click.echo(render_services(rows))
    for ref, st in sorted(view.status.items()):
        if st.op == "error":
            click.echo(f"rejected {ref}: {st.error or ''}", err=True)


def lb_map_rows(maps: LbMaps, node: str) -> list[dict[str, Any]]:
    """The kernel's frontends with the backends their Maglev tables hold."""
    backends = maps.backend_entries()
    rows = []
    for fe, entry in sorted(maps.service_entries().items()):
        slots = Counter(maps.kernel_table(entry.table_int, entry.size_int))
        ext_slots = (slots if (entry.table_ext, entry.size_ext) == (entry.table_int,
                                                                     entry.size_int)
                     else Counter(maps.kernel_table(entry.table_ext, entry.size_ext)))
        bes = []
        for bid in sorted(set(slots) | set(ext_slots)):
            be = backends.get(bid)
            bes.append({"id": bid, "address": f"{be.address}:{be.port}" if be else "?",
                        "protocol": be.protocol if be else "?",
                        "local": bool(be and be.local),
                        "slots": slots.get(bid, 0), "external_slots": ext_slots.get(bid, 0)})
        flags = [f for f, on in (("external", entry.external), ("dsr", entry.dsr),
                                 ("affinity", bool(entry.affinity_timeout))) if on]
        rows.append({"node": node, "frontend": f"{fe.address}:{fe.port}/{fe.protocol}",
                     "frontend_id": entry.svc_id,
                     "service_id": entry.svc_id >> PORT_INDEX_BITS,
                     "port_index": entry.svc_id & ((1 << PORT_INDEX_BITS) - 1),
                     "table_size": entry.size_int,
                     "external_table_size": entry.size_ext, "flags": flags, "backends": bes})
    return rows


def kube_proxy_replacement(node: str, device: str, netns: str | None = None,
                           ) -> dict[str, Any]:
    """What ``cilia status`` reports as KubeProxyReplacement for one node: whether the
    underlay programs sit on ``device`` and which mode its external frontends use."""
    # pyroute2's synchronous socket cannot be opened inside a running event loop (status
    # calls this from one): ask from a worker thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            hooks = pool.submit(datapath.attached_programs, device, netns).result()
        except DatapathError:
            hooks = {}
    enabled = hooks == {"ingress": PROG_FROM_NETDEV, "egress": PROG_TO_NETDEV}
    mode = "SNAT"
    if enabled:
        try:
            with LbMaps(node) as maps:
                if any(e.dsr for e in maps.service_entries().values()):
                    mode = "DSR"
        except (DatapathError, ValueError):
            pass
    text = f"True   [{device} (Direct Routing), {mode}]" if enabled else "False"
    return {"enabled": enabled, "devices": [device] if enabled else [], "mode": mode,
            "text": text}


@click.group("lb")
def bpf_lb_group() -> None:
    """The load-balancing maps (frontends, backends, Maglev tables)."""


@bpf_lb_group.command("list")
@click.option("--node", required=True, help="the node whose maps to read")
@output_option
def bpf_lb_list(node: str, output: str) -> None:
    """List the kernel's service frontends and backends (like `cilium bpf lb list`)."""
    try:
        with LbMaps(node) as maps:
            rows = lb_map_rows(maps, node)
    except (DatapathError, ValueError) as exc:
        raise click.ClickException(f"node {node}: {exc}") from exc
    if output == "json":
        print_json(rows)
        return
    table = []
    for r in rows:
        size = r["table_size"] or 1
        sid = f"{r['service_id']}" + (f"/{r['port_index']}" if r["port_index"] else "")
        lines = [f"{b['address']}/{b['protocol']} ({sid}) "
                 f"[{100 * b['slots'] / size:.1f}% of {r['table_size']} slots"
                 f"{', local' if b['local'] else ''}]" for b in r["backends"]]
        if not lines:
            lines = [f"0.0.0.0:0 ({sid}) [no backend]"]
        table.append([r["frontend"], "\n".join(lines), ", ".join(r["flags"])])
    click.echo(tabulate(table, headers=["SERVICE ADDRESS", "BACKEND ADDRESS (SERVICE ID)",
                                        "FLAGS"], tablefmt="plain", disable_numparse=True))
