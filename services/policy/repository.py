"""The policy repository: policies by (kind, namespace, name), identities, and what changed.

Every mutating call returns a :class:`Changes` naming exactly what consumers must hear about:

* selectors that appeared (with their full member set) or disappeared;
* per-selector deltas of identities gained and lost;
* subjects (identities) whose :class:`~services.policy.compiler.SubjectPolicy` changed, and
  every cluster identity that appears or is relabelled, selected or not (its message says
  "the policy of this identity is computed"; agents keep an endpoint at deny-all until then);
* ipcache prefix entries (CIDR identities, learned ``toFQDNs`` addresses among them) that
  appeared or disappeared;
* policies upserted or deleted.

It is incremental: adding an identity touches only the selectors that match it (and the
identity itself as a subject); upserting or deleting a policy touches only the subjects its old
and new versions select and the selectors they use; learning a name's addresses touches only
those addresses' identities (:mod:`services.policy.fqdn`). Validation happens before anything is
touched (:meth:`Repository.apply` parses first), so a bad new version leaves the previous one
in force. The state is a pure function of the sequence of calls, so replicas consuming the same
ordered stream agree (selector ids are content hashes, CIDR identities are prefix hashes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from services.common.contract import FqdnNames
from services.common.identities import LOCAL_IDENTITY_FLAG, is_cluster
from services.common.labels import Labels

from .cidr import CIDRAllocator, cidr_labels, matching_labels
from .compiler import (
    CompiledRule,
    SubjectPolicy,
    compile_rule,
    rule_fqdns,
    rule_prefixes,
    rule_selectors,
)
from .errors import PolicyError
from .fqdn import LearnedNames, fqdn_label
from .fqdnmatch import NameMatcher, dns_matcher, normalize
from .model import Policy, PolicyRef
from .selector import EndpointSelector
from .selectorcache import SelectorCache, SelectorDelta
from .validate import DEFAULT_NAMESPACE, parse_policy

RuleKey = tuple[PolicyRef, int]   # (policy, spec index)
HOST_PREFIX = "/32"               # a learned (IPv4) address's prefix length


@dataclass
class Changes:
    """What one repository call changed (empty if nothing did)."""

    revision: int = 0
    selectors_added: dict[str, tuple[EndpointSelector, frozenset[int]]] = field(
        default_factory=dict)
    selectors_removed: set[str] = field(default_factory=set)
    selector_deltas: dict[str, SelectorDelta] = field(default_factory=dict)
    subjects: set[int] = field(default_factory=set)
    prefixes_added: dict[str, int] = field(default_factory=dict)
    prefixes_removed: dict[str, int] = field(default_factory=dict)
    policies_upserted: set[PolicyRef] = field(default_factory=set)
    policies_deleted: set[PolicyRef] = field(default_factory=set)

    def __bool__(self) -> bool:
        return any((self.selectors_added, self.selectors_removed, self.selector_deltas,
                    self.subjects, self.prefixes_added, self.prefixes_removed,
                    self.policies_upserted, self.policies_deleted))

    def add_deltas(self, deltas: dict[str, SelectorDelta]) -> None:
        """Fold selector deltas in (into a selector's full set if it is new in this change)."""
        for sid, d in deltas.items():
            if sid in self.selectors_added:
                sel, members = self.selectors_added[sid]
                self.selectors_added[sid] = (sel, (members | d.added) - d.removed)
                continue
            prev = self.selector_deltas.get(sid)
            if prev is not None:
                added = (prev.added - d.removed) | (d.added - prev.removed)
                removed = (prev.removed - d.added) | (d.removed - prev.added)
                d = SelectorDelta(frozenset(added), frozenset(removed))
            if d.added or d.removed:
                self.selector_deltas[sid] = d
            else:
                self.selector_deltas.pop(sid, None)


class Repository:
    """Policies, identities and the selector cache; the policy service's whole state."""

    def __init__(self) -> None:
        self.cache = SelectorCache()
        self.cidrs = CIDRAllocator()
        self.revision = 0
        self._policies: dict[PolicyRef, Policy] = {}
        self._policy_revisions: dict[PolicyRef, int] = {}
        self._compiled: dict[RuleKey, CompiledRule] = {}
        self._rules_by_subject_sel: dict[str, set[RuleKey]] = {}
        self._identities: dict[int, Labels] = {}
        self._subjects: dict[int, SubjectPolicy] = {}
        self._subject_keys: dict[int, set[RuleKey]] = {}
        self._learned = LearnedNames()
        # toFQDNs names and patterns in use: text -> (matcher, how many rule entries use it)
        self._fqdns: dict[str, tuple[NameMatcher, int]] = {}

    # -- policies -------------------------------------------------------------------------

    def apply(self, doc: Any, default_namespace: str = DEFAULT_NAMESPACE) -> Changes:
        """Validate a YAML-loaded policy document, then upsert it.

        Raises:
            PolicyValidationError: nothing was changed.
        """
        return self.upsert(parse_policy(doc, default_namespace))

    def upsert(self, policy: Policy) -> Changes:
        """Insert or replace a validated policy; return what changed."""
        old = self._policies.get(policy.ref)
        if old == policy:
            return Changes(self.revision)
        ch = self._begin()
        # New references before old releases, so shared selectors and prefixes never blink.
        self._acquire(policy, ch)
        touched = self._unindex(old) if old else set()
        touched |= self._index(policy)
        if old:
            self._release(old, ch)
        self._policies[policy.ref] = policy
        self._policy_revisions[policy.ref] = ch.revision
        ch.policies_upserted.add(policy.ref)
        self._refresh_subjects(touched, ch)
        return ch

    def delete(self, ref: PolicyRef) -> Changes:
        """Delete a policy (unknown refs change nothing); return what changed."""
        old = self._policies.pop(ref, None)
        if old is None:
            return Changes(self.revision)
        ch = self._begin()
        del self._policy_revisions[ref]
        touched = self._unindex(old)
        self._release(old, ch)
        ch.policies_deleted.add(ref)
        self._refresh_subjects(touched, ch)
        return ch

    def _begin(self) -> Changes:
        self.revision += 1
        return Changes(self.revision)

    def _acquire(self, policy: Policy, ch: Changes) -> None:
        # CIDR identities and their fqdn labels first, so that new CIDR and FQDN selectors
        # start with them as members.
        for rule in policy.rules:
            for prefix in rule_prefixes(rule):
                self._take_prefix(prefix, ch)
        for rule in policy.rules:
            for text in rule_fqdns(rule):
                matcher, refs = self._fqdns.get(text) or (dns_matcher(text), 0)
                self._fqdns[text] = (matcher, refs + 1)
                if not refs:
                    self._relabel_learned(matcher, ch)
        for rule in policy.rules:
            for sel in rule_selectors(rule).values():
                members, new = self.cache.add_selector(sel)
                if new:
                    ch.selectors_removed.discard(sel.id)
                    ch.selectors_added[sel.id] = (sel, members)

    def _release(self, policy: Policy, ch: Changes) -> None:
        for rule in policy.rules:
            for sid in rule_selectors(rule):
                if self.cache.remove_selector(sid):
                    ch.selector_deltas.pop(sid, None)
                    if ch.selectors_added.pop(sid, None) is None:
                        ch.selectors_removed.add(sid)
        for rule in policy.rules:
            for text in rule_fqdns(rule):
                matcher, refs = self._fqdns[text]
                if refs > 1:
                    self._fqdns[text] = (matcher, refs - 1)
                else:
                    del self._fqdns[text]
                    self._relabel_learned(matcher, ch)
        for rule in policy.rules:
            for prefix in rule_prefixes(rule):
                self._drop_prefix(prefix, ch)

    # Prefix identities are shared by toCIDR rules and learned addresses (refcounted), and
    # their labels always include the fqdn labels of the names their address was learned
    # under, whoever allocated them.

    def _take_prefix(self, prefix: str, ch: Changes) -> set[int]:
        ident, new = self.cidrs.acquire(prefix)
        if not new:
            return set()
        if ch.prefixes_removed.pop(prefix, None) is None:
            ch.prefixes_added[prefix] = ident
        return self._identity_deltas(self.cache.add_identity(ident, self._prefix_labels(prefix)),
                                     ch)

    def _drop_prefix(self, prefix: str, ch: Changes) -> set[int]:
        ident = self.cidrs.release(prefix)
        if ident is None:
            return set()
        if ch.prefixes_added.pop(prefix, None) is None:
            ch.prefixes_removed[prefix] = ident
        return self._identity_deltas(self.cache.remove_identity(ident), ch)

    def _prefix_labels(self, prefix: str) -> Labels:
        """A prefix identity's labels: ``cidr:`` ones, plus ``fqdn:`` ones for a learned
        address (one per name or pattern in use that matches a name it was learned under)."""
        labels = cidr_labels(prefix)
        if not prefix.endswith(HOST_PREFIX):
            return labels
        names = self._learned.names(prefix.removesuffix(HOST_PREFIX))
        return labels | [fqdn_label(text) for text, (m, _) in self._fqdns.items()
                         if any(m.matches(n) for n in names)]

    def _relabel(self, prefix: str, ch: Changes) -> set[int]:
        """Give a prefix identity its current labels; return the subjects touched."""
        ident = self.cidrs.identity(prefix)
        assert ident is not None
        return self._identity_deltas(self.cache.add_identity(ident, self._prefix_labels(prefix)),
                                     ch)

    def _relabel_learned(self, matcher: NameMatcher, ch: Changes) -> None:
        """Relabel the learned addresses with a name ``matcher`` matches (it came or went).

        Subjects are not refreshed: only identities without rules (CIDR ones) change.
        """
        for ip in self._learned.ips():
            if any(matcher.matches(n) for n in self._learned.names(ip)):
                self._relabel(ip + HOST_PREFIX, ch)

    def _index(self, policy: Policy) -> set[int]:
        """Register a policy's compiled rules under their subjects; return those subjects."""
        touched: set[int] = set()
        for rule in policy.rules:
            key = (policy.ref, rule.index)
            self._compiled[key] = compile_rule(policy.ref, rule)
            self._rules_by_subject_sel.setdefault(rule.subject.id, set()).add(key)
            for ident in self.cache.members(rule.subject.id):
                self._subject_keys.setdefault(ident, set()).add(key)
                touched.add(ident)
        return touched

    def _unindex(self, policy: Policy) -> set[int]:
        touched: set[int] = set()
        for rule in policy.rules:
            key = (policy.ref, rule.index)
            del self._compiled[key]
            keys = self._rules_by_subject_sel[rule.subject.id]
            keys.discard(key)
            if not keys:
                del self._rules_by_subject_sel[rule.subject.id]
            for ident in self.cache.members(rule.subject.id):
                self._subject_keys[ident].discard(key)
                touched.add(ident)
        return touched

    def _identity_deltas(self, deltas: dict[str, SelectorDelta], ch: Changes) -> set[int]:
        """Record selector deltas; move subjects in and out of the rules they select."""
        ch.add_deltas(deltas)
        touched: set[int] = set()
        for sid, delta in deltas.items():
            for key in self._rules_by_subject_sel.get(sid, ()):
                for ident in delta.added:
                    self._subject_keys.setdefault(ident, set()).add(key)
                for ident in delta.removed:
                    self._subject_keys.get(ident, set()).discard(key)
                touched |= delta.added | delta.removed
        return touched

    def _refresh_subjects(self, touched: set[int], ch: Changes) -> None:
        for ident in touched:
            keys = self._subject_keys.get(ident, set())
            if not keys:
                self._subject_keys.pop(ident, None)
            rules = tuple(sorted(self._compiled[k] for k in keys))
            old = self._subjects.get(ident)
            if (old.rules if old is not None else ()) == rules:
                continue
            if rules:
                self._subjects[ident] = SubjectPolicy(ident, rules, ch.revision)
            else:
                self._subjects.pop(ident, None)
            ch.subjects.add(ident)

    # -- identities -----------------------------------------------------------------------

    def add_identity(self, identity: int, labels: Labels) -> Changes:
        """An identity appeared (or was relabelled); return what changed.

        Raises:
            PolicyError: ``identity`` is in the local (CIDR) scope, which this service owns.
        """
        if identity >= LOCAL_IDENTITY_FLAG or identity <= 0:
            raise PolicyError(f"identity {identity} is not a cluster or reserved identity")
        if self._identities.get(identity) == labels:
            return Changes(self.revision)
        ch = self._begin()
        self._identities[identity] = labels
        deltas = self.cache.add_identity(identity, matching_labels(identity, labels))
        touched = self._identity_deltas(deltas, ch)
        self._refresh_subjects(touched | {identity}, ch)
        if is_cluster(identity):
            # Its policy is computed now, rules or none: consumers must hear it either way.
            ch.subjects.add(identity)
        return ch

    def remove_identity(self, identity: int) -> Changes:
        """An identity went away; return what changed (nothing if it was unknown)."""
        if self._identities.pop(identity, None) is None:
            return Changes(self.revision)
        ch = self._begin()
        touched = self._identity_deltas(self.cache.remove_identity(identity), ch)
        self._refresh_subjects(touched | {identity}, ch)
        return ch

    # -- learned names --------------------------------------------------------------------

    def learn(self, payload: FqdnNames) -> Changes:
        """What a node's DNS proxy knows a name resolves to now (no address: it forgot the
        name); return what changed.

        Every learned address holds a reference on its ``/32`` CIDR identity, labelled for
        the ``toFQDNs`` names and patterns matching its names on any node (selectors see the
        union over nodes; Cilium scopes them per node).
        """
        name = normalize(payload.name)
        old = self._learned.addresses(payload.node, name)
        new = frozenset(a.ip for a in payload.addresses)
        if old == new:
            return Changes(self.revision)
        ch = self._begin()
        held = {ip for ip in old | new if self._learned.names(ip)}
        self._learned.set(payload.node, name, new)
        touched: set[int] = set()
        # Sorted: allocation order decides CIDR identity collisions, replicas must agree.
        for ip in sorted(old | new):
            prefix = ip + HOST_PREFIX
            if not self._learned.names(ip):
                touched |= self._drop_prefix(prefix, ch)
                if self.cidrs.identity(prefix) is not None:   # a toCIDR rule holds it too
                    touched |= self._relabel(prefix, ch)
            else:
                if ip not in held:
                    touched |= self._take_prefix(prefix, ch)
                # its names changed, or a toCIDR rule had allocated it with cidr labels only
                touched |= self._relabel(prefix, ch)
        self._refresh_subjects(touched, ch)
        return ch

    def learned(self) -> dict[str, frozenset[str]]:
        """Every learned address with the names it was learned under (on any node)."""
        return {ip: self._learned.names(ip) for ip in self._learned.ips()}

    def learned_sources(self, ip: str) -> list[tuple[str, str]]:
        """The (node, name) pairs whose DNS proxy holds ``ip`` now, sorted (``replay
        explain`` cites the ``fqdn.names`` event of each)."""
        return self._learned.sources(ip)

    # -- queries --------------------------------------------------------------------------

    def policies(self) -> Iterator[Policy]:
        """Every policy, in (kind, namespace, name) order."""
        for ref in sorted(self._policies):
            yield self._policies[ref]

    def policy(self, ref: PolicyRef) -> Policy | None:
        """The policy stored under ``ref``, or None."""
        return self._policies.get(ref)

    def policy_revision(self, ref: PolicyRef) -> int:
        """The revision at which ``ref`` was last upserted."""
        return self._policy_revisions[ref]

    def identities(self) -> dict[int, Labels]:
        """The cluster and reserved identities this repository was told about."""
        return dict(self._identities)

    def subject_policy(self, identity: int) -> SubjectPolicy:
        """The compiled rules of a subject (no rules: open both ways)."""
        return self._subjects.get(identity) or SubjectPolicy(identity, (), self.revision)

    def subjects(self) -> dict[int, SubjectPolicy]:
        """Every subject identity that some rule selects, with its compiled rules."""
        return dict(self._subjects)

    def computed_subjects(self) -> dict[int, SubjectPolicy]:
        """Every subject the service publishes a policy for: each cluster identity (empty
        rules when no rule selects it) and each other identity some rule selects."""
        out = {i: self.subject_policy(i) for i in self._identities if is_cluster(i)}
        out.update(self._subjects)
        return out

    def identity_labels(self, identity: int) -> Labels | None:
        """The labels of a known cluster or reserved identity, or None."""
        return self._identities.get(identity)

    def members(self, selector_id: str) -> frozenset[int]:
        """The identities a selector matches now."""
        return self.cache.members(selector_id)

    def prefix_entries(self) -> dict[str, int]:
        """ipcache prefix entries for CIDR identities: prefix -> identity."""
        return self.cidrs.entries()

    def compiled_rules(self) -> list[CompiledRule]:
        """Every compiled rule, in (policy, spec index) order."""
        return [self._compiled[k] for k in sorted(self._compiled)]

    def rules_for_labels(self, labels: Labels) -> tuple[CompiledRule, ...]:
        """The compiled rules whose subject selects ``labels`` (for hypothetical endpoints)."""
        return tuple(sorted(self._compiled[k] for sid, keys in self._rules_by_subject_sel.items()
                            if self.cache.selector(sid).matches(labels) for k in keys))
