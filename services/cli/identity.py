"""``cilia identity list``: identities as the bus holds them."""

from __future__ import annotations

from typing import Any

import click
from tabulate import tabulate

from services.cli._context import CliContext, output_option, pass_ctx, print_json
from services.common.bus import Bus
from services.common.contract import IDENTITY_FILTER, IdentityUpsert


async def list_identities(bus: Bus) -> list[dict[str, Any]]:
    """Every live identity, by number: ``[{"id": 1, "labels": ["reserved:host"]}, ...]``."""
    snap = await bus.snapshot([IDENTITY_FILTER])
    ids = [p for d in snap.values() if isinstance(p := d.event.payload, IdentityUpsert)]
    return [{"id": p.id, "labels": sorted(p.labels)} for p in sorted(ids, key=lambda p: p.id)]


def format_identities(rows: list[dict[str, Any]]) -> str:
    """Cilium's layout: ID and LABELS columns, one label per line."""
    table = [[r["id"], "\n".join(r["labels"])] for r in rows]
    return tabulate(table, headers=["ID", "LABELS"], tablefmt="plain", disable_numparse=True)


@click.group("identity")
def identity_group() -> None:
    """Security identities."""


@identity_group.command("list")
@output_option
@pass_ctx
def identity_list(ctx: CliContext, output: str) -> None:
    """List identities (like `cilium identity list`)."""
    rows = ctx.run(list_identities)
    if output == "json":
        print_json(rows)
    else:
        click.echo(format_identities(rows))
