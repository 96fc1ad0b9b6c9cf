"""``cilia policy trace``: would a packet pass, and which rules decide it, per direction.

A packet from ``src`` to ``dst`` must pass the source's egress policy and the destination's
ingress policy. Each side is answered by :func:`~services.policy.compiler.expand` followed by
:func:`~services.policy.compiler.lookup` over the same selector members the agent uses, so the
trace means exactly what the datapath does. Label sets that no identity has yet get a
provisional identity (the highest free cluster number), matched against every selector as a
new identity would be.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from services.common.identities import MAX_CLUSTER_ID, MIN_CLUSTER_ID, RESERVED_BY_NAME
from services.common.labels import SOURCE_RESERVED, Labels
from services.common.policytypes import PROTO_NAMES, Direction, PolicyKey, Verdict

from .cidr import lpm_identity, matching_labels
from .compiler import NamedPorts, RuleOrigin, SubjectPolicy, expand, lookup
from .errors import PolicyError
from .repository import Repository
from .selector import POD_NAMESPACE_KEY


@dataclass(frozen=True)
class DirectionTrace:
    """The verdict of one side: the subject's policy in one direction towards the peer."""

    direction: Direction
    subject: int
    peer: int
    verdict: Verdict
    enforced: bool
    deciding: tuple[RuleOrigin, ...]
    keys: tuple[PolicyKey, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON/msgpack-friendly form (for ``cilia policy trace -o json``)."""
        return {"direction": self.direction.name.lower(), "subject": self.subject,
                "peer": self.peer, "verdict": self.verdict.name, "enforced": self.enforced,
                "reason": self.reason, "rules": [str(o) for o in self.deciding],
                "keys": [list(k) for k in self.keys]}


@dataclass(frozen=True)
class TraceResult:
    """Both sides of a trace; the packet passes only if both allow it."""

    src_identity: int
    dst_identity: int
    proto: int
    dport: int
    egress: DirectionTrace
    ingress: DirectionTrace

    @property
    def verdict(self) -> Verdict:
        """ALLOW only if the source's egress and the destination's ingress allow."""
        both = (self.egress.verdict, self.ingress.verdict)
        return Verdict.ALLOW if both == (Verdict.ALLOW, Verdict.ALLOW) else Verdict.DENY

    def to_dict(self) -> dict[str, Any]:
        """JSON/msgpack-friendly form (for ``cilia policy trace -o json``)."""
        return {"src_identity": self.src_identity, "dst_identity": self.dst_identity,
                "proto": PROTO_NAMES.get(self.proto, str(self.proto)), "dport": self.dport,
                "verdict": "ALLOWED" if self.verdict == Verdict.ALLOW else "DENIED",
                "egress": self.egress.to_dict(), "ingress": self.ingress.to_dict()}

    def render(self) -> str:
        """Human-readable lines, one block per direction, final verdict last."""
        lines = []
        for side, label in ((self.egress, "Egress of source"),
                            (self.ingress, "Ingress of destination")):
            lines.append(f"{label} (identity {side.subject} -> peer {side.peer}): "
                         f"{side.verdict.name} - {side.reason}")
            lines += [f"    {o}" for o in side.deciding]
        lines.append(f"Final verdict: {self.to_dict()['verdict']}")
        return "\n".join(lines)


class _Members(Mapping[str, frozenset[int]]):
    """The repository's selector members plus provisional identities."""

    def __init__(self, repo: Repository, extra: dict[int, Labels]) -> None:
        self._repo = repo
        self._extra = extra

    def __getitem__(self, sid: str) -> frozenset[int]:
        members = self._repo.members(sid)
        if not self._extra or not self._repo.cache.refs(sid):
            return members
        sel = self._repo.cache.selector(sid)
        return members | {i for i, lbls in self._extra.items() if sel.matches(lbls)}

    def __iter__(self) -> Iterator[str]:
        return iter(self._repo.cache.selector_ids())

    def __len__(self) -> int:
        return len(self._repo.cache.selector_ids())


def _resolve(repo: Repository, who: Labels | int, extra: dict[int, Labels]) -> int:
    if isinstance(who, int):
        return who
    for ident, lbls in repo.identities().items():
        if lbls == who:
            return ident
    for ident, lbls in extra.items():
        if lbls == who:
            return ident
    reserved = [lbl.key for lbl in who if lbl.source == SOURCE_RESERVED]
    if len(who) == 1 and reserved and reserved[0] in RESERVED_BY_NAME:
        return RESERVED_BY_NAME[reserved[0]]
    used = set(repo.identities()) | set(extra)
    for ident in range(MAX_CLUSTER_ID, MIN_CLUSTER_ID - 1, -1):
        if ident not in used:
            extra[ident] = who
            return ident
    raise PolicyError("no free identity number for a provisional trace identity")


def identity_for_address(repo: Repository, address: str) -> int:
    """The identity an external address resolves to (its CIDR identity, or world)."""
    return lpm_identity(address, repo.prefix_entries())


def _subject_policy(repo: Repository, ident: int, extra: dict[int, Labels]) -> SubjectPolicy:
    if ident in extra:
        return SubjectPolicy(ident, repo.rules_for_labels(matching_labels(ident, extra[ident])))
    return repo.subject_policy(ident)


def _side(policy: SubjectPolicy, members: Mapping[str, frozenset[int]], peer: int,
          direction: Direction, proto: int, dport: int, named: NamedPorts | None) -> DirectionTrace:
    exp = expand(policy, members, named)
    verdict, keys = lookup(exp, peer, direction, proto, dport)
    enforced = exp.enforced(direction)
    origins = tuple(dict.fromkeys(o for k in keys for o in exp.origins[k]))
    if not enforced and verdict == Verdict.ALLOW and not origins:
        reason = "no rule makes this direction default-deny (open)"
    elif verdict == Verdict.DENY and keys:
        reason = "denied by deny rule(s)"
    elif verdict == Verdict.DENY:
        reason = "default deny: no rule allows it"
        origins = exp.enforcing[direction]
    else:
        reason = "allowed by rule(s)"
    return DirectionTrace(direction, policy.identity, peer, verdict, enforced, origins, keys,
                          reason)


def trace(src: Labels | int, dst: Labels | int, dport: int, proto: int, state: Repository,
          named_ports: NamedPorts | None = None) -> TraceResult:
    """Trace a packet from ``src`` to ``dst`` against the repository's live state.

    Args:
        src: the source's labels (e.g. ``k8s:app=frontend`` plus its namespace label) or an
            identity number (e.g. from :func:`identity_for_address`).
        dst: the destination, likewise.
        dport: destination port (0 for port-less protocols).
        proto: IP protocol number (``PROTO_TCP``...).
        state: the repository holding policies and identities.
        named_ports: identity -> port name -> {(proto, port)} for named ports.

    Returns:
        The egress verdict of the source, the ingress verdict of the destination, and the
        rules that decided each.
    """
    extra: dict[int, Labels] = {}
    src_id = _resolve(state, src, extra)
    dst_id = _resolve(state, dst, extra)
    members = _Members(state, {i: matching_labels(i, lbls) for i, lbls in extra.items()})
    egress = _side(_subject_policy(state, src_id, extra), members, dst_id, Direction.EGRESS,
                   proto, dport, named_ports)
    ingress = _side(_subject_policy(state, dst_id, extra), members, src_id, Direction.INGRESS,
                    proto, dport, named_ports)
    return TraceResult(src_id, dst_id, proto, dport, egress, ingress)


def pod_labels(labels: Mapping[str, str] | Labels, namespace: str) -> Labels:
    """A pod's identity labels as the identity service builds them (k8s source + namespace)."""
    base = labels if isinstance(labels, Labels) else Labels.from_mapping(labels)
    return base | Labels.from_mapping({POD_NAMESPACE_KEY: namespace})
