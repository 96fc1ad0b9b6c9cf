"""Folding event by event while keeping every map current and remembering, per entry, the event
that last changed it. ``replay diff`` and ``replay explain`` are built on it.

After each event only what it may have changed is recomputed, the way the agent decides what to
patch: the node reducer's :class:`~services.nodeagent.state.Dirty` says which node maps, and
policy entries are recomputed per subject (touched subjects, or every local one).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.common.contract import (
    KIND_POD,
    IdentityDelete,
    IdentityUpsert,
    IpcacheDelete,
    IpcacheUpsert,
    ObjectDelete,
    ObjectUpsert,
)
from services.common.contract.objects import object_key
from services.common.contract.policy import PolicyStatus
from services.nodeagent.state import LocalEndpoint, NodeState
from services.policy.compiler import NamedPorts, SubjectPolicy, expand
from services.policy.model import POLICY_KINDS

from .fold import Replay, Step, no_cyclic_gc, policy_ref_key
from .maps import (
    CLUSTER_SCOPE,
    FlatMap,
    all_maps,
    cluster_map,
    desired,
    flat_endpoints,
    flat_ipcache,
    flat_policy,
    lb_maps,
    local_endpoints,
    local_subjects,
    node_scope,
)
from .record import Record

MISSING: Any = None
ADDED, REMOVED, CHANGED = "added", "removed", "changed"


@dataclass(frozen=True)
class Cause:
    """The event that changed an entry."""

    record: Record
    event_type: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.record.where(), "type": self.event_type}


@dataclass(frozen=True)
class Change:
    """One entry of one map that differs between two moments, and why."""

    scope: str
    map: str
    key: str
    old: Any
    new: Any
    cause: Cause

    @property
    def kind(self) -> str:
        if self.old is MISSING:
            return ADDED
        return REMOVED if self.new is MISSING else CHANGED

    def to_dict(self) -> dict[str, Any]:
        return {"scope": self.scope, "map": self.map, "change": self.kind, "key": self.key,
                "old": self.old, "new": self.new, "event": self.cause.to_dict()}


@dataclass(frozen=True)
class Focus:
    """The entries of one node worth tracking: its pods (``namespace/name``; their endpoint
    entries and the policy of their identities) and ipcache prefixes. Tracking everything
    costs a full recomputation of a map per event that touches it; a focus makes the cost per
    event independent of the cluster's size (``replay explain`` needs a handful of entries)."""

    pods: frozenset[str]
    prefixes: frozenset[str]


def uses_named_ports(sp: SubjectPolicy) -> bool:
    """Whether any rule of the subject names a port (only those depend on named ports)."""
    return any(p.name for r in sp.rules for e in r.entries for p in e.ports)


class NamedPortsCache:
    """:meth:`NodeState.named_ports` of a node, kept up to date per pod.

    Each pod's contribution is derived by ``named_ports`` itself on a one-pod state (the pod
    and the ipcache entry of its address); the node's value is the union of contributions,
    so an event costs one pod's derivation instead of a walk over every pod.
    """

    def __init__(self, state: NodeState) -> None:
        self._contrib: dict[str, set[tuple[int, str, int, int]]] = {}
        self._pods_of_prefix: dict[str, set[str]] = {}
        self._prefix_of: dict[str, str] = {}
        self._counts: Counter[tuple[int, str, int, int]] = Counter()
        self._value: NamedPorts | None = None
        for key in list(state.pods):
            self._refresh(state, key)

    def _refresh(self, state: NodeState, key: str) -> bool:
        pod = state.pods.get(key)
        ip = str(((pod or {}).get("status") or {}).get("podIP") or "")
        was = self._prefix_of.pop(key, None)
        if was is not None:
            self._pods_of_prefix[was].discard(key)
            if not self._pods_of_prefix[was]:
                del self._pods_of_prefix[was]
        one = NodeState(state.node)
        if pod is not None and ip:
            self._prefix_of[key] = f"{ip}/32"
            self._pods_of_prefix.setdefault(f"{ip}/32", set()).add(key)
            one.pods = {key: pod}
            rec = state.ipcache.get(f"{ip}/32")
            if rec is not None:
                one.ipcache = {f"{ip}/32": rec}
        new = {(ident, name, proto, port) for ident, names in one.named_ports().items()
               for name, ports in names.items() for proto, port in ports}
        old = self._contrib.pop(key, set())
        if new:
            self._contrib[key] = new
        if new == old:
            return False
        self._counts.subtract(old)
        self._counts.update(new)
        self._value = None
        return True

    def update(self, state: NodeState, step: Step) -> bool:
        """Note an event already folded into ``state``; True if named ports changed."""
        p = step.event.payload
        if isinstance(p, ObjectUpsert | ObjectDelete) and p.kind == KIND_POD:
            return self._refresh(state, object_key(p))
        if isinstance(p, IpcacheUpsert | IpcacheDelete):
            changed = False
            for key in list(self._pods_of_prefix.get(p.prefix, ())):
                changed |= self._refresh(state, key)
            return changed
        return False

    def get(self, state: NodeState) -> NamedPorts:
        if self._value is None:
            value: dict[int, dict[str, set[tuple[int, int]]]] = {}
            for (ident, name, proto, port), n in self._counts.items():
                if n > 0:
                    value.setdefault(ident, {}).setdefault(name, set()).add((proto, port))
            self._value = value
        return self._value


