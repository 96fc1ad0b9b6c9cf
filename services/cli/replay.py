"""``cilia replay state|diff|explain``, ``cilia history export`` and ``cilia trace show``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from tabulate import tabulate

from services.cli._context import CliContext, output_option, pass_ctx, print_json
from services.cli.policy import _port
from services.common.bus import Bus
from services.common.tracing import TRACE_FILE_ENV
from services.replay import (
    History,
    HistoryHeader,
    Moment,
    Replay,
    ReplayError,
    Tracker,
    all_maps,
    cut,
    diff,
    explain,
    from_bus,
    from_file,
    moment_of,
    parse_moment,
    read_stream,
    write_history,
)
from services.replay import spans as spans_mod
from services.replay.explain import is_address
from services.replay.explain import render as render_explain
from services.replay.record import format_time
from services.replay.source import exported_now

T = TypeVar("T")

file_option = click.option("--file", "history_file", type=click.Path(dir_okay=False,
                                                                      path_type=Path),
                           default=None, help="replay this exported history file instead of "
                                              "the live bus")
at_option = click.option("--at", default=None,
                         help="moment: RFC 3339 time, HH:MM:SS today (UTC), or a sequence")
seq_option = click.option("--seq", type=int, default=None, help="moment: stream sequence")
node_option = click.option("--node", "nodes", multiple=True,
                           help="also rebuild this node's desired maps (repeatable)")


def _guard(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from exc


def load_history(ctx: CliContext, history_file: Path | None) -> History:
    """The history of ``--file``, or of the live bus."""
    if history_file is not None:
        header, history = _guard(lambda: from_file(history_file))
        if header.first_seq > 1:
            click.echo(f"note: {history_file} starts at seq {header.first_seq} (exported "
                       f"since {header.since or '?'}); earlier events are not in it", err=True)
        return history
    url = ctx.url()
    return ctx.run(lambda bus: from_bus(bus, url))


def _check_nodes(rp: Replay, nodes: tuple[str, ...]) -> None:
    known = rp.known_nodes()
    unknown = [n for n in nodes if n not in known]
    if unknown:
        raise click.ClickException(f"node {', '.join(unknown)} is not in the history at seq "
                                   f"{rp.seq} (known: {', '.join(known) or 'none'})")


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _map_table(entries: dict[str, Any]) -> str:
    if not entries:
        return "  (empty)"
    first = next(iter(entries.values()))
    if isinstance(first, dict):
        cols = list(first)
        rows = [[k, *(_cell(v.get(c, "")) for c in cols)] for k, v in entries.items()]
        headers = ["KEY", *(c.upper() for c in cols)]
    else:
        rows = [[k, _cell(v)] for k, v in entries.items()]
        headers = ["KEY", "VALUE"]
    return tabulate(rows, headers=headers, tablefmt="plain")


@click.group("replay")
def replay_group() -> None:
    """Rebuild what the control plane and the nodes held at any moment of the history."""


@replay_group.command("state")
@at_option
@seq_option
@node_option
@file_option
@output_option
@pass_ctx
def replay_state(ctx: CliContext, at: str | None, seq: int | None, nodes: tuple[str, ...],
                 history_file: Path | None, output: str) -> None:
    """Identities, policies, selectors, subjects, ipcache, services; with --node, that node's
    desired map contents."""
    moment = _guard(lambda: moment_of(at, seq))
    history = load_history(ctx, history_file)
    records = history.records[:_guard(lambda: cut(history.records, moment))]
    rp = Replay(nodes)
    rp.fold(records)
    _check_nodes(rp, nodes)
    when = format_time(rp.time_ns) if rp.seq else ""
    doc: dict[str, Any] = {
           "at": str(moment), "seq": rp.seq, "time": when,
           "source": history.origin, "events": rp.events, "skipped": rp.skipped,
           "maps": all_maps(rp)}
    if output == "json":
        print_json(doc)
        return
    click.echo(f"State at {moment}: seq {doc['seq']} {doc['time']} ({rp.events} events from "
               f"{history.origin}" + (f", {rp.skipped} undecodable skipped" if rp.skipped
                                      else "") + ")")
    for scope, maps in doc["maps"].items():
        for name, entries in maps.items():
            click.echo(f"\n{scope} {name} ({len(entries)}):")
            click.echo(_map_table(entries))


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_cell(v)}" for k, v in value.items()) + "}"
    return _cell(value)


@replay_group.command("diff")
@click.option("--from", "start", required=True, help="first moment (time or sequence)")
@click.option("--to", "end", required=True, help="second moment (time or sequence)")
@node_option
@file_option
@output_option
@pass_ctx
def replay_diff(ctx: CliContext, start: str, end: str, nodes: tuple[str, ...],
                history_file: Path | None, output: str) -> None:
    """Per map, the entries added, removed and changed between two moments, each with the
    event (sequence, time, subject, trace id) that caused it."""
    m1, m2 = _guard(lambda: parse_moment(start)), _guard(lambda: parse_moment(end))
    history = load_history(ctx, history_file)
    n1 = _guard(lambda: cut(history.records, m1))
    n2 = _guard(lambda: cut(history.records, m2))
    if n2 < n1:
        raise click.ClickException(f"--to {end} is before --from {start}")
    rp = Replay(nodes)
    rp.fold(history.records[:n1])
    tracker = Tracker(rp)
    before = tracker.snapshot()
    tracker.fold(history.records[n1:n2])
    _check_nodes(rp, nodes)
    changes = diff(before, tracker)
    if output == "json":
        print_json({"from": str(m1), "to": str(m2), "events": n2 - n1,
                    "changes": [c.to_dict() for c in changes]})
        return
    click.echo(f"{len(changes)} changes from {m1} to {m2} ({n2 - n1} events)")
    current = None
    for c in changes:
        if (c.scope, c.map) != current:
            current = (c.scope, c.map)
            click.echo(f"\n{c.scope} {c.map}:")
        sign = {"added": "+", "removed": "-", "changed": "~"}[c.kind]
        value = _short(c.new) if c.kind == "added" else _short(c.old) if c.kind == "removed" \
            else f"{_short(c.old)} -> {_short(c.new)}"
        e = c.cause.to_dict()
        click.echo(f"  {sign} {c.key} {value}")
        click.echo(f"      by seq {e['seq']} {e['time']} {e['type']} {e['subject']} "
                   f"trace {e['trace_id'] or '-'}")


@replay_group.command("explain")
@at_option
@seq_option
@click.option("--from", "src", required=True, metavar="NS/POD", help="source pod")
@click.option("--to", "dst", required=True, metavar="NS/POD|IP",
              help="destination pod, or an IPv4 address outside the cluster")
@click.option("--dport", required=True, help="PORT/PROTO, e.g. 5432/TCP")
@file_option
@output_option
@pass_ctx
def replay_explain(ctx: CliContext, at: str | None, seq: int | None, src: str, dst: str,
                   dport: str, history_file: Path | None, output: str) -> None:
    """Was SRC -> DST allowed at that moment? The deciding map entries on each node, their
    rules, and the events that put them there. To an address outside the cluster: the source's
    egress only, and for an address learned through DNS, the names, nodes and fqdn.names
    events that taught it and the toFQDNs rules that select it."""
    for ref, opt in ((src, "--from"), (dst, "--to")):
        if opt == "--to" and is_address(ref):
            continue
        if ref.count("/") != 1 or not all(ref.split("/")):
            expected = "NAMESPACE/POD or an IPv4 address" if opt == "--to" else "NAMESPACE/POD"
            raise click.BadParameter(f"{ref!r}: expected {expected}", param_hint=opt)
    port, proto = _port(dport)
    moment = _guard(lambda: moment_of(at, seq))
    history = load_history(ctx, history_file)
    records = history.records[:_guard(lambda: cut(history.records, moment))]
    doc = _guard(lambda: explain(records, moment, src, dst, port, proto))
    if output == "json":
        print_json(doc)
    else:
        click.echo(render_explain(doc))


@click.group("history")
def history_group() -> None:
    """The event history stream."""


@history_group.command("export")
@click.option("-o", "--output", "out", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="file to write")
@click.option("--since", default=None, help="only events from this moment (time or sequence)")
@pass_ctx
def history_export(ctx: CliContext, out: Path, since: str | None) -> None:
    """Write the history to a self-describing, checksummed file (for a bug report); replay it
    anywhere with `cilia replay ... --file FILE`."""
    moment: Moment | None = _guard(lambda: parse_moment(since)) if since else None

    async def read(bus: Bus) -> list[Any]:
        return await read_stream(bus, moment)

    records = ctx.run(read)
    header = HistoryHeader("CILIA", exported_now(), str(moment or ""),
                           extra={"source": ctx.url()})
    count = _guard(lambda: write_history(out, header, records))
    span = f" (seq {records[0].seq}..{records[-1].seq})" if records else ""
    click.echo(f"exported {count} events{span} to {out}")


@click.group("trace")
def trace_group() -> None:
    """Traces written with --trace-file / CILIA_TRACE_FILE."""


def _span_files(files: tuple[Path, ...]) -> list[Path]:
    if files:
        return list(files)
    env = os.environ.get(TRACE_FILE_ENV)
    if not env:
        raise click.UsageError(f"give --file (or set {TRACE_FILE_ENV})")
    return [Path(env)]


trace_file_option = click.option("--file", "files", multiple=True,
                                 type=click.Path(dir_okay=False, path_type=Path),
                                 help="JSON-lines span file (repeatable; default "
                                      f"${TRACE_FILE_ENV})")


@trace_group.command("show")
@click.argument("trace_id")
@trace_file_option
@output_option
def trace_show(trace_id: str, files: tuple[Path, ...], output: str) -> None:
    """One trace as an indented waterfall: who did what, when, and for how long."""
    spans, bad = _guard(lambda: spans_mod.load_spans(_span_files(files)))
    roots = _guard(lambda: spans_mod.build(spans, trace_id))
    rows = spans_mod.waterfall(roots)
    if output == "json":
        print_json({"trace_id": trace_id, "spans": rows})
        return
    click.echo(spans_mod.render(trace_id, rows))
    if bad:
        click.echo(f"({bad} lines that were not spans were skipped)", err=True)


@trace_group.command("list")
@trace_file_option
@output_option
def trace_list(files: tuple[Path, ...], output: str) -> None:
    """The traces in span files: id, root span, services, spans, duration."""
    spans, _ = _guard(lambda: spans_mod.load_spans(_span_files(files)))
    rows = spans_mod.traces(spans)
    if output == "json":
        print_json(rows)
        return
    click.echo(tabulate([[r["trace_id"], r["root"], ",".join(r["services"]), r["spans"],
                          f"{r['duration_ms']:.2f} ms"] for r in rows],
                        headers=["TRACE", "ROOT", "SERVICES", "SPANS", "DURATION"],
                        tablefmt="plain"))
