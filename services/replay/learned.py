"""``replay explain`` towards an address learned through DNS: who had learned it at the moment.

An address outside the cluster is a ``toFQDNs`` peer because some node's DNS proxy learned it
(an ``fqdn.names`` event, folded by the policy service's own reducer into the replayed
repository). For every (node, name) holding the address at the moment this says:

* the name, the node, the pods whose lookups taught it, the TTL and expiry the proxy gave it,
  from that pair's current ``fqdn.names`` message (the last one on its subject: each message
  replaces what the node knew of the name);
* the event citing it (seq, time, subject, trace id);
* the source's ``toFQDNs`` names and patterns that match the name, with their rule, and
  whether that rule is one that decided the connection.

Pairs that held the address earlier but dropped it by the moment (the proxy let it expire, or
a new answer replaced it) are reported too, with the last event that taught it and the one
that dropped it. Pure: data in, data out.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from services.common.codec import decode
from services.common.contract import AGENT_FQDN_FILTER, AgentEvent, FqdnNames, agent_fqdn_subject
from services.common.contract import subject_matches as _matches
from services.common.errors import CodecError
from services.policy.compiler import RuleOrigin, SubjectPolicy
from services.policy.fqdnmatch import dns_matcher

from .fold import Replay
from .record import NS_PER_S, Record

Source = tuple[str, str]    # (node, name)


@lru_cache(maxsize=65536)
def _is_fqdn(subject: str) -> bool:
    return _matches(subject, AGENT_FQDN_FILTER)


def _names(rec: Record) -> FqdnNames | None:
    try:
        payload = decode(rec.payload, rec.subject).payload
    except CodecError:
        return None     # skipped by the policy service too
    return payload if isinstance(payload, FqdnNames) else None


def _cite(rec: Record | None) -> dict[str, Any] | None:
    return None if rec is None else {**rec.where(), "type": AgentEvent.FQDN_NAMES}


def iso_seconds(unix: float) -> str:
    """Unix seconds as RFC 3339 UTC (``2026-11-28T10:01:05Z``; fractions only if any)."""
    return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")


def fqdn_rules(sp: SubjectPolicy, name: str,
               deciding: Collection[RuleOrigin]) -> list[dict[str, Any]]:
    """The subject's ``toFQDNs`` names and patterns matching ``name``, with their rule."""
    out = []
    for rule in sp.rules:
        for entry in rule.entries:
            for text in entry.fqdns:
                if dns_matcher(text).matches(name):
                    # dns_matcher's reading of the published text: a '*' makes it a pattern
                    out.append({"match": "matchPattern" if "*" in text else "matchName",
                                "pattern": text, "rule": str(entry.origin),
                                "policy": str(entry.origin.policy),
                                "deciding": entry.origin in deciding})
    return out


@dataclass
class _Seen:
    """What the history says of one (node, name) and the address."""

    taught: Record            # the last message that listed the address
    dropped: Record | None = None   # the first later message that did not


def _history(records: Sequence[Record], ip: str) -> dict[Source, _Seen]:
    seen: dict[Source, _Seen] = {}
    for rec in records:
        if not _is_fqdn(rec.subject):
            continue
        names = _names(rec)
        if names is None:
            continue
        source = (names.node, names.name)
        if any(a.ip == ip for a in names.addresses):
            seen[source] = _Seen(rec)
        elif source in seen and seen[source].dropped is None:
            seen[source].dropped = rec
    return seen


def learned(rp: Replay, records: Sequence[Record], ip: str, now_ns: int, sp: SubjectPolicy,
            deciding: Collection[RuleOrigin]) -> list[dict[str, Any]]:
    """Who had learned ``ip`` through DNS at the moment ``rp`` was folded to.

    Args:
        rp: the replay folded over ``records``.
        records: the history cut at the moment.
        now_ns: the moment (to say whether an expiry had passed).
        sp: the source's compiled rules (as the policy service had them).
        deciding: the rules that decided the connection.

    Returns:
        One entry per (node, name), held ones first; ``held`` False for a pair that dropped
        the address before the moment (``dropped_by`` names the event).
    """
    held = rp.repo.learned_sources(ip)
    out: list[dict[str, Any]] = []
    for node, name in held:
        rec = rp.last.get(agent_fqdn_subject(node, name))
        names = _names(rec) if rec is not None else None
        addr = next((a for a in names.addresses if a.ip == ip), None) if names else None
        out.append({"name": name, "node": node, "address": ip, "held": True,
                    "endpoints": list(names.endpoints) if names else [],
                    "ttl": addr.ttl if addr else None,
                    "expires": iso_seconds(addr.expires) if addr else None,
                    "expired": bool(addr and addr.expires * NS_PER_S < now_ns),
                    "event": _cite(rec), "dropped_by": None,
                    "rules": fqdn_rules(sp, name, deciding)})
    for (node, name), s in sorted(_history(records, ip).items()):
        if (node, name) in held or s.dropped is None:
            continue
        names = _names(s.taught)
        assert names is not None
        addr = next(a for a in names.addresses if a.ip == ip)
        out.append({"name": name, "node": node, "address": ip, "held": False,
                    "endpoints": list(names.endpoints), "ttl": addr.ttl,
                    "expires": iso_seconds(addr.expires),
                    "expired": addr.expires * NS_PER_S < now_ns,
                    "event": _cite(s.taught), "dropped_by": _cite(s.dropped),
                    "rules": fqdn_rules(sp, name, deciding)})
    return out


def render(entries: Sequence[dict[str, Any]], ev: Any) -> list[str]:
    """Text lines of the learned section (``ev`` renders a cited event)."""
    lines = []
    for e in entries:
        asked = ", ".join(e["endpoints"]) or "no pod named"
        head = f"  learned  {e['name']} -> {e['address']} on {e['node']} (asked by {asked})"
        if e["ttl"] is not None:
            head += f", ttl {e['ttl']}s, expires {e['expires']}"
            if e["expired"] and e["held"]:
                head += " (passed at this moment; the proxy had not dropped it yet)"
        lines.append(head)
        lines.append(f"           by {ev(e['event'])}")
        if not e["held"]:
            lines.append(f"           dropped by {ev(e['dropped_by'])}")
        for r in e["rules"]:
            note = "" if r["deciding"] else " (not deciding this connection)"
            lines.append(f"           selected by toFQDNs {r['match']} {r['pattern']} of "
                         f"{r['rule']}{note}")
        if not e["rules"]:
            lines.append("           no toFQDNs rule of the source matches this name")
    return lines