class Tracker:
    """A replay whose maps are kept current after every event, with each entry's cause.

    Args:
        focus: per node, only these entries are tracked (and cluster maps are not).
    """

    def __init__(self, rp: Replay, focus: dict[str, Focus] | None = None) -> None:
        self.rp = rp
        self.focus = focus
        self.maps = all_maps(rp)
        self.cause: dict[tuple[str, str, str], Cause] = {}
        self._policy_keys: dict[str, dict[int, set[str]]] = {}
        self._local: dict[str, set[int]] = {}
        self._named = {node: NamedPortsCache(nf.state) for node, nf in rp.nodes.items()}
        # Pods of each node (the CNI's endpoints), kept up to date on Pod events.
        self._pods = {node: {ep.pod for ep in local_endpoints(nf.state, node)}
                      for node, nf in rp.nodes.items()}
        for node, nf in rp.nodes.items():
            eps = self._endpoints(node)
            self._local[node] = local_subjects(nf.state, eps)
            self._policy_keys[node] = {
                s: set(self._expand(node, s)) for s in self._local[node]}

    def snapshot(self) -> dict[str, dict[str, FlatMap]]:
        """A copy of every map now (entries are replaced, never mutated, so shallow is enough)."""
        return {scope: {m: dict(entries) for m, entries in maps.items()}
                for scope, maps in self.maps.items()}

    def fold(self, records: Sequence[Record]) -> None:
        with no_cyclic_gc():
            for rec in records:
                self.apply(rec)

    def apply(self, rec: Record) -> None:
        step = self.rp.apply(rec)
        if step is None:
            return
        cause = Cause(rec, step.event.type)
        if self.focus is None:
            self._cluster(step, cause)
        for node in self.rp.nodes:
            self._node(node, step, cause)

    # -- recomputing what an event may have changed -------------------------------------------

    def _set(self, scope: str, name: str, new: FlatMap, cause: Cause,
             only: set[str] | None = None) -> None:
        cur = self.maps[scope][name]
        keys = set(cur) | set(new) if only is None else only | set(new)
        for key in keys:
            old_v, new_v = cur.get(key, MISSING), new.get(key, MISSING)
            if old_v == new_v:
                continue
            if new_v is MISSING:
                del cur[key]
            else:
                cur[key] = new_v
            self.cause[(scope, name, key)] = cause

    def _cluster(self, step: Step, cause: Cause) -> None:
        """Re-render only the control-plane entries the event touched."""
        for name, keys in touched_keys(step).items():
            if keys:
                self._set(CLUSTER_SCOPE, name, cluster_map(self.rp, name, keys), cause,
                          only=keys)

    def _endpoints(self, node: str) -> list[LocalEndpoint]:
        focus = self.focus.get(node) if self.focus is not None else None
        return local_endpoints(self.rp.nodes[node].state, node,
                               self._pods[node] if focus is None else focus.pods)

    def _note_pod(self, node: str, step: Step) -> None:
        p = step.event.payload
        assert isinstance(p, ObjectUpsert | ObjectDelete)     # a pod event
        key = object_key(p)
        pod = self.rp.nodes[node].state.pods.get(key)
        if pod is not None and (pod.get("spec") or {}).get("nodeName") == node:
            self._pods[node].add(key)
        else:
            self._pods[node].discard(key)

    def _expand(self, node: str, subject: int) -> FlatMap:
        """The subject's policy entries (what ``NodeState.desired_policy`` computes for it,
        with the named ports kept up to date instead of recomputed)."""
        st = self.rp.nodes[node].state
        sp = st.subjects.get(subject) or SubjectPolicy(subject)
        ports = self._named[node].get(st) if uses_named_ports(sp) else None
        return flat_policy(expand(sp, st.members, ports).entries)

    def _ipcache(self, node: str, step: Step, scope: str, cause: Cause) -> None:
        st = self.rp.nodes[node].state
        focus = self.focus.get(node) if self.focus is not None else None
        if focus is None:
            self._set(scope, "ipcache", flat_ipcache(st.desired_ipcache()), cause)
            return
        # An ipcache event changes only its own prefix; a Node event, the node addresses.
        p = step.event.payload
        prefix = p.prefix if isinstance(p, IpcacheUpsert | IpcacheDelete) else None
        if prefix is not None and prefix not in focus.prefixes:
            return
        full = st.desired_ipcache()
        self._set(scope, "ipcache", flat_ipcache({p: full[p] for p in focus.prefixes
                                                  if p in full}), cause, only=set(focus.prefixes))

    def _node(self, node: str, step: Step, cause: Cause) -> None:
        nf = self.rp.nodes[node]
        scope = node_scope(node)
        dirty = step.dirty.get(node)
        if dirty is not None and (dirty or step.pod_event):
            st = nf.state
            if step.pod_event:
                self._note_pod(node, step)
            eps = self._endpoints(node)
            if dirty.ipcache:
                self._ipcache(node, step, scope, cause)
            if dirty.endpoints or step.pod_event:
                focus = self.focus.get(node) if self.focus is not None else None
                only = None if focus is None else {
                    ip for ip, v in self.maps[scope]["endpoints"].items()
                    if v["pod"] in focus.pods}
                self._set(scope, "endpoints", flat_endpoints(st.desired_endpoints(eps), eps),
                          cause, only=only)
            local = local_subjects(st, eps)
            prev = self._local[node]
            gone = prev - local
            # The agent re-expands every local subject on an ipcache or Pod event because
            # locality or named ports may have moved; a subject's entries depend only on its
            # rules, the selector members and the named ports, so re-expand the subjects whose
            # rules or members changed, those that became local, and all only when the named
            # ports did change.
            named = self._named[node]
            touched = (dirty.subjects & local) | (local - prev)
            if named.update(st, step):
                touched |= {s for s in local if s in st.subjects
                            and uses_named_ports(st.subjects[s])}
            keys = self._policy_keys[node]
            for s in touched | gone:
                new = self._expand(node, s) if s in local else {}
                self._set(scope, "policy", new, cause, only=keys.pop(s, set()))
                if new:
                    keys[s] = set(new)
            self._local[node] = local
        if step.lb_dirty.get(node) and self.focus is None:
            fronts, bes = lb_maps(nf)
            self._set(scope, "lb_services", fronts, cause)
            self._set(scope, "lb_backends", bes, cause)


