"""Compile rules into per-subject rule sets over selector ids, and expand them into map entries.

Two halves, both pure:

* :func:`compile_rule` turns one model :class:`~services.policy.model.Rule` into a
  :class:`CompiledRule` whose peers are selector ids. A subject identity's
  :class:`SubjectPolicy` is the sorted tuple of the compiled rules selecting it; it changes only
  when the set of rules selecting the subject changes, never when peers come and go (that is
  the selectors' deltas). This is what the service publishes per identity.
* :func:`expand` turns a :class:`SubjectPolicy` plus selector members into the logical policy
  map entries (:class:`~services.common.policytypes.PolicyKey` -> Verdict). The agent and the
  trace tool both call it, and :func:`lookup` is the one definition of how a packet matches
  them, so the trace and the datapath cannot disagree.

Semantics of the entries (self-contained: no other flag is needed to enforce them):

* A direction that no selecting rule makes default-deny gets a wildcard allow entry
  ``(subject, ANY_PEER, dir, ANY_PROTO, 0, 0) -> ALLOW``; a subject with no rules at all is
  therefore open both ways, and an enforced direction simply has no wildcard.
* Allows are a union; the same key from an allow and a deny is DENY, and :func:`lookup` checks
  every matching deny before any allow, so a deny on a wider key still wins.
* Named ports are resolved against the *destination* endpoint's container ports, as Cilium
  does: the subject's own ports for ingress, each peer's ports for egress (the union over all
  identities for an egress rule that names no peer). ``named_ports`` maps identity -> port name
  -> {(proto, port)}; a name nobody declares allows nothing.
* A ``toFQDNs`` peer is the selector of its name or pattern (:func:`~services.policy.fqdn.
  fqdn_selector`), whose members are the CIDR identities of the addresses the nodes' DNS
  proxies learned for matching names (:mod:`services.policy.fqdn`); the entry also keeps the
  texts (``fqdns``). Before anything is learned it selects nobody, and its section still makes
  the direction default-deny, as in Cilium.
* ``dns`` on an entry is what its port-53 traffic may ask (:attr:`~services.policy.model.
  PeerRule.dns`): None for every name, else normalized names and patterns that the agent's
  DNS proxy rebuilds with :func:`~services.policy.fqdnmatch.dns_matcher`. The map entries are
  the same either way; the proxy answers (or refuses) the queries.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack

from services.common.contract.policy import CompiledRuleDoc, PolicyRules, RuleEntry, compiled_rule
from services.common.policytypes import ANY_PEER, ANY_PORT, ANY_PROTO, Direction, PolicyKey, Verdict

from .cidr import cidr_selector
from .fqdn import fqdn_selector
from .model import PolicyRef, PortRule, Rule, Section
from .selector import EndpointSelector

NamedPorts = Mapping[int, Mapping[str, Collection[tuple[int, int]]]]
SUBJECT_SCHEMA = 1  # version of the SubjectPolicy dict form


class RuleOrigin(NamedTuple):
    """Which rule an entry came from: policy, spec index, section and index in the section."""

    kind: str
    namespace: str
    name: str
    rule: int
    section: str
    position: int

    @property
    def policy(self) -> PolicyRef:
        """The policy this origin belongs to."""
        return PolicyRef(self.kind, self.namespace, self.name)

    def __str__(self) -> str:
        where = f"{self.section}[{self.position}]" if self.section else "default-deny"
        return f"{self.policy} rule {self.rule} {where}"


@dataclass(frozen=True, order=True)
class CompiledEntry:
    """One peer rule with selector ids: the peers (or any peer), on the ports."""

    origin: RuleOrigin
    any_peer: bool
    selectors: tuple[str, ...]
    ports: tuple[PortRule, ...]
    fqdns: tuple[str, ...] = ()
    dns: tuple[str, ...] | None = None

    @property
    def section(self) -> Section:
        """The section (direction, allow or deny) of this entry."""
        return Section(self.origin.section)

    def to_dict(self) -> dict[str, Any]:
        """msgpack-friendly form."""
        out: dict[str, Any] = {
            "section": self.origin.section, "index": self.origin.position,
            "any_peer": self.any_peer, "selectors": list(self.selectors),
            "ports": [p.to_list() for p in self.ports], "fqdns": list(self.fqdns)}
        if self.dns is not None:    # absent: every name (and the bytes of older entries)
            out["dns"] = list(self.dns)
        return out


@dataclass(frozen=True, order=True)
class CompiledRule:
    """One policy rule (``spec``) compiled against selector ids."""

    origin: RuleOrigin            # section "" / index -1: the rule as a whole
    subject: str                  # selector id of the endpoints it applies to
    default_deny_ingress: bool
    default_deny_egress: bool
    entries: tuple[CompiledEntry, ...]

    def selector_ids(self) -> set[str]:
        """Every selector id referred to."""
        return {self.subject, *(s for e in self.entries for s in e.selectors)}

    def default_deny(self, direction: Direction) -> bool:
        """Whether this rule makes ``direction`` default-deny."""
        return self.default_deny_ingress if direction == Direction.INGRESS \
            else self.default_deny_egress

    def to_dict(self) -> dict[str, Any]:
        """msgpack-friendly form."""
        o = self.origin
        return {"kind": o.kind, "namespace": o.namespace, "name": o.name, "rule": o.rule,
                "subject": self.subject, "default_deny_ingress": self.default_deny_ingress,
                "default_deny_egress": self.default_deny_egress,
                "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def from_doc(cls, doc: CompiledRuleDoc) -> CompiledRule:
        """Rebuild from the bus's typed rule (:func:`~services.common.contract.policy.
        compiled_rule`)."""
        def entry(e: RuleEntry) -> CompiledEntry:
            origin = RuleOrigin(doc.kind, doc.namespace, doc.name, doc.rule, e.section, e.index)
            return CompiledEntry(origin, e.any_peer, tuple(e.selectors),
                                 tuple(PortRule(*p) for p in e.ports), tuple(e.fqdns),
                                 None if e.dns is None else tuple(e.dns))
        return cls(RuleOrigin(doc.kind, doc.namespace, doc.name, doc.rule, "", -1),
                   doc.subject, doc.default_deny_ingress, doc.default_deny_egress,
                   tuple(entry(e) for e in doc.entries))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CompiledRule:
        """Rebuild from :meth:`to_dict` output (an agent's saved state), checked as the bus
        checks it.

        Raises:
            msgspec.ValidationError: ``doc`` is not a compiled rule.
        """
        return cls.from_doc(compiled_rule(msgpack.packb(doc)))


@dataclass(frozen=True)
class SubjectPolicy:
    """Everything that applies to one subject identity; published per identity."""

    identity: int
    rules: tuple[CompiledRule, ...] = ()
    revision: int = field(default=0, compare=False)

    def enforced(self, direction: Direction) -> bool:
        """Whether ``direction`` is default-deny for this subject."""
        return any(r.default_deny(direction) for r in self.rules)

    def selector_ids(self) -> set[str]:
        """Every selector id referred to."""
        return set().union(*(r.selector_ids() for r in self.rules)) if self.rules else set()

    def to_dict(self) -> dict[str, Any]:
        """msgpack-friendly form (what the service publishes for this identity)."""
        return {"schema": SUBJECT_SCHEMA, "identity": self.identity, "revision": self.revision,
                "ingress_enforced": self.enforced(Direction.INGRESS),
                "egress_enforced": self.enforced(Direction.EGRESS),
                "rules": [r.to_dict() for r in self.rules]}

    @classmethod
    def from_payload(cls, payload: PolicyRules) -> SubjectPolicy:
        """Rebuild from a ``policy.rules`` message's typed payload."""
        return cls(payload.identity,
                   tuple(CompiledRule.from_doc(compiled_rule(r)) for r in payload.rules),
                   payload.revision)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SubjectPolicy:
        """Rebuild from :meth:`to_dict` output (an agent's saved state)."""
        return cls(doc["identity"], tuple(CompiledRule.from_dict(r) for r in doc["rules"]),
                   doc["revision"])


def rule_selectors(rule: Rule) -> dict[str, EndpointSelector]:
    """Every selector a rule needs in the selector cache (subject, peers, CIDR and FQDN
    peers)."""
    out = {rule.subject.id: rule.subject}
    for peer in rule.peers:
        for sel in (*peer.endpoints, *(cidr_selector(c) for c in peer.cidrs),
                    *(fqdn_selector(f.text) for f in peer.fqdns)):
            out[sel.id] = sel
    return out


def rule_prefixes(rule: Rule) -> list[str]:
    """Every prefix a rule needs a CIDR identity for (excepts included), with repeats."""
    return [p for peer in rule.peers for c in peer.cidrs for p in c.prefixes()]


def rule_fqdns(rule: Rule) -> list[str]:
    """Every ``toFQDNs`` name or pattern (normalized text) of a rule, with repeats."""
    return [f.text for peer in rule.peers for f in peer.fqdns]


def compile_rule(ref: PolicyRef, rule: Rule) -> CompiledRule:
    """Compile one model rule into selector ids."""
    entries = []
    for peer in rule.peers:
        fqdns = tuple(f.text for f in peer.fqdns)
        sels = sorted({*(s.id for s in peer.endpoints),
                       *(cidr_selector(c).id for c in peer.cidrs),
                       *(fqdn_selector(t).id for t in fqdns)})
        origin = RuleOrigin(*ref, rule.index, peer.section.value, peer.index)
        entries.append(CompiledEntry(origin, peer.any_peer, tuple(sels), peer.ports, fqdns,
                                     peer.dns))
    return CompiledRule(RuleOrigin(*ref, rule.index, "", -1), rule.subject.id,
                        rule.default_deny_ingress, rule.default_deny_egress, tuple(entries))


@dataclass
class Expansion:
    """The map entries of one subject, with the rules behind each entry."""

    entries: dict[PolicyKey, Verdict]
    origins: dict[PolicyKey, tuple[RuleOrigin, ...]]
    enforcing: dict[Direction, tuple[RuleOrigin, ...]]

    def enforced(self, direction: Direction) -> bool:
        """Whether ``direction`` is default-deny for this subject."""
        return bool(self.enforcing[direction])


def _ports(rule_ports: tuple[PortRule, ...], owners: Iterable[int],
           named_ports: NamedPorts) -> set[tuple[int, int, int]]:
    if not rule_ports:
        return {(ANY_PROTO, ANY_PORT, ANY_PORT)}
    out: set[tuple[int, int, int]] = set()
    for p in rule_ports:
        if not p.name:
            out.add((p.proto, p.port, p.end_port))
            continue
        for owner in owners:
            for proto, port in named_ports.get(owner, {}).get(p.name, ()):
                if p.proto in (ANY_PROTO, proto):
                    out.add((proto, port, port))
    return out


def expand(policy: SubjectPolicy, members: Mapping[str, Collection[int]],
           named_ports: NamedPorts | None = None,
           peers: Collection[int] | None = None) -> Expansion:
    """Expand a subject's rules x selector members into policy map entries.

    Args:
        policy: the subject's compiled rules.
        members: selector id -> identities it matches (the selector cache's view).
        named_ports: identity -> port name -> {(proto, port)} (see the module doc).
        peers: only produce the entries whose peer is one of these identities (never the
            any-peer entries). The entries of a peer depend only on which selectors hold it,
            so on a selector delta the agent re-expands just the added and removed peers:
            ``expand(..., peers=added | removed)`` is exactly the full expansion's entries for
            those peers, to diff against what the map holds for them.

    Returns:
        The entries (deny wins per key) with their origins and the enforcing rules.
    """
    named = named_ports or {}
    subject = policy.identity
    entries: dict[PolicyKey, Verdict] = {}
    origins: dict[PolicyKey, tuple[RuleOrigin, ...]] = {}
    enforcing = {d: tuple(r.origin for r in policy.rules if r.default_deny(d)) for d in Direction}
    only = None if peers is None else set(peers)
    for d in Direction:
        if not enforcing[d] and only is None:
            entries[PolicyKey(subject, ANY_PEER, d, ANY_PROTO, ANY_PORT, ANY_PORT)] = Verdict.ALLOW
            origins[PolicyKey(subject, ANY_PEER, d, ANY_PROTO, ANY_PORT, ANY_PORT)] = ()
    for rule in policy.rules:
        for entry in rule.entries:
            section = entry.section
            verdict = Verdict.DENY if section.deny else Verdict.ALLOW
            direction = section.direction
            if entry.any_peer:
                targets: Iterable[int] = (ANY_PEER,) if only is None else ()
            elif only is not None:
                targets = {p for p in only if any(p in members.get(s, ()) for s in entry.selectors)}
            else:
                targets = set().union(*(members.get(s, ()) for s in entry.selectors)) \
                    if entry.selectors else set()
            named_only = any(p.name for p in entry.ports)
            fixed = None if named_only else _ports(entry.ports, (), named)
            for peer in targets:
                ports = fixed
                if ports is None:
                    if direction == Direction.INGRESS:
                        owners: Iterable[int] = (subject,)
                    else:
                        owners = named if peer == ANY_PEER else (peer,)
                    ports = _ports(entry.ports, owners, named)
                for proto, port, end in ports:
                    key = PolicyKey(subject, peer, direction, proto, port, end)
                    if key not in entries:
                        entries[key] = verdict
                        origins[key] = (entry.origin,)
                    else:
                        _put(entries, origins, key, verdict, entry.origin)
    return Expansion(entries, origins, enforcing)


def _put(entries: dict[PolicyKey, Verdict], origins: dict[PolicyKey, tuple[RuleOrigin, ...]],
         key: PolicyKey, verdict: Verdict, origin: RuleOrigin) -> None:
    prev = entries.get(key)
    if prev is None or (prev == Verdict.ALLOW and verdict == Verdict.DENY):
        entries[key] = verdict
        origins[key] = (origin,)
    elif prev == verdict and origin not in origins[key]:
        origins[key] = (*origins[key], origin)


def key_matches(key: PolicyKey, peer: int, direction: int, proto: int, port: int) -> bool:
    """True if a packet (peer identity, direction, protocol, destination port) hits ``key``."""
    return (key.direction == direction and key.peer in (ANY_PEER, peer)
            and key.proto in (ANY_PROTO, proto)
            and (key.port == ANY_PORT or key.port <= port <= key.end_port))


def lookup(expansion: Expansion, peer: int, direction: Direction, proto: int,
           port: int) -> tuple[Verdict, tuple[PolicyKey, ...]]:
    """The verdict for one packet, and the entries that decided it (none: default deny).

    Every matching deny wins over every matching allow; no match is a drop (an open direction
    always has its wildcard allow entry).
    """
    hits = [k for k in expansion.entries if key_matches(k, peer, direction, proto, port)]
    denies = tuple(k for k in hits if expansion.entries[k] == Verdict.DENY)
    if denies:
        return Verdict.DENY, denies
    allows = tuple(k for k in hits if expansion.entries[k] == Verdict.ALLOW)
    if allows:
        return Verdict.ALLOW, allows
    return Verdict.DENY, ()
