"""``cilia status [--wait]``: the cluster on one screen, like ``cilium status``.

Everything comes from the bus (the services' heartbeats, the streams, the Node objects and the
lb service's history) plus the lab's state and the nodes' pinned lb maps when this machine runs
the lab. :func:`assess` (pure) decides what is OK; ``--wait`` repeats until everything is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from tabulate import tabulate

from services.cli._context import CliContext, output_option, pass_ctx, print_json, run_async
from services.cli.agentcli import cluster_nodes
from services.cli.controlplane import SERVICES, collect_status
from services.cli.labcli import current_lab
from services.cli.service import kube_proxy_replacement
from services.common.bus import Bus
from services.common.contract import AGENT_INPUTS, KIND_POD, ObjectUpsert
from services.common.errors import BusError, CiliaError
from services.common.roles import CLI
from services.common.runner import STATE_OK
from services.lab.state import load_lab
from services.lb.client import read_view
from services.nodeagent.datapath.errors import DatapathError
from services.nodeagent.datapath.lb import LbMaps

AGENT = "nodeagent"
DNS = "dns"
KUBE_DNS_REF = "kube-system/kube-dns"
NODE_DEVICE = "eth0"        # the lab node's underlay device, where NodePort programs sit
DEFAULT_WAIT_S = 300.0      # cilium status --wait-duration default (5 minutes)
WAIT_POLL_S = 0.5
CONNECT_TIMEOUT_S = 3.0
T = TypeVar("T")
OK, WARNING, ERROR, DISABLED = "OK", "warning", "error", "disabled"
LOGO = ["    /¯¯\\     ", " /¯¯\\__/¯¯\\  ", " \\__/¯¯\\__/  ", " /¯¯\\__/¯¯\\  ",
        " \\__/¯¯\\__/  ", "    \\__/     "]


async def gather(bus: Bus, url: str, lab: str | None) -> dict[str, Any]:
    """Everything ``status`` shows, as data (what ``-o json`` prints)."""
    version = bus.nc.connected_server_version
    account = await bus.js.account_info()
    streams = []
    for info in await bus.js.streams_info():
        cfg, st = info.config, info.state
        streams.append({"name": cfg.name, "messages": st.messages, "bytes": st.bytes,
                        "first_seq": st.first_seq, "last_seq": st.last_seq,
                        "consumers": st.consumer_count,
                        "retention": str(getattr(cfg.retention, "value", cfg.retention)),
                        "max_age_s": cfg.max_age or 0, "max_bytes": cfg.max_bytes,
                        "replicas": cfg.num_replicas or 1})
    replies = await collect_status(bus)
    nodes = await cluster_nodes(bus)
    view = await read_view(bus)
    agent_inputs = await bus.snapshot(AGENT_INPUTS.filters)     # pods included
    agent_bus_seq = max((d.seq for d in agent_inputs.values()), default=0)
    running = sum(1 for d in agent_inputs.values()
                  if isinstance(p := d.event.payload, ObjectUpsert) and p.kind == KIND_POD
                  and (p.object.get("status") or {}).get("podIP"))
    lab_info: dict[str, Any] = {"name": lab, "routing": None}
    kpr: dict[str, dict[str, Any]] = {}
    if lab:
        try:
            state = load_lab(lab)
        except CiliaError:
            lab_info["name"] = None
        else:
            lab_info["routing"] = getattr(state, "routing", "native")
            # pyroute2 runs its own event loop: off this one
            kpr = {n.name: await asyncio.to_thread(kube_proxy_replacement, n.name,
                                                   NODE_DEVICE, n.netns)
                   for n in state.plan.nodes}
    return {"nats": {"url": url, "server": f"{version.major}.{version.minor}.{version.patch}",
                     **bus.security, "jetstream": True, "streams": account.streams,
                     "consumers": account.consumers, "storage_bytes": account.storage,
                     "memory_bytes": account.memory},
            "streams": sorted(streams, key=lambda s: s["name"]),
            "services": replies, "nodes": nodes, "agent_inputs_seq": agent_bus_seq,
            "pods": running,
            "kube_dns": KUBE_DNS_REF in view.ids,
            "lb_frontends": {n: _frontends(n) for n in nodes}, "kpr": kpr,
            "lab": lab_info}


def _frontends(node: str) -> int | None:
    """Frontends in a node's pinned lb maps (None when they are not on this machine)."""
    try:
        with LbMaps(node) as maps:
            return len(maps.service_entries())
    except (DatapathError, OSError, ValueError):
        return None


