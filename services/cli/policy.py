"""``cilia policy import|get|delete|trace``."""

from __future__ import annotations

from typing import Any

import click
import yaml
from tabulate import tabulate

from services.cli import manifests, source
from services.cli._context import CliContext, pass_ctx, print_json, read_history
from services.common.bus import Bus
from services.common.contract import (
    AGENT_FQDN_FILTER,
    IDENTITY_FILTER,
    IPCACHE_SOURCE_K8S,
    KIND_POD,
    POLICY_STATUS_FILTER,
    FqdnNames,
    IdentityUpsert,
    IpcacheUpsert,
    ObjectUpsert,
    ipcache_filter,
    policy_status_subject,
    source_filter,
)
from services.common.contract.policy import PolicyStatus
from services.common.labels import Labels
from services.common.policytypes import PROTO_BY_NAME
from services.common.roles import SOURCE
from services.policy import (
    POLICY_KINDS,
    PolicyError,
    Repository,
    trace,
)
from services.policy.reducer import reduce_input
from services.policy.trace import pod_labels

NamedPortMap = dict[int, dict[str, set[tuple[int, int]]]]


def _named_ports(pods: list[dict[str, Any]], ip_identity: dict[str, int]) -> NamedPortMap:
    named: NamedPortMap = {}
    for pod in pods:
        ident = ip_identity.get((pod.get("status") or {}).get("podIP") or "")
        if ident is None:
            continue
        ports = named.setdefault(ident, {})
        for c in pod["spec"].get("containers") or []:
            for p in c.get("ports") or []:
                if "name" in p:
                    proto = PROTO_BY_NAME[p.get("protocol", "TCP")]
                    ports.setdefault(p["name"], set()).add((proto, p["containerPort"]))
    return named


async def load_repository(bus: Bus) -> tuple[Repository, NamedPortMap]:
    """Rebuild the policy repository from the bus with the policy service's own reducer,
    plus the named ports of every identity (from the pods).

    Policies are replayed in full, so that a rejected version leaves the previous one in
    force exactly as in the service.
    """
    repo = Repository()
    current = await bus.snapshot([IDENTITY_FILTER, ipcache_filter(IPCACHE_SOURCE_K8S),
                                  source_filter(KIND_POD), AGENT_FQDN_FILTER])
    for d in current.values():
        # what the nodes learned now: a traced address is its learned identity, not world
        if isinstance(d.event.payload, IdentityUpsert | FqdnNames):
            reduce_input(repo, d.event.payload)
    for d in await read_history(bus, [source_filter(k) for k in sorted(POLICY_KINDS)]):
        try:
            reduce_input(repo, d.event.payload)
        except PolicyError:
            continue   # the policy service rejected it too; its previous version stays
    payloads = [d.event.payload for d in current.values()]
    ip_identity = {p.prefix.split("/")[0]: p.identity for p in payloads
                   if isinstance(p, IpcacheUpsert)}
    pods = [p.object for p in payloads if isinstance(p, ObjectUpsert)]
    return repo, _named_ports(pods, ip_identity)


@click.group("policy")
def policy_group() -> None:
    """Network policies (CiliumNetworkPolicy, clusterwide, Kubernetes NetworkPolicy)."""


@policy_group.command("import")
@click.option("-f", "--filename", "files", multiple=True, required=True)
@pass_ctx
def policy_import(ctx: CliContext, files: tuple[str, ...]) -> None:
    """Import policies from files (validated whole: a bad file imports nothing)."""
    items = source.load_or_exit(files, kinds=tuple(manifests.POLICY_KINDS), verb="imported")
    source.echo_outcomes(ctx.run(lambda bus: source.apply(bus, items), role=SOURCE))


def _status(s: PolicyStatus | None) -> dict[str, Any]:
    """What ``policy get`` shows of a policy's status (the service's last word on it)."""
    if s is None:
        return {"revision": None, "status": "Pending", "error": None, "rules": None}
    return {"revision": s.revision,
            "status": {"set": "OK", "error": "Rejected"}.get(s.op, "Pending"),
            "error": s.error, "rules": s.rules}


async def _policies(bus: Bus) -> list[dict[str, Any]]:
    status = await bus.snapshot([POLICY_STATUS_FILTER])
    objects = await bus.snapshot([source_filter(k) for k in sorted(POLICY_KINDS)])
    rows = []
    for d in objects.values():
        obj = d.event.payload
        if not isinstance(obj, ObjectUpsert):
            continue
        st = status.get(policy_status_subject(obj.kind, obj.namespace, obj.name))
        s = st.event.payload if st else None
        rows.append({"kind": obj.kind, "namespace": obj.namespace, "name": obj.name,
                     **_status(s if isinstance(s, PolicyStatus) else None),
                     "object": obj.object})
    return sorted(rows, key=lambda r: (r["namespace"], r["kind"], r["name"]))