def touched_keys(step: Step) -> dict[str, set[str]]:
    """The control-plane entries an event may have changed, per map."""
    p = step.event.payload
    out: dict[str, set[str]] = {}
    ch = step.changes
    if step.route.policy_in:
        out["selectors"] = set()
        out["subjects"] = set()
        out["policies"] = set()
        if isinstance(p, ObjectUpsert | ObjectDelete) and p.kind in POLICY_KINDS:
            out["policies"].add(policy_ref_key(p))
        if ch:
            out["selectors"] |= set(ch.selectors_added) | ch.selectors_removed | \
                set(ch.selector_deltas)
            out["subjects"] |= {str(i) for i in ch.subjects}
            out["policies"] |= {f"{r.kind}/{r.namespace}/{r.name}"
                                for r in ch.policies_upserted | ch.policies_deleted}
    if isinstance(p, PolicyStatus):
        out.setdefault("policies", set()).add(policy_ref_key(p))
    if isinstance(p, IdentityUpsert | IdentityDelete):
        out["identities"] = {str(p.id)}
    if isinstance(p, IpcacheUpsert | IpcacheDelete):
        out["ipcache"] = {p.prefix}
    lb = step.cluster_lb_dirty
    if lb:
        out["services"] = {str(i) for i in lb.services}
        out["backends"] = {str(i) for i in lb.backends}
    return out


def diff(before: dict[str, dict[str, FlatMap]], tracker: Tracker) -> list[Change]:
    """Entries that differ between ``before`` and the tracker's maps now, each with the event
    that last changed it (a change undone within the window is no difference)."""
    out: list[Change] = []
    for scope, maps in tracker.maps.items():
        for name, now in maps.items():
            then = before.get(scope, {}).get(name, {})
            for key in sorted(set(then) | set(now)):
                old_v, new_v = then.get(key, MISSING), now.get(key, MISSING)
                if old_v != new_v:
                    out.append(Change(scope, name, key, old_v, new_v,
                                      tracker.cause[(scope, name, key)]))
    return out


def desired_entries(rp: Replay, node: str) -> Any:
    """The typed desired entries of a node (for comparisons with kernel maps)."""
    return desired(rp.node(node))