def _stats(data: dict[str, Any], service: str, key: str) -> int | None:
    values = [r["stats"].get(key) for r in data["services"] if r["service"] == service
              and r["state"] == STATE_OK and isinstance(r["stats"].get(key), int)]
    return max(values) if values else None


def _count(reply: dict[str, Any], key: str) -> int:
    value = (reply.get("stats") or {}).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def assess(data: dict[str, Any]) -> dict[str, Any]:
    """Health of every part and the overall verdict (pure).

    Returns:
        ``{"ok": bool, "problems": [...], "services": {name: {...}}, "agents": [...],
        "kube_proxy_replacement": str, "routing": str, "counts": {...}}``.
    """
    problems: list[str] = []
    expected = {name: 1 for name in SERVICES}
    expected[AGENT] = len(data["nodes"])
    if data["kube_dns"]:
        expected[DNS] = 1
    by_service: dict[str, list[dict[str, Any]]] = {}
    for r in data["services"]:
        by_service.setdefault(r["service"], []).append(r)
    services = {}
    for name in sorted(set(expected) | set(by_service)):
        reps = by_service.get(name, [])
        ready = sum(r["state"] == STATE_OK for r in reps)
        want = expected.get(name, 0)
        health = OK if ready >= want and ready == len(reps) else (
            ERROR if ready == 0 and want else WARNING)
        services[name] = {"desired": want, "replicas": len(reps), "ready": ready,
                          "health": health,
                          # bad messages skipped (validation) and failed (handler raised)
                          "rejected": sum(_count(r, "rejected") for r in reps),
                          "failed": sum(_count(r, "failed") for r in reps)}
        if health != OK:
            problems.append(f"{name}: {ready}/{max(want, len(reps))} replicas ready")
    bus_seq = data["agent_inputs_seq"]
    policy_rev = _stats(data, "policy", "revision")
    agents = []
    seen_nodes = set()
    for r in by_service.get(AGENT, []):
        st = r["stats"]
        node = r.get("node") or st.get("node", "?")
        seen_nodes.add(node)
        realized = int(st.get("realized", 0))
        revs = [int(v) for v in (st.get("policy_revisions") or {}).values()]
        lag = max(0, bus_seq - realized)
        errors = dict(st.get("errors") or {})
        health = OK if r["state"] == STATE_OK and not st.get("error") and lag == 0 else (
            ERROR if st.get("error") or r["state"] != STATE_OK else WARNING)
        agents.append({"node": node, "health": health, "state": r["state"],
                       "endpoints": st.get("endpoints", 0), "realized": realized,
                       "bus": bus_seq, "lag": lag,
                       "policy_revision": max(revs) if revs else 0,
                       "error": st.get("error") or "", "errors": errors,
                       "drift": dict(st.get("drift") or {})})
        if health != OK:
            problems.append(f"agent {node}: " + (st.get("error") or (
                f"state {r['state']}" if r["state"] != STATE_OK else f"{lag} events behind")))
    for node in data["nodes"]:
        if node not in seen_nodes:
            problems.append(f"agent {node}: no heartbeat")
            agents.append({"node": node, "health": ERROR, "state": "missing", "endpoints": 0,
                           "realized": 0, "bus": bus_seq, "lag": bus_seq,
                           "policy_revision": 0, "error": "no heartbeat", "errors": {},
                           "drift": {}})
    lb = services.get("lb", {})
    frontends = {n: c for n, c in data["lb_frontends"].items() if c is not None}
    nodes_kpr = data.get("kpr") or {}
    fe = (f", {sum(frontends.values())} frontends in {len(frontends)} node maps"
          if frontends else "")
    if not lb.get("ready"):
        kpr = "False [no lb service]"
    elif nodes_kpr and not all(k["enabled"] for k in nodes_kpr.values()):
        off = sorted(n for n, k in nodes_kpr.items() if not k["enabled"])
        kpr = f"Partial [no NodePort programs on {', '.join(off)}{fe}]"
        problems.append(f"KubeProxyReplacement: no NodePort programs on {', '.join(off)}")
    elif nodes_kpr:
        first = next(iter(nodes_kpr.values()))
        kpr = (f"True [{', '.join(first['devices'])} (Direct Routing), {first['mode']}"
               f"{fe}]")
    else:
        kpr = f"True [ClusterIP, NodePort{fe}]"
    counts = {"pods": data.get("pods", 0), "endpoints": sum(a["endpoints"] for a in agents),
              "identities": _stats(data, "identity", "identities"),
              "policies": _stats(data, "policy", "policies"),
              "services": _stats(data, "lb", "services"),
              "backends": _stats(data, "lb", "backends")}
    return {"ok": not problems, "problems": problems, "services": services,
            "agents": sorted(agents, key=lambda a: a["node"]),
            "kube_proxy_replacement": kpr, "routing": data["lab"]["routing"] or "unknown",
            "policy_revision": policy_rev, "counts": counts}


