"""``cilia endpoint get ID``: one endpoint in detail, like ``cilium endpoint get``.

What the kernel's endpoint map holds for it (identity, enforcement, interface), its pod (from
its agent's endpoint report, or the ipcache), the identity's security-relevant labels, and the
pod labels that were dropped from the identity because they claim what only another object may
say (namespace, namespace labels, service account, cluster, a non-k8s source).
"""

from __future__ import annotations

from typing import Any

import click

from services.cli._context import CliContext, output_option, pass_ctx, print_json
from services.cli.agentcli import _labels_of, _open, names_of, nodes_with_maps
from services.common.bus import Bus
from services.common.contract import (
    IDENTITY_FILTER,
    IPCACHE_FILTER,
    KIND_POD,
    EndpointUpsert,
    ObjectUpsert,
    agent_endpoints_filter,
    source_subject,
    token,
)
from services.common.identities import ID_INIT
from services.identity.derive import sanitize_pod_labels

STATE_READY = "ready"
STATE_WAITING = "waiting-for-identity"   # Cilium's name: still at the init identity


async def _bus_view(bus: Bus, nodes: list[str]) -> dict[str, Any]:
    """Identity labels, ipcache pod names, endpoint reports and Pod objects, from the bus."""
    snap = await bus.snapshot([IDENTITY_FILTER, IPCACHE_FILTER,
                               *(agent_endpoints_filter(n) for n in nodes)])
    labels, ipcache = names_of(snap)
    reports = {(token(p.node), p.ip): p for d in snap.values()
               if isinstance(p := d.event.payload, EndpointUpsert)}
    return {"labels": labels, "ipcache": ipcache, "reports": reports}


async def _pod_objects(bus: Bus, pods: list[str]) -> dict[str, dict[str, Any]]:
    """namespace/name -> the Pod object the bus holds (absent pods left out)."""
    out = {}
    for pod in pods:
        namespace, _, name = pod.partition("/")
        event = await bus.last_event(source_subject(KIND_POD, namespace, name))
        if event is not None and isinstance(event.payload, ObjectUpsert):
            out[pod] = event.payload.object
    return out


def _matches(target: str, ep_id: int, ip: str, pod: str) -> bool:
    return target in (str(ep_id), ip, pod)


def endpoint_details(ctx: CliContext, target: str, node: str | None) -> list[dict[str, Any]]:
    """Every endpoint matching ``target`` (id, IPv4 or namespace/pod), in Cilium's shape."""
    names = nodes_with_maps(ctx, node)
    view = ctx.run(lambda bus: _bus_view(bus, names))
    found = []
    for name in names:
        with _open(name) as maps:
            entries = maps.endpoints.entries()
        for ip, ep in sorted(entries.items(), key=lambda kv: kv[1].endpoint_id):
            report = view["reports"].get((token(name), ip))
            pod = f"{report.namespace}/{report.pod}" if report else view["ipcache"].get(ip, "")
            if _matches(target, ep.endpoint_id, ip, pod):
                found.append((name, ip, ep, report, pod))
    objects = ctx.run(lambda bus: _pod_objects(bus, sorted({f[4] for f in found if f[4]})))
    out = []
    for name, ip, ep, report, pod in found:
        meta = (objects.get(pod) or {}).get("metadata") or {}
        _, dropped = sanitize_pod_labels(meta.get("labels") or {})
        out.append({
            "id": ep.endpoint_id,
            "status": {
                "external-identifiers": {
                    "container-id": report.container_id if report else "",
                    "k8s-namespace": pod.partition("/")[0], "k8s-pod-name": pod.partition("/")[2],
                    "pod-name": pod},
                "identity": {"id": ep.identity, "labels": _labels_of(view["labels"],
                                                                     ep.identity)},
                "labels": {"security-relevant": _labels_of(view["labels"], ep.identity),
                           "dropped": [d.to_dict() for d in dropped]},
                "networking": {"addressing": [{"ipv4": ip}], "node": name,
                               "interface-index": ep.ifindex},
                "policy": {"ingress": {"enforcing": ep.enforce_ingress},
                           "egress": {"enforcing": ep.enforce_egress}},
                "state": STATE_WAITING if ep.identity == ID_INIT else STATE_READY,
            }})
    return out


def _readable(ep: dict[str, Any]) -> str:
    st = ep["status"]
    on = {True: "Enabled", False: "Disabled"}
    lines = [f"Endpoint:            {ep['id']}",
             f"Pod:                 {st['external-identifiers']['pod-name'] or '-'}",
             f"Container ID:        {st['external-identifiers']['container-id'] or '-'}",
             f"Node:                {st['networking']['node']}",
             f"IPv4:                {st['networking']['addressing'][0]['ipv4']}",
             f"State:               {st['state']}",
             f"Identity:            {st['identity']['id']}",
             f"Policy enforcement:  ingress {on[st['policy']['ingress']['enforcing']]}, "
             f"egress {on[st['policy']['egress']['enforcing']]}",
             "Security-relevant labels:"]
    lines += [f"  {lbl}" for lbl in st["labels"]["security-relevant"]]
    dropped = st["labels"]["dropped"]
    lines.append("Dropped labels (only their owner may set them):" if dropped
                 else "Dropped labels:      none")
    lines += [f"  {d['key']}={d['value']}  ({d['reason']})" for d in dropped]
    return "\n".join(lines)


@click.command("get")
@click.argument("endpoint")
@click.option("--node", default=None, help="needed when endpoint ids repeat across nodes")
@output_option
@pass_ctx
def endpoint_get(ctx: CliContext, endpoint: str, node: str | None, output: str) -> None:
    """One ENDPOINT (id, IPv4 or namespace/pod) in detail (like `cilium endpoint get`)."""
    found = endpoint_details(ctx, endpoint, node)
    if not found:
        raise click.ClickException(f"endpoint {endpoint!r} not found"
                                   + (f" on node {node}" if node else ""))
    if output == "json":
        print_json(found)
        return
    click.echo("\n\n".join(_readable(ep) for ep in found))
