"""``cilia policy selectors``: every selector the policy service publishes, with its members
(like ``cilium policy selectors``).

Read from the policy service's outputs and folded as the service itself folds them
(:class:`~services.policy.reducer.BusView`): the selector messages in order (a ``delta`` means
something only after its ``set``), the last compiled rules of each identity and the last CIDR
ipcache entry of each prefix. A selector's users are the policy rules that name it (as subject
or peer). An FQDN selector is shown by the ``toFQDNs`` name or pattern it stands for (found in
the rules' entries, :func:`~services.policy.fqdn.fqdn_selector`), its members with the
addresses of their CIDR identities.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

import click
from tabulate import tabulate

from services.cli._context import CliContext, output_option, pass_ctx, print_json, read_history
from services.common.bus import Bus
from services.common.contract import (
    IPCACHE_SOURCE_CIDR,
    POLICY_RULES_FILTER,
    POLICY_SELECTOR_FILTER,
    ipcache_filter,
)
from services.common.contract.policy import PolicySelector, compiled_rule
from services.policy.fqdn import fqdn_selector
from services.policy.reducer import BusView

RuleKey = tuple[str, str, str, int]   # kind, namespace, name, rule index


async def read_selectors(bus: Bus) -> tuple[BusView, dict[str, str]]:
    """The policy service's outputs as the bus holds them, and each selector's canonical text
    (from its last ``set`` message)."""
    view, canonical = BusView(), {}
    for d in await read_history(bus, [POLICY_SELECTOR_FILTER]):
        payload = d.event.payload
        view.apply(payload)
        if isinstance(payload, PolicySelector) and payload.canonical is not None:
            canonical[payload.selector] = payload.canonical
    current = await bus.snapshot([POLICY_RULES_FILTER, ipcache_filter(IPCACHE_SOURCE_CIDR)])
    for d in current.values():
        view.apply(d.event.payload)
    return view, canonical


def _address(prefix: str) -> str:
    """A host prefix as its address (``203.0.113.20``), any other as itself."""
    net = ip_network(prefix)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else prefix


def _order(prefix: str) -> tuple[int, IPv4Network | IPv6Network]:
    net = ip_network(prefix)
    return net.version, net


def member_addresses(view: BusView) -> dict[int, list[str]]:
    """CIDR identity -> the addresses (or prefixes) behind it, sorted."""
    addresses: dict[int, list[str]] = {}
    for prefix, identity in sorted(view.prefixes.items(), key=lambda kv: _order(kv[0])):
        addresses.setdefault(identity, []).append(_address(prefix))
    return addresses


def fqdn_label(text: str) -> str:
    """How a ``toFQDNs`` entry reads: ``MatchName: a.example.com`` or ``MatchPattern: *.b``.

    The rules keep only the text; a ``matchName`` never holds ``*``, and a ``matchPattern``
    without one matches exactly one name, like a ``matchName`` of it (the same selector).
    """
    return f"{'MatchPattern' if '*' in text else 'MatchName'}: {text}"


def selector_rows(view: BusView, canonical: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per live selector: its id, how it reads, its canonical text, the ``toFQDNs``
    text it stands for (or None), how many rules use it, its members and their addresses (of
    the members that are CIDR identities), sorted by how it reads."""
    users: dict[str, set[RuleKey]] = {}
    fqdns: dict[str, str] = {}
    for rules in view.subjects.values():
        for raw in rules.rules:
            doc = compiled_rule(raw)
            key = (doc.kind, doc.namespace, doc.name, doc.rule)
            users.setdefault(doc.subject, set()).add(key)
            for entry in doc.entries:
                for sid in entry.selectors:
                    users.setdefault(sid, set()).add(key)
                for text in entry.fqdns:
                    fqdns[fqdn_selector(text).id] = text
    addresses = member_addresses(view)
    rows = []
    for sid, members in view.members.items():
        fqdn = fqdns.get(sid)
        text = canonical.get(sid, "-")
        ids = sorted(members)
        rows.append({"id": sid, "selector": fqdn_label(fqdn) if fqdn else text,
                     "canonical": text, "fqdn": fqdn, "users": len(users.get(sid, ())),
                     "identities": ids,
                     "ips": sorted((a for i in ids for a in addresses.get(i, ())),
                                   key=_order)})
    return sorted(rows, key=lambda r: (r["selector"], r["id"]))


def format_selectors(rows: list[dict[str, Any]], addresses: Mapping[int, list[str]]) -> str:
    """Cilium's layout: one member per line, each CIDR identity with its address
    (``addresses``: :func:`member_addresses`)."""
    table = [[r["selector"], r["users"],
              "\n".join(" ".join([str(i), *addresses.get(i, ())])
                        for i in r["identities"]) or "-", r["id"]] for r in rows]
    return tabulate(table, headers=["SELECTOR", "USERS", "IDENTITIES", "ID"], tablefmt="plain",
                    disable_numparse=True)


@click.command("selectors")
@output_option
@pass_ctx
def policy_selectors(ctx: CliContext, output: str) -> None:
    """Selectors with their users and member identities (like `cilium policy selectors`);
    toFQDNs selectors by their name or pattern, with the members' addresses."""
    view, canonical = ctx.run(read_selectors)
    rows = selector_rows(view, canonical)
    if output == "json":
        print_json(rows)
    else:
        click.echo(format_selectors(rows, member_addresses(view)))
