"""``replay explain``: the verdict for a connection at a moment, the map entries that decided
it on each node, the rules behind them and the events that put them there.

Each side (egress of the source on its node, ingress of the destination on its node) is looked
up in that node's replayed policy map with the compiler's own :func:`lookup`; the rules come
from :func:`~services.policy.trace.trace` over the replayed policy repository (what ``cilia
policy trace`` would have said then). Causes come from a :class:`Tracker` folded from the start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.common.codec import decode
from services.common.contract import policy_rules_subject, source_subject
from services.common.errors import CodecError
from services.common.policytypes import PROTO_NAMES, Direction, Verdict
from services.nodeagent.datapath.maps import policy as policy_map
from services.policy.compiler import Expansion, lookup
from services.policy.trace import DirectionTrace, trace

from .errors import ExplainError
from .fold import Replay
from .maps import node_scope
from .record import Moment, Record
from .timeline import Focus, Tracker

ALLOWED, DENIED = "ALLOWED", "DENIED"


@dataclass(frozen=True)
class Endpoint:
    pod: str
    ip: str
    node: str
    identity: int
    labels: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"pod": self.pod, "ip": self.ip, "node": self.node, "identity": self.identity,
                "labels": self.labels}


def _pod(rp: Replay, ref: str, moment: Moment) -> tuple[str, str]:
    pod = rp.cluster.pods.get(ref)
    if pod is None:
        raise ExplainError(f"pod {ref} does not exist at {moment} (seq {rp.seq})")
    ip = (pod.get("status") or {}).get("podIP")
    node = (pod.get("spec") or {}).get("nodeName")
    if not ip or not node:
        raise ExplainError(f"pod {ref} has no status.podIP or spec.nodeName at {moment}")
    return str(ip), str(node)


def _endpoint(rp: Replay, ref: str, moment: Moment) -> Endpoint:
    ip, node = _pod(rp, ref, moment)
    ident = rp.cluster.identity_of(ip)
    if ident is None:
        raise ExplainError(f"pod {ref} ({ip}) has no identity at {moment}: the ipcache holds "
                           f"no entry for {ip}/32 yet")
    labels = rp.cluster.identities.get(ident)
    return Endpoint(ref, ip, node, ident, labels.strings() if labels else [])


def _cause(tr: Tracker, scope: str, name: str, key: str) -> dict[str, Any] | None:
    c = tr.cause.get((scope, name, key))
    return c.to_dict() if c else None


def _event(rec: Record | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    try:
        etype = decode(rec.payload).type
    except CodecError:
        etype = "?"
    return {**rec.where(), "type": etype}


def _side(tr: Tracker, side: DirectionTrace, node: str, dport: int, proto: int,
          subject_ip: str, peer_ip: str) -> dict[str, Any]:
    rp = tr.rp
    st = rp.node(node).state
    scope = node_scope(node)
    entries = st.desired_policy({side.subject})
    mine = Expansion(entries, {}, {})
    verdict, keys = lookup(mine, side.peer, side.direction, proto, dport)
    deciding: list[dict[str, Any]] = []
    for k in keys:
        deciding.append(_entry(tr, scope, "policy", policy_map.flat_key(k)))
    if not keys:
        # Default deny: the endpoint entry's enforcement flag is what the datapath checks.
        deciding.append(_entry(tr, scope, "endpoints", subject_ip))
    peer_entry = _entry(tr, scope, "ipcache", f"{peer_ip}/32")
    rules = [str(o) for o in side.deciding]
    policies = {(o.kind, o.namespace, o.name) for o in side.deciding}
    events = [e for e in (_event(rp.last.get(source_subject(*p))) for p in sorted(policies))
              if e is not None]
    rules_event = _event(rp.last.get(policy_rules_subject(side.subject)))
    return {"direction": Direction(side.direction).name.lower(), "node": node,
            "subject": side.subject, "peer": side.peer, "verdict": verdict.name,
            "policy_service_verdict": side.verdict.name, "reason": side.reason,
            "rules": rules, "entries": deciding, "peer_identity_entry": peer_entry,
            "policy_events": events, "subject_rules_event": rules_event}


def _entry(tr: Tracker, scope: str, name: str, key: str) -> dict[str, Any]:
    return {"node": scope.split("/", 1)[1], "map": name, "key": key,
            "value": tr.maps[scope][name].get(key), "event": _cause(tr, scope, name, key)}


def explain(records: Sequence[Record], moment: Moment, src: str, dst: str, dport: int,
            proto: int) -> dict[str, Any]:
    """Explain a connection from pod ``src`` to pod ``dst`` (``ns/name``) at ``moment``.

    Args:
        records: the history cut at the moment (see :func:`~services.replay.record.cut`).

    Raises:
        ExplainError: a pod is unknown, has no address or no identity at that moment.
    """
    probe = Replay()
    probe.fold(records)
    s_ip, s_node = _pod(probe, src, moment)
    d_ip, d_node = _pod(probe, dst, moment)
    focus: dict[str, Focus] = {}
    for node, pod, peer_ip in ((s_node, src, d_ip), (d_node, dst, s_ip)):
        old = focus.get(node, Focus(frozenset(), frozenset()))
        focus[node] = Focus(old.pods | {pod}, old.prefixes | {f"{peer_ip}/32"})
    tr = Tracker(Replay(sorted(focus)), focus)
    tr.fold(records)
    rp = tr.rp
    s, d = _endpoint(rp, src, moment), _endpoint(rp, dst, moment)
    result = trace(s.identity, d.identity, dport, proto, rp.repo,
                   named_ports=rp.cluster.named_ports())
    egress = _side(tr, result.egress, s.node, dport, proto, s.ip, d.ip)
    ingress = _side(tr, result.ingress, d.node, dport, proto, d.ip, s.ip)
    allowed = egress["verdict"] == ingress["verdict"] == Verdict.ALLOW.name
    return {"at": str(moment), "seq": rp.seq, "verdict": ALLOWED if allowed else DENIED,
            "source": s.to_dict(), "destination": d.to_dict(),
            "dport": f"{dport}/{PROTO_NAMES.get(proto, proto)}",
            "policy_service_verdict": ALLOWED if result.verdict == Verdict.ALLOW else DENIED,
            "sides": [egress, ingress]}


def render(doc: dict[str, Any]) -> str:
    """Human-readable explanation."""
    def ev(e: dict[str, Any] | None) -> str:
        if not e:
            return "(no event: absent since the start of the history)"
        trace_id = e["trace_id"] or "-"
        return f"seq {e['seq']} {e['time']} {e['type']} {e['subject']} trace {trace_id}"

    def val(v: Any) -> str:
        if isinstance(v, dict):
            return " ".join(f"{k}={x}" for k, x in v.items())
        return "(absent)" if v is None else str(v)

    s, d = doc["source"], doc["destination"]
    lines = [f"At {doc['at']} (seq {doc['seq']}): {s['pod']} -> {d['pod']} {doc['dport']}: "
             f"{doc['verdict']}",
             f"  source      {s['pod']} {s['ip']} identity {s['identity']} on {s['node']}",
             f"  destination {d['pod']} {d['ip']} identity {d['identity']} on {d['node']}"]
    for side in doc["sides"]:
        title = "Egress of source" if side["direction"] == "egress" else \
            "Ingress of destination"
        lines.append(f"{title} on {side['node']} (identity {side['subject']} -> peer "
                     f"{side['peer']}): {side['verdict']} - {side['reason']}")
        for rule in side["rules"]:
            lines.append(f"    rule   {rule}")
        for e in side["entries"]:
            lines.append(f"    entry  {e['map']} {e['key']} = {val(e['value'])}")
            lines.append(f"           put there by {ev(e['event'])}")
        pe = side["peer_identity_entry"]
        lines.append(f"    peer   ipcache {pe['key']} = {val(pe['value'])}")
        lines.append(f"           put there by {ev(pe['event'])}")
        for e in side["policy_events"]:
            lines.append(f"    policy {ev(e)}")
        if side["verdict"] != side["policy_service_verdict"]:
            lines.append(f"    note: the policy service said {side['policy_service_verdict']}"
                         f"; the node had not realized it at this moment")
    lines.append(f"Final verdict: {doc['verdict']}")
    return "\n".join(lines)
