"""Folding a history with the reducers the services and the agents run.

* the policy service's own reducers (:mod:`services.policy.reducer`): its input reducer into a
  repository over the service's inputs, and its :class:`BusView` over its outputs;
* the node agent's :class:`~services.nodeagent.state.NodeState` over the agent's inputs, one
  for the cluster-wide view and one per node asked about;
* the agent's :class:`~services.nodeagent.lbstate.LbNodeState` over the lb inputs.

Each part sees only the subjects its service subscribes to (the very subscriptions the
services use, :mod:`services.common.contract.consumers`), in stream order, so the folded state
is what they held after that sequence. The pure renderings of the folded state live in
:mod:`services.replay.maps`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from services.common.codec import Event, decode
from services.common.contract import (
    AGENT_INPUTS,
    AGENT_LB_INPUTS,
    KIND_POD,
    POLICY_INPUTS,
    POLICY_OUTPUTS,
    ObjectDelete,
    ObjectUpsert,
)
from services.common.contract.policy import PolicyStatus
from services.common.errors import CodecError
from services.nodeagent.lbstate import LbDirty, LbNodeState
from services.nodeagent.state import Dirty, NodeState
from services.policy.errors import PolicyError
from services.policy.model import POLICY_KINDS
from services.policy.reducer import BusView, reduce_input
from services.policy.repository import Changes, Repository

from .record import Record

log = logging.getLogger(__name__)

CLUSTER = ""    # node name of the cluster-wide NodeState (no node is local)


@dataclass(frozen=True)
class Route:
    """Which reducers a subject reaches (the services' subscription filters)."""

    policy_in: bool
    policy_out: bool
    agent: bool
    lb: bool


@lru_cache(maxsize=65536)
def route(subject: str) -> Route:
    return Route(POLICY_INPUTS.matches(subject), POLICY_OUTPUTS.matches(subject),
                 AGENT_INPUTS.matches(subject), AGENT_LB_INPUTS.matches(subject))


@dataclass
class Step:
    """One folded event and what it may have changed."""

    record: Record
    event: Event
    route: Route
    changes: Changes | None = None
    rejected: str = ""
    dirty: dict[str, Dirty] = field(default_factory=dict)
    lb_dirty: dict[str, LbDirty] = field(default_factory=dict)
    cluster_lb_dirty: LbDirty | None = None

    @property
    def pod_event(self) -> bool:
        p = self.event.payload
        return isinstance(p, ObjectUpsert | ObjectDelete) and p.kind == KIND_POD


@dataclass
class NodeFold:
    """One node's reducers."""

    state: NodeState
    lb: LbNodeState


class Replay:
    """The control plane and some nodes, folded from a history up to :attr:`seq`."""

    def __init__(self, nodes: Iterable[str] = ()) -> None:
        self.repo = Repository()           # the policy service's, folded by its reducer
        self.outputs = BusView()
        self.cluster = NodeState(CLUSTER)
        self.cluster_lb = LbNodeState(CLUSTER)
        self.nodes = {n: NodeFold(NodeState(n), LbNodeState(n)) for n in nodes}
        self.rejected: dict[str, str] = {}     # "kind/namespace/name" -> validation error
        self.last: dict[str, Record] = {}      # subject -> its last event
        self.seq = 0
        self.time_ns = 0
        self.events = 0
        self.skipped = 0
        self.failed = 0
        self._skipped_subjects: set[str] = set()

    def fold(self, records: Sequence[Record]) -> None:
        """Fold records in order (no change tracking)."""
        with no_cyclic_gc():
            for rec in records:
                self.apply(rec)

    def apply_all(self, records: Sequence[Record]) -> Replay:
        """Fold records in order; returns self (for chaining)."""
        self.fold(records)
        return self

    def apply(self, rec: Record) -> Step | None:
        """Fold one record; None when the payload is undecodable (skipped, as the bus does)."""
        self.seq, self.time_ns = rec.seq, rec.time_ns
        try:
            event = decode(rec.payload, rec.subject)
        except CodecError as exc:
            self.skipped += 1
            if rec.subject not in self._skipped_subjects:   # once per subject, as the bus
                self._skipped_subjects.add(rec.subject)
                log.warning("skipped message %s on %s: %s", rec.seq, rec.subject, exc)
            return None
        self.events += 1
        r = route(rec.subject)
        step = Step(rec, event, r)
        if r.policy_in:
            self._policy_input(step)
        if r.policy_out:
            self.outputs.apply(event.payload)
        if r.agent:
            self.cluster.apply(rec.subject, event.payload, rec.seq)
            for name, nf in self.nodes.items():
                step.dirty[name] = nf.state.apply(rec.subject, event.payload, rec.seq)
        if r.lb:
            step.cluster_lb_dirty = self.cluster_lb.apply(event.payload)
            for name, nf in self.nodes.items():
                step.lb_dirty[name] = nf.lb.apply(event.payload)
        self.last[rec.subject] = rec
        return step

    def _policy_input(self, step: Step) -> None:
        p = step.event.payload
        key = policy_ref_key(p) if isinstance(p, ObjectUpsert | ObjectDelete) \
            and p.kind in POLICY_KINDS else ""
        try:
            step.changes = reduce_input(self.repo, step.event.payload)
        except PolicyError as exc:
            # The service logs it, publishes an error status and keeps the previous version.
            step.rejected = str(exc)
            if key:
                self.rejected[key] = str(exc)
            return
        except Exception:   # the bus counts a failing handler and goes on; so do we
            self.failed += 1
            log.exception("policy reducer failed on %s (seq %s)", step.record.subject,
                          step.record.seq)
            return
        if key:
            self.rejected.pop(key, None)

    def node(self, name: str) -> NodeFold:
        """The reducers of a node this replay folds.

        Raises:
            KeyError: the node was not asked for when the replay was created.
        """
        return self.nodes[name]

    def known_nodes(self) -> list[str]:
        """Nodes the history names (Node objects, pods' spec.nodeName, ipcache entries)."""
        names = set(self.cluster.node_ips)
        names |= {str((p.get("spec") or {}).get("nodeName")) for p in self.cluster.pods.values()
                  if (p.get("spec") or {}).get("nodeName")}
        names |= {r.node for r in self.cluster.ipcache.values() if r.node}
        return sorted(names)


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic collector while folding.

    A fold allocates a long-lived, acyclic state; the collector walking it again and again
    took over half of the fold time (the policy service freezes its heap for the same reason).
    Reference counting still frees everything that is dropped.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def policy_ref_key(p: ObjectUpsert | ObjectDelete | PolicyStatus) -> str:
    """``kind/namespace/name`` of a policy object or of its status."""
    return f"{p.kind}/{p.namespace}/{p.name}"


def replay_to(records: Sequence[Record], nodes: Iterable[str] = ()) -> Replay:
    """A replay of ``records`` (already cut at the moment)."""
    rp = Replay(nodes)
    rp.fold(records)
    return rp