@policy_group.command("get")
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table")
@pass_ctx
def policy_get(ctx: CliContext, output: str) -> None:
    """Policies with their revision and status."""
    rows = ctx.run(_policies)
    if output == "json":
        print_json(rows)
    elif output == "yaml":
        click.echo(yaml.safe_dump_all([r["object"] for r in rows], sort_keys=False), nl=False)
    else:
        click.echo(tabulate([[r["namespace"] or "-", r["kind"], r["name"], r["revision"],
                              r["status"] + (f": {r['error']}" if r["error"] else "")]
                             for r in rows],
                            headers=["NAMESPACE", "KIND", "NAME", "REVISION", "STATUS"],
                            tablefmt="plain"))


@policy_group.command("delete")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default")
@click.option("--kind", default="CiliumNetworkPolicy", show_default=True,
              type=click.Choice(sorted(POLICY_KINDS)))
@click.option("-f", "--filename", "files", multiple=True)
@pass_ctx
def policy_delete(ctx: CliContext, name: str | None, namespace: str, kind: str,
                  files: tuple[str, ...]) -> None:
    """Delete a policy by name, or those named in files."""
    if files:
        items = source.load_or_exit(files, kinds=tuple(manifests.POLICY_KINDS), verb="deleted")
    elif name:
        meta: dict[str, Any] = {"name": name}
        if manifests.KINDS[kind].namespaced:
            meta["namespace"] = namespace
        api = manifests.KINDS[kind].api_versions[0]
        items = [manifests.Manifest("<command line>", 0,
                                    {"apiVersion": api, "kind": kind, "metadata": meta})]
    else:
        raise click.UsageError("give a policy NAME or -f FILE")
    source.echo_outcomes(ctx.run(lambda bus: source.delete(bus, items), role=SOURCE))


def _endpoint(labels: tuple[str, ...], namespace: str | None, identity: int | None,
              what: str) -> Labels | int:
    if identity is not None:
        return identity
    if not labels:
        raise click.UsageError(f"give --{what} labels or --{what}-identity")
    parsed = Labels.parse(labels, default_source="k8s")
    return pod_labels(parsed, namespace) if namespace else parsed


def resolve(repo: Repository, who: Labels | int, what: str) -> Labels | int:
    """The identity whose labels include all of ``who``'s, when exactly one does.

    Users name pods by a few labels (``app=frontend``); the identity also carries the
    namespace, service account and cluster labels. With no match the labels are traced as a
    hypothetical endpoint; with several, the user must say more.
    """
    if isinstance(who, int):
        return who
    matches = [num for num, labels in repo.identities().items()
               if all(any(w.matches(lbl) for lbl in labels) for w in who)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise click.UsageError(f"--{what} labels match identities {sorted(matches)}; "
                               f"add labels or use --{what}-identity")
    return who


def _port(text: str) -> tuple[int, int]:
    port, _, proto = text.partition("/")
    proto = (proto or "TCP").upper()
    if not port.isdigit() or not 0 < int(port) < 65536 or proto not in PROTO_BY_NAME:
        raise click.BadParameter(f"{text!r}: expected PORT[/TCP|UDP|SCTP]")
    return int(port), PROTO_BY_NAME[proto]


@policy_group.command("trace")
@click.option("--src", multiple=True, help="source label, e.g. k8s:app=frontend (repeatable)")
@click.option("--src-namespace", default=None, help="namespace of the source pod")
@click.option("--src-identity", type=int, default=None)
@click.option("--dst", multiple=True, help="destination label (repeatable)")
@click.option("--dst-namespace", default=None)
@click.option("--dst-identity", type=int, default=None)
@click.option("--dport", required=True, help="PORT/PROTO, e.g. 5432/TCP")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@pass_ctx
def policy_trace(ctx: CliContext, src: tuple[str, ...], src_namespace: str | None,
                 src_identity: int | None, dst: tuple[str, ...], dst_namespace: str | None,
                 dst_identity: int | None, dport: str, output: str) -> None:
    """Would traffic from SRC to DST on DPORT be allowed? Names the deciding rules."""
    s = _endpoint(src, src_namespace, src_identity, "src")
    d = _endpoint(dst, dst_namespace, dst_identity, "dst")
    port, proto = _port(dport)

    async def run(bus: Bus) -> Any:
        repo, named = await load_repository(bus)
        return trace(resolve(repo, s, "src"), resolve(repo, d, "dst"), port, proto, repo,
                     named_ports=named)

    result = ctx.run(run)
    if output == "json":
        print_json(result.to_dict())
    else:
        click.echo(result.render())
