"""``replay explain``: the verdict for a connection at a moment, the map entries that decided
it on each node, the rules behind them and the events that put them there.

Each side (egress of the source on its node, ingress of the destination on its node) is looked
up in that node's replayed policy map with the compiler's own :func:`lookup`; the rules come
from :func:`~services.policy.trace.trace` over the replayed policy repository (what ``cilia
policy trace`` would have said then). Causes come from a :class:`Tracker` folded from the start.

A destination outside the cluster (an IPv4 address) has only the egress side: its identity is
what the source node's replayed ipcache resolves the address to (longest prefix, world when no
prefix holds it), and an address the nodes' DNS proxies learned gets a ``learned`` section
(:mod:`services.replay.learned`): the names, nodes, pods and ``fqdn.names`` events behind it
and the ``toFQDNs`` rules that select it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.common.codec import decode
from services.common.contract import policy_rules_subject, source_subject
from services.common.errors import CodecError
from services.common.identities import ID_WORLD
from services.common.policytypes import PROTO_NAMES, Direction, Verdict
from services.nodeagent.datapath.maps import policy as policy_map
from services.nodeagent.state import NodeState
from services.policy.cidr import lpm_prefix
from services.policy.compiler import Expansion, lookup
from services.policy.trace import DirectionTrace, trace

from . import learned as learned_mod
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


def is_address(ref: str) -> bool:
    """Whether an explain destination is an IPv4 address (else it is ``namespace/pod``)."""
    try:
        ipaddress.IPv4Address(ref)
    except ValueError:
        return False
    return True


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
          subject_ip: str, peer_prefix: str) -> dict[str, Any]:
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
    peer_entry = _entry(tr, scope, "ipcache", peer_prefix)
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
    """Explain a connection from pod ``src`` to pod ``dst`` (``ns/name``), or to an IPv4
    address outside the cluster, at ``moment``.

    Args:
        records: the history cut at the moment (see :func:`~services.replay.record.cut`).

    Raises:
        ExplainError: a pod is unknown, has no address or no identity at that moment.
    """
    if is_address(dst):
        return _explain_address(records, moment, src, dst, dport, proto)
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
    egress = _side(tr, result.egress, s.node, dport, proto, s.ip, f"{d.ip}/32")
    ingress = _side(tr, result.ingress, d.node, dport, proto, d.ip, f"{s.ip}/32")
    allowed = egress["verdict"] == ingress["verdict"] == Verdict.ALLOW.name
    return {"at": str(moment), "seq": rp.seq, "verdict": ALLOWED if allowed else DENIED,
            "source": s.to_dict(), "destination": d.to_dict(),
            "dport": f"{dport}/{PROTO_NAMES.get(proto, proto)}",
            "policy_service_verdict": ALLOWED if result.verdict == Verdict.ALLOW else DENIED,
            "sides": [egress, ingress]}


def _resolve(st: NodeState, address: str) -> tuple[str | None, int]:
    """The ipcache prefix a node resolves ``address`` with (longest prefix), and its identity
    (world when no prefix holds it)."""
    entries = {p: e.identity for p, e in st.desired_ipcache().items()}
    prefix = lpm_prefix(address, entries)
    return prefix, entries[prefix] if prefix is not None else ID_WORLD


def _explain_address(records: Sequence[Record], moment: Moment, src: str, address: str,
                     dport: int, proto: int) -> dict[str, Any]:
    """Explain ``src`` -> an address outside the cluster: the egress side only."""
    probe = Replay()
    probe.fold(records)
    _, s_node = _pod(probe, src, moment)
    # Track the /32 and whatever prefix holds the address (a toCIDR range, say) at the end.
    held, _ = _resolve(probe.cluster, address)
    prefixes = {f"{address}/32"} | ({held} if held else set())
    tr = Tracker(Replay([s_node]), {s_node: Focus(frozenset({src}), frozenset(prefixes))})
    tr.fold(records)
    rp = tr.rp
    s = _endpoint(rp, src, moment)
    prefix, peer = _resolve(rp.node(s.node).state, address)
    result = trace(s.identity, peer, dport, proto, rp.repo,
                   named_ports=rp.cluster.named_ports())
    egress = _side(tr, result.egress, s.node, dport, proto, s.ip, prefix or f"{address}/32")
    labels = rp.repo.cache.labels(peer) or rp.cluster.identities.get(peer)
    now_ns = moment.time_ns if moment.time_ns is not None else rp.time_ns
    learned = learned_mod.learned(rp, records, address, now_ns,
                                  rp.repo.subject_policy(s.identity), result.egress.deciding)
    return {"at": str(moment), "seq": rp.seq,
            "verdict": ALLOWED if egress["verdict"] == Verdict.ALLOW.name else DENIED,
            "source": s.to_dict(),
            "destination": {"address": address, "identity": peer, "prefix": prefix,
                            "labels": labels.strings() if labels else []},
            "dport": f"{dport}/{PROTO_NAMES.get(proto, proto)}",
            "policy_service_verdict": ALLOWED if result.egress.verdict == Verdict.ALLOW
            else DENIED,
            "sides": [egress], "learned": learned}


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
    lines = [f"At {doc['at']} (seq {doc['seq']}): {s['pod']} -> {d.get('pod') or d['address']}"
             f" {doc['dport']}: {doc['verdict']}",
             f"  source      {s['pod']} {s['ip']} identity {s['identity']} on {s['node']}"]
    if "address" in d:
        held = f"ipcache {d['prefix']}" if d["prefix"] else "world: no ipcache prefix holds it"
        lines.append(f"  destination {d['address']} identity {d['identity']} ({held}), "
                     f"outside the cluster")
        lines += learned_mod.render(doc["learned"], ev)
    else:
        lines.append(f"  destination {d['pod']} {d['ip']} identity {d['identity']} on "
                     f"{d['node']}")
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