def _age(seconds: float) -> str:
    return "forever" if not seconds else f"{seconds:.0f}s"


def _per_map(counts: dict[str, int]) -> str:
    """``ipcache=2 policy=1`` (entries put back per map), ``0`` when none."""
    return " ".join(f"{name}={n}" for name, n in sorted(counts.items()) if n) or "0"


def _errors(agent: dict[str, Any]) -> str:
    """Each failing part's error, ``part: message``; the agent's own error without parts."""
    if agent["errors"]:
        return "; ".join(f"{part}: {msg}" for part, msg in sorted(agent["errors"].items()))
    return str(agent["error"])


def render(data: dict[str, Any], health: dict[str, Any]) -> str:
    """The screen."""
    svc = health["services"]

    def line(name: str) -> str:
        s = svc.get(name)
        if s is None:
            return DISABLED
        return f"{s['health']:<8}{s['ready']}/{max(s['desired'], s['replicas'])} ready"

    n = data["nats"]
    head = [("Cilia", OK if health["ok"] else f"{len(health['problems'])} problem(s)"),
            ("NATS", f"{nats_health(n):<8}{n['url']} (server {n['server']}, "
                     f"{nats_security(n)}, JetStream: "
                     f"{n['streams']} streams, {n['consumers']} consumers)"),
            ("Identity", line("identity")), ("Policy", line("policy")),
            ("Load balancer", line("lb")), ("Cluster DNS", line(DNS))]
    out = [f"{LOGO[i]}{k + ':':<22}{v}" for i, (k, v) in enumerate(head)]
    c = health["counts"]
    out += ["",
            f"{'KubeProxyReplacement:':<26}{health['kube_proxy_replacement']}",
            f"{'Routing:':<26}{health['routing']}"
            + (f" (lab {data['lab']['name']})" if data["lab"]["name"] else ""),
            f"{'Policy revision:':<26}{health['policy_revision']}",
            f"{'Nodes:':<26}{len(data['nodes'])}",
            f"{'Cluster Pods:':<26}{c['endpoints']}/{c['pods']} managed by cilia",
            f"{'Identities:':<26}{c['identities']}",
            f"{'Policies:':<26}{c['policies']}",
            f"{'Services:':<26}{c['services']} ({c['backends']} backends)", ""]
    out.append(tabulate([[s["name"], s["messages"], s["bytes"], s["consumers"],
                          f"{s['retention']}, {_age(s['max_age_s'])}, "
                          + ("no size limit" if s["max_bytes"] < 0 else f"{s['max_bytes']} bytes")]
                         for s in data["streams"]],
                        headers=["STREAM", "MESSAGES", "BYTES", "CONSUMERS", "RETENTION"],
                        tablefmt="plain", disable_numparse=True))
    out.append("")
    out.append(tabulate([[name, s["health"], f"{s['ready']}/{s['replicas']}", s["desired"],
                          s["rejected"], s["failed"]]
                         for name, s in svc.items()],
                        headers=["SERVICE", "HEALTH", "READY", "DESIRED", "REJECTED", "FAILED"],
                        tablefmt="plain"))
    out.append("")
    out.append(tabulate([[a["node"], a["health"], a["endpoints"], a["realized"], a["bus"],
                          a["lag"], a["policy_revision"], _per_map(a["drift"]),
                          _errors(a)]
                         for a in health["agents"]],
                        headers=["NODE", "AGENT", "ENDPOINTS", "REALIZED", "BUS", "LAG",
                                 "POLICY REV", "DRIFT REPAIRED", "ERRORS"], tablefmt="plain"))
    if health["problems"]:
        out += ["", "Problems:"] + [f"  - {p}" for p in health["problems"]]
    if nats_health(n) != OK:
        out += ["", f"Warning: {OPEN_BUS_WARNING}"]
    return "\n".join(out)


