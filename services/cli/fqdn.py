"""``cilia fqdn cache list``: what each node's DNS proxy learned (like ``cilium fqdn cache
list``).

Read from the ``fqdn.names`` reports in the history stream, the last one per node and name:
one row per node, name and address. A name whose report lists no address has expired
everywhere on that node and is not shown.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from ipaddress import ip_address
from typing import Any

import click
from tabulate import tabulate

from services.cli._context import CliContext, output_option, pass_ctx, print_json
from services.common.bus import Bus
from services.common.contract import AGENT_FQDN_FILTER, FqdnNames
from services.policy.fqdnmatch import NameMatcher, match_pattern


async def learned_names(bus: Bus) -> list[FqdnNames]:
    """The last report of every node and name."""
    snap = await bus.snapshot([AGENT_FQDN_FILTER])
    return [p for d in snap.values() if isinstance(p := d.event.payload, FqdnNames)]


def expiration(expires: float) -> str:
    """Unix seconds as ISO-8601 UTC, to the millisecond (``2026-11-28T00:54:10.500Z``)."""
    when = dt.datetime.fromtimestamp(expires, dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cache_rows(reports: Iterable[FqdnNames], node: str | None = None,
               name: NameMatcher | None = None) -> list[dict[str, Any]]:
    """One row per (node, name, address), sorted so; only ``node``'s and the names ``name``
    matches when given."""
    rows = [{"node": r.node, "endpoints": sorted(r.endpoints), "fqdn": r.name, "ttl": a.ttl,
             "expiration": expiration(a.expires), "ip": a.ip}
            for r in reports if (node is None or r.node == node)
            and (name is None or name.matches(r.name))
            for a in r.addresses]
    return sorted(rows, key=lambda r: (r["node"], r["fqdn"], ip_address(r["ip"])))


def format_cache(rows: list[dict[str, Any]]) -> str:
    table = [[r["node"], ",".join(r["endpoints"]) or "-", r["fqdn"], r["ttl"], r["expiration"],
              r["ip"]] for r in rows]
    return tabulate(table, headers=["NODE", "ENDPOINTS", "FQDN", "TTL", "EXPIRATION", "IP"],
                    tablefmt="plain", disable_numparse=True)


def _name_matcher(text: str | None) -> NameMatcher | None:
    if text is None:
        return None
    try:
        return match_pattern(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from exc


@click.group("fqdn")
def fqdn_group() -> None:
    """DNS names the nodes' DNS proxies learned (toFQDNs)."""


@fqdn_group.group("cache")
def fqdn_cache_group() -> None:
    """The names and addresses each node's DNS proxy holds."""


@fqdn_cache_group.command("list")
@click.option("--node", default=None, help="one node's names only")
@click.option("--name", default=None,
              help="names matching this name or pattern only (e.g. '*.example.com')")
@output_option
@pass_ctx
def fqdn_cache_list(ctx: CliContext, node: str | None, name: str | None, output: str) -> None:
    """List learned names with their addresses, TTL and expiry (like `cilium fqdn cache
    list`)."""
    rows = cache_rows(ctx.run(learned_names), node, _name_matcher(name))
    if output == "json":
        print_json(rows)
    else:
        click.echo(format_cache(rows))
