"""Folding event by event while keeping every map current and remembering, per entry, the event
that last changed it. ``replay diff`` and ``replay explain`` are built on it.

After each event only what it may have changed is recomputed, the way the agent decides what to
patch: the node reducer's :class:`~services.nodeagent.state.Dirty` says which node maps, and
policy entries are recomputed per subject (touched subjects, or every local one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.nodeagent.state import LocalEndpoint, NodeState
from services.policy.compiler import NamedPorts, SubjectPolicy, expand

from .fold import Replay, Step, no_cyclic_gc
from .maps import (
    CLUSTER_RENDER,
    CLUSTER_SCOPE,
    FlatMap,
    all_maps,
    cluster_ipcache,
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
POLICY_MAPS = ("policies", "selectors", "subjects")
LB_MAPS = ("services", "backends")


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


class NamedPortsCache:
    """:meth:`NodeState.named_ports` of a node, recomputed only when it may have changed:
    when a pod with named container ports changes, or the ipcache entry of its address."""

    def __init__(self, state: NodeState) -> None:
        self._ips: dict[str, str] = {}       # pod key -> address, for pods with named ports
        for key, pod in state.pods.items():
            self._track(key, pod)
        self._value: NamedPorts | None = None

    def _track(self, key: str, pod: dict[str, Any] | None) -> None:
        self._ips.pop(key, None)
        if pod is not None and any("name" in p for c in (pod.get("spec") or {}).get(
                "containers") or [] for p in c.get("ports") or []):
            self._ips[key] = str((pod.get("status") or {}).get("podIP") or "")

    def update(self, state: NodeState, step: Step) -> bool:
        """Note an event already folded into ``state``; True if named ports may differ."""
        data = step.event.data
        if step.pod_event:
            key = f"{data['namespace']}/{data['name']}" if data["namespace"] else data["name"]
            before = self._ips.get(key)
            self._track(key, state.pods.get(key))
            changed = before is not None or key in self._ips
        elif step.event.type.startswith("ipcache."):
            prefix = data["prefix"]
            changed = any(prefix == f"{ip}/32" for ip in self._ips.values())
        else:
            changed = False
        if changed:
            self._value = None
        return changed

    def get(self, state: NodeState) -> NamedPorts:
        if self._value is None:
            self._value = state.named_ports()
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
        for node, nf in rp.nodes.items():
            eps = self._endpoints(node)
            self._local[node] = local_subjects(nf.state, eps)
            self._policy_keys[node] = {
                s: set(flat_policy(nf.state.desired_policy({s}))) for s in self._local[node]}

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
        rp, etype = self.rp, step.event.type
        if step.route.policy_in or step.route.policy_out:
            for name in POLICY_MAPS:
                self._set(CLUSTER_SCOPE, name, CLUSTER_RENDER[name](rp), cause)
        if etype.startswith("identity."):
            self._set(CLUSTER_SCOPE, "identities", CLUSTER_RENDER["identities"](rp), cause)
        if etype.startswith("ipcache."):
            self._set(CLUSTER_SCOPE, "ipcache", cluster_ipcache(rp), cause)
        if step.route.lb:
            for name in LB_MAPS:
                self._set(CLUSTER_SCOPE, name, CLUSTER_RENDER[name](rp), cause)

    def _endpoints(self, node: str) -> list[LocalEndpoint]:
        focus = self.focus.get(node) if self.focus is not None else None
        return local_endpoints(self.rp.nodes[node].state, node,
                               None if focus is None else focus.pods)

    def _ipcache(self, node: str, step: Step, scope: str, cause: Cause) -> None:
        st = self.rp.nodes[node].state
        focus = self.focus.get(node) if self.focus is not None else None
        if focus is None:
            self._set(scope, "ipcache", flat_ipcache(st.desired_ipcache()), cause)
            return
        # An ipcache event changes only its own prefix; a Node event, the node addresses.
        prefix = step.event.data.get("prefix") if step.event.type.startswith("ipcache.") \
            else None
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
                touched = local
            keys = self._policy_keys[node]
            ports = named.get(st)
            for s in touched | gone:
                sp = st.subjects.get(s) or SubjectPolicy(s)
                new = flat_policy(expand(sp, st.members, ports).entries) if s in local else {}
                self._set(scope, "policy", new, cause, only=keys.pop(s, set()))
                if new:
                    keys[s] = set(new)
            self._local[node] = local
        if step.lb_dirty.get(node) and self.focus is None:
            fronts, bes = lb_maps(nf)
            self._set(scope, "lb_services", fronts, cause)
            self._set(scope, "lb_backends", bes, cause)


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