OPEN_BUS_WARNING = ("the bus does not require authentication: any process that reaches it can "
                    "publish identities, policy and Node objects (start it with `cilia up`, or "
                    "give NATS users and TLS: see the README)")


def nats_health(n: dict[str, Any]) -> str:
    """OK with authentication required by the server; a warning without."""
    return OK if n.get("auth") else WARNING


def nats_security(n: dict[str, Any]) -> str:
    """``TLS, auth: role cli`` / ``no TLS, no auth``, as the server reported it."""
    tls = "TLS" if n.get("tls") else "no TLS"
    auth = f"auth: role {n.get('role') or '?'}" if n.get("auth") else "no auth"
    return f"{tls}, {auth}"


def _run(ctx: CliContext, fn: Callable[[Bus], Awaitable[T]]) -> T:
    """``ctx.run`` with a bounded connect: the bus's own connect retries forever when nothing
    listens, and ``status`` must say so instead."""

    async def main() -> T:
        url = ctx.url()
        try:
            bus = await asyncio.wait_for(
                Bus.connect(url, "cilia-status", creds=ctx.credentials(CLI)), CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise BusError(f"cannot reach NATS at {url} (no answer in "
                           f"{CONNECT_TIMEOUT_S:.0f}s)") from None
        try:
            return await fn(bus)
        finally:
            await bus.close()

    return run_async(main())


def read_status(ctx: CliContext, wait: float | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Gather once, or (``wait`` seconds) until everything is OK.

    Raises:
        CiliaError: the bus is unreachable, or ``wait`` ran out (naming what is not OK).
    """
    lab = current_lab(None)

    async def once(bus: Bus) -> tuple[dict[str, Any], dict[str, Any]]:
        data = await gather(bus, ctx.url(), lab)
        return data, assess(data)

    async def until_ok(bus: Bus) -> tuple[dict[str, Any], dict[str, Any]]:
        assert wait is not None
        deadline = time.monotonic() + wait
        while True:
            data, health = await once(bus)
            if health["ok"]:
                return data, health
            if time.monotonic() > deadline:
                raise CiliaError(f"status not OK after {wait:.0f}s: "
                                 + "; ".join(health["problems"]))
            await asyncio.sleep(WAIT_POLL_S)

    if wait is None:
        return _run(ctx, once)
    deadline = time.monotonic() + wait
    while True:   # the bus itself may not be up yet
        try:
            return _run(ctx, until_ok)
        except click.ClickException:
            if time.monotonic() > deadline:
                raise
            time.sleep(WAIT_POLL_S)


@click.command("status")
@click.option("--wait", is_flag=True, help="wait until every part is OK")
@click.option("--wait-duration", type=float, default=DEFAULT_WAIT_S, show_default=True,
              help="seconds --wait waits at most")
@output_option
@pass_ctx
def status(ctx: CliContext, wait: bool, wait_duration: float, output: str) -> None:
    """Bus, streams, services, node agents and counts at a glance (like `cilium status`)."""
    data, health = read_status(ctx, wait_duration if wait else None)
    if output == "json":
        print_json({**data, "health": health})
    else:
        click.echo(render(data, health))
    if wait and not health["ok"]:
        raise SystemExit(1)


__all__ = ["assess", "gather", "render", "status"]
