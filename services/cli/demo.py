"""``cilia demo``: the whole story in one command, from nothing, and back to nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import click

from services.cli import controlplane, manifests, source
from services.cli._context import CliContext, pass_ctx
from services.cli.identity import format_identities, list_identities
from services.common.bus import Bus
from services.common.embedded import free_port
from services.common.errors import CiliaError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
THREE_TIER = ("three-tier/namespace.yaml", "three-tier/pods.yaml")
WAIT_S = 20.0


def step(text: str) -> None:
    click.secho(f"==> {text}", bold=True)


async def _wait_for_ipcache(bus: Bus, ips: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        snap = await bus.snapshot(["cilia.ipcache.>"])
        have = {d.event.data["prefix"].split("/")[0] for d in snap.values()
                if d.event.type == "ipcache.upsert"}
        if ips <= have:
            return
        if time.monotonic() > deadline:
            raise CiliaError(f"no ipcache entries for {sorted(ips - have)} after {timeout:.0f}s")
        await asyncio.sleep(0.1)


@click.command()
@click.option("--keep", is_flag=True, help="leave everything running for exploring")
@pass_ctx
def demo(ctx: CliContext, keep: bool) -> None:
    """Start everything, apply the three-tier example, show what cilia made of it."""
    state_dir = ctx.state_dir / "demo"
    started = time.monotonic()
    step("starting the control plane (embedded NATS JetStream + services)")
    state = controlplane.up(state_dir, None, port=free_port())
    try:
        url = state["nats_url"]
        click.echo(f"    NATS {url}; " + ", ".join(
            f"{p['name']} pid {p['pid']}" for p in state["processes"]))
        items = manifests.load([str(EXAMPLES / f) for f in THREE_TIER])
        step("cilia apply -f examples/three-tier/")

        async def run() -> list[dict[str, object]]:
            bus = await Bus.connect(url, "cilia-demo")
            try:
                for outcome in await source.apply(bus, items):
                    click.echo(f"    {outcome}")
                ips = {m.obj["status"]["podIP"] for m in items if m.kind == "Pod"}
                await _wait_for_ipcache(bus, ips, WAIT_S)
                return await list_identities(bus)
            finally:
                await bus.close()

        rows = asyncio.run(run())
        step("cilia identity list")
        click.echo(format_identities(rows))
        click.echo(f"\ndone in {time.monotonic() - started:.1f}s")
    finally:
        if keep:
            click.echo(f"left running; CILIA_STATE_DIR={state_dir} cilia down  stops it")
        else:
            step("stopping everything")
            controlplane.down(state_dir, purge=True)
