"""The ``cilia`` command line: the user's surface over the bus and the lab."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from services.cli import controlplane, source
from services.cli._context import (
    CliContext,
    default_state_dir,
    pass_ctx,
    run_async,
)
from services.cli.agentcli import bpf_group, endpoint_group, observe
from services.cli.connectivity import connectivity_group
from services.cli.demo import demo
from services.cli.endpointcli import endpoint_get
from services.cli.fqdn import fqdn_group
from services.cli.identity import identity_group
from services.cli.labcli import exec_command, lab_group, runtime_for
from services.cli.manifests import ManifestErrors
from services.cli.policy import policy_group
from services.cli.replay import history_group, replay_group, trace_group
from services.cli.selectors import policy_selectors
from services.cli.service import bpf_lb_group, service_group
from services.cli.status import status
from services.common.bus import NATS_URL_ENV, Bus, HistoryConfig
from services.common.buscreds import CA_ENV, CERT_ENV, CREDS_ENV, KEY_ENV, NKEY_ENV, BusAccess
from services.common.errors import CiliaError
from services.common.roles import SOURCE
from services.common.tracing import TRACE_FILE_ENV

F = TypeVar("F", bound=Callable[..., Any])


def bus_options(envvars: bool) -> Callable[[F], F]:
    """The NATS connection options, named as the nats CLI names them."""
    def env(*names: str) -> list[str] | None:
        return list(names) if envvars else None

    def decorate(fn: F) -> F:
        for option in reversed([
                click.option("--nats-url", envvar=env(NATS_URL_ENV), default=None,
                             help="use this NATS server (default: the one `cilia up` started)"),
                click.option("--creds", envvar=env(CREDS_ENV, NKEY_ENV), default=None,
                             type=click.Path(exists=True),
                             help="NATS credentials: a directory with one <role>.nk or "
                                  "<role>.creds per role, or one file for every role"),
                click.option("--tlsca", envvar=env(CA_ENV), default=None,
                             type=click.Path(exists=True, dir_okay=False),
                             help="CA that signed the NATS server's certificate"),
                click.option("--tlscert", envvar=env(CERT_ENV), default=None,
                             type=click.Path(exists=True, dir_okay=False),
                             help="client certificate (mutual TLS)"),
                click.option("--tlskey", envvar=env(KEY_ENV), default=None,
                             type=click.Path(exists=True, dir_okay=False),
                             help="client certificate's private key")]):
            fn = option(fn)
        return fn

    return decorate


def _access(creds: str | None, tlsca: str | None, tlscert: str | None,
            tlskey: str | None) -> BusAccess | None:
    paths = {k: str(Path(v).resolve()) if v else None for k, v in
             (("creds", creds), ("ca", tlsca), ("cert", tlscert), ("key", tlskey))}
    return BusAccess(**paths) if any(paths.values()) else None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@bus_options(envvars=True)
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="state directory (default $CILIA_STATE_DIR or /var/lib/cilia)")
@click.option("--trace-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="append OpenTelemetry spans as JSON lines to this file (this command and "
                   "every process it starts); see `cilia trace show`")
@click.pass_context
def cli(ctx: click.Context, nats_url: str | None, creds: str | None, tlsca: str | None,
        tlscert: str | None, tlskey: str | None, state_dir: Path | None,
        trace_file: Path | None) -> None:
    """cilia: eBPF networking and security for Kubernetes, on NATS JetStream."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if trace_file is not None:
        os.environ[TRACE_FILE_ENV] = str(trace_file.resolve())
    ctx.obj = CliContext(nats_url, state_dir or default_state_dir(),
                         _access(creds, tlsca, tlscert, tlskey))


@cli.command()
@bus_options(envvars=False)
@click.option("--port", type=int, default=controlplane.EMBEDDED_PORT, show_default=True,
              help="port of the embedded nats-server")
@click.option("--history-max-age", type=float, default=None,
              help="seconds of history kept (0: forever; default $CILIA_HISTORY_MAX_AGE)")
@click.option("--history-max-bytes", type=int, default=None,
              help="bytes of history kept (default $CILIA_HISTORY_MAX_BYTES or 1 GiB)")
@click.option("--replicas", multiple=True, metavar="SERVICE=N",
              help="replicas of a service, e.g. identity=2")
@pass_ctx
def up(ctx: CliContext, nats_url: str | None, creds: str | None, tlsca: str | None,
       tlscert: str | None, tlskey: str | None, port: int, history_max_age: float | None,
       history_max_bytes: int | None, replicas: tuple[str, ...]) -> None:
    """Start the control plane in the background: embedded NATS (unless --nats-url) and the
    services, one process each.

    The embedded NATS requires TLS and one credential per role (kept in the state directory,
    root only); with --nats-url, --creds/--tlsca/--tlscert/--tlskey say how to reach it."""
    if nats_url:
        ctx.explicit_url = nats_url
    ctx.explicit_access = _access(creds, tlsca, tlscert, tlskey) or ctx.explicit_access
    base = HistoryConfig.from_env()
    history = HistoryConfig(
        max_age_s=base.max_age_s if history_max_age is None else history_max_age,
        max_bytes=base.max_bytes if history_max_bytes is None else history_max_bytes)
    counts: dict[str, int] = {}
    for item in replicas:
        name, _, num = item.partition("=")
        if name not in controlplane.SERVICES or not num.isdigit() or int(num) < 1:
            raise click.BadParameter(f"{item!r}: expected SERVICE=N with SERVICE one of "
                                     f"{', '.join(controlplane.SERVICES)}", param_hint="--replicas")
        counts[name] = int(num)
    explicit = ctx.url() if ctx.explicit_url else None
    access = ctx.access() if explicit else None
    try:
        state = controlplane.up(ctx.state_dir, explicit, port, history, counts, access=access)
    except CiliaError as exc:
        raise click.ClickException(str(exc)) from exc
    where = "embedded" if state["embedded"] else "external"
    click.echo(f"NATS JetStream ({where}): {state['nats_url']}")
    if state["embedded"]:
        click.echo(f"  TLS and per-role credentials: {state['bus_dir']} (root only)")
    for proc in state["processes"]:
        click.echo(f"  {proc['name']:<16} pid {proc['pid']}")
    click.echo("control plane is up; `cilia down` stops it")


@cli.command()
@click.option("--purge", is_flag=True, help="also delete the embedded bus's store")
@pass_ctx
def down(ctx: CliContext, purge: bool) -> None:
    """Stop exactly what `cilia up` started."""
    stopped = controlplane.down(ctx.state_dir, purge)
    for name in stopped:
        click.echo(f"stopped {name}")
    if not stopped:
        click.echo("nothing to stop")


@cli.command()
@click.option("-f", "--filename", "files", multiple=True, required=True,
              help="manifest file or directory (repeatable)")
@pass_ctx
def apply(ctx: CliContext, files: tuple[str, ...]) -> None:
    """Apply Kubernetes manifests (validated whole: a bad file applies nothing)."""
    items = source.load_or_exit(files)
    runtime = runtime_for(ctx)

    async def run(bus: Bus) -> list[source.Outcome] | ManifestErrors:
        try:
            return await source.apply(bus, items, runtime)
        except ManifestErrors as exc:   # too large for the bus it is connected to
            return exc

    outcomes = ctx.run(run, role=SOURCE)
    if isinstance(outcomes, ManifestErrors):
        source.exit_with(outcomes)
    source.echo_outcomes(outcomes)


@cli.command()
@click.option("-f", "--filename", "files", multiple=True, required=True,
              help="manifest file or directory (repeatable)")
@pass_ctx
def delete(ctx: CliContext, files: tuple[str, ...]) -> None:
    """Delete the objects named in manifests."""
    items = source.load_or_exit(files, verb="deleted")
    runtime = runtime_for(ctx)
    source.echo_outcomes(ctx.run(lambda bus: source.delete(bus, items, runtime), role=SOURCE))


cli.add_command(identity_group)
cli.add_command(policy_group)
policy_group.add_command(policy_selectors)
cli.add_command(fqdn_group)
cli.add_command(endpoint_group)
endpoint_group.add_command(endpoint_get)
cli.add_command(bpf_group)
cli.add_command(service_group)
bpf_group.add_command(bpf_lb_group)
cli.add_command(observe)
cli.add_command(lab_group)
cli.add_command(exec_command)
cli.add_command(demo)
cli.add_command(replay_group)
cli.add_command(history_group)
cli.add_command(trace_group)
cli.add_command(connectivity_group)
cli.add_command(status)


def main() -> None:
    cli(prog_name="cilia")


__all__ = ["cli", "main", "run_async"]
