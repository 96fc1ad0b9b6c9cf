"""The policy service: policy objects and identity events in, compiled rules and selector
deltas out.

The repository is a pure function of the ordered input stream, so a restarted service rebuilds
it by replaying the history, then compares it with what the bus already says (its own earlier
output, folded by :class:`BusView`) and publishes only the difference. Once live, each input
event publishes exactly the messages of its :class:`~services.policy.repository.Changes`.
Published revisions are the stream sequence of the input that caused them, so they only grow,
across restarts too.

Every cluster identity has a ``policy.rules`` message (empty rules when nothing selects it):
it tells agents that the identity's policy is computed. A message older than the identity's
last label change (an identity number reused while the service was down) does not count; the
resync publishes a fresh one.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter

from services.common.bus import Bus, Delivery, Outgoing
from services.common.contract import (
    POLICY_INPUTS,
    POLICY_OUTPUTS,
    IdentityDelete,
    IdentityUpsert,
    ObjectUpsert,
)
from services.common.labels import Labels
from services.common.runner import BusConsumer

from .compiler import SubjectPolicy
from .errors import PolicyError
from .publish import (
    CHANNEL_POLICY,
    CHANNEL_PREFIX,
    CHANNEL_SELECTOR,
    CHANNEL_SUBJECT,
    Message,
    messages,
)
from .reducer import BusView, reduce_input
from .repository import Repository

log = logging.getLogger(__name__)

REJECTED = Counter("cilia_policy_rejected_total", "Policy objects rejected by validation")


def resync_messages(repo: Repository, view: BusView,
                    changed_at: Mapping[int, int] | None = None) -> list[Message]:
    """The messages that turn what the bus says (``view``) into the repository's state.

    Args:
        changed_at: identity -> stream sequence of its last label change; a subject message
            older than that was computed for other labels and is published again.
    """
    fresh_after = changed_at or {}
    out: list[Message] = []
    want_prefixes = repo.prefix_entries()
    for prefix, ident in sorted(want_prefixes.items()):
        if view.prefixes.get(prefix) != ident:
            out.append(Message(CHANNEL_PREFIX, prefix, {"prefix": prefix, "identity": ident,
                                                        "op": "set"}))
    want_selectors = {sid: set(repo.members(sid)) for sid in repo.cache.selector_ids()}
    for sid, members in sorted(want_selectors.items()):
        have = view.members.get(sid)
        if have is None:
            sel = repo.cache.selector(sid)
            out.append(Message(CHANNEL_SELECTOR, sid, {
                "selector": sid, "op": "set", "canonical": sel.canonical,
                "selector_spec": sel.to_dict(), "members": sorted(members)}))
        elif have != members:
            out.append(Message(CHANNEL_SELECTOR, sid, {
                "selector": sid, "op": "delta", "added": sorted(members - have),
                "removed": sorted(have - members)}))
    want_subjects = repo.computed_subjects()
    for ident, sp in sorted(want_subjects.items()):
        have_rules = view.subjects.get(ident)
        # the same rules (a revision is not part of a SubjectPolicy's equality)
        if have_rules is None or SubjectPolicy.from_payload(have_rules) != sp \
                or have_rules.revision < fresh_after.get(ident, 0):
            out.append(Message(CHANNEL_SUBJECT, str(ident), sp.to_dict()))
    for ident in sorted(set(view.subjects) - set(want_subjects)):
        if view.subjects[ident].rules:
            out.append(Message(CHANNEL_SUBJECT, str(ident),
                               repo.subject_policy(ident).to_dict()))
    for sid in sorted(set(view.members) - set(want_selectors)):
        out.append(Message(CHANNEL_SELECTOR, sid, {"selector": sid, "op": "delete"}))
    for prefix in sorted(set(view.prefixes) - set(want_prefixes)):
        out.append(Message(CHANNEL_PREFIX, prefix, {"prefix": prefix,
                                                    "identity": view.prefixes[prefix],
                                                    "op": "delete"}))
    want_policies = {f"{p.ref.kind}/{p.ref.namespace}/{p.ref.name}": p
                     for p in repo.policies()}
    for key, policy in sorted(want_policies.items()):
        ref = policy.ref
        have_status = view.policies.get(key)
        if have_status is None or have_status.op != "set":
            out.append(Message(CHANNEL_POLICY, str(ref), {
                "kind": ref.kind, "namespace": ref.namespace, "name": ref.name, "op": "set",
                "rules": len(policy.rules)}))
    for key in sorted(set(view.policies) - set(want_policies)):
        kind, ns, name = key.split("/", 2)
        out.append(Message(CHANNEL_POLICY, key, {"kind": kind, "namespace": ns, "name": name,
                                                 "op": "delete"}))
    return out


def to_outgoing(msg: Message, revision: int) -> Outgoing:
    """A pure :class:`Message` stamped with ``revision``, as the service publishes it.

    Subject, event type and message id are the message's own (one mapping, in publish.py).
    """
    stamped = Message(msg.channel, msg.key, {**msg.payload, "revision": revision})
    payload = dict(stamped.payload)
    if msg.channel == CHANNEL_PREFIX:
        payload.pop("op", None)     # the event type says it (ipcache.upsert / ipcache.delete)
    return Outgoing(stamped.subject, stamped.event, payload, stamped.msg_id)


class PolicyService(BusConsumer):
    name = "policy"

    def __init__(self) -> None:
        super().__init__()
        self.repo = Repository()
        self.view = BusView()
        self.bus: Bus | None = None
        self.rejected = 0
        self.last_revision = 0
        self.last_seq = 0
        # identity -> stream sequence of its last label change (see resync_messages)
        self.identity_changed_at: dict[int, int] = {}

    async def start(self, bus: Bus) -> None:
        self.bus = bus
        outputs = await bus.consume(POLICY_OUTPUTS, self._on_output, traced=False)
        self._subs.append(outputs)
        await outputs.caught_up.wait()
        inputs = await bus.consume(POLICY_INPUTS, self._on_input, idle=self._on_idle)
        self._subs.append(inputs)
        if inputs.caught_up.is_set():
            await self._resync(0)

    def stats(self) -> dict[str, Any]:
        return {"policies": sum(1 for _ in self.repo.policies()),
                "identities": len(self.repo.identities()),
                "selectors": len(self.repo.cache.selector_ids()),
                "subjects": len(self.repo.subjects()),
                "revision": self.last_revision, "seq": self.last_seq,
                **(self.bus.rejections.stats() if self.bus else {"rejected": self.rejected})}

    async def _on_output(self, d: Delivery) -> None:
        self.view.apply(d.event.payload)

    async def _on_input(self, d: Delivery) -> None:
        self.last_seq = d.seq
        payload = d.event.payload
        ident = payload.id if isinstance(payload, IdentityUpsert | IdentityDelete) else None
        before = None if ident is None else self.repo.identity_labels(ident)
        try:
            ch = reduce_input(self.repo, payload)
        except PolicyError as exc:
            REJECTED.inc()
            self.rejected += 1
            if self.bus is not None:    # counted with the bus's rejections, logged once
                self.bus.rejections.reject(d.subject, d.seq, exc)
            if self._live and isinstance(payload, ObjectUpsert):
                await self._send([Message(CHANNEL_POLICY, "", {
                    "kind": payload.kind, "namespace": payload.namespace,
                    "name": payload.name, "op": "error", "error": str(exc)})], d.seq)
            elif d.pending == 0:    # a rejected last input must not keep the service starting
                await self._resync(d.seq)
            return
        if ident is not None:
            self._note_identity(ident, before, d.seq)
        if self._live:
            if ch:
                await self._send(messages(self.repo, ch), d.seq)
        elif d.pending == 0:
            await self._resync(d.seq)

    def _note_identity(self, identity: int, before: Labels | None, seq: int) -> None:
        after = self.repo.identity_labels(identity)
        if after is None:
            self.identity_changed_at.pop(identity, None)
        elif after != before:
            self.identity_changed_at[identity] = seq

    async def _on_idle(self, seq: int) -> None:
        """Nothing pending after a message the handler did not complete: go live if not."""
        self.last_seq = max(self.last_seq, seq)
        if not self._live:
            await self._resync(seq)

    async def _resync(self, revision: int) -> None:
        self._live = True
        await self._send(resync_messages(self.repo, self.view, self.identity_changed_at),
                         revision)
        # The replayed state is long-lived: keep the cyclic collector from walking it on
        # every later change (it dominated the p99 of an import).
        gc.collect()
        gc.freeze()

    async def _send(self, msgs: list[Message], revision: int) -> None:
        assert self.bus is not None
        if not msgs:
            return
        # The view learns these when they come back (its consumer folds every output); it is
        # read only by the resync before the service goes live.
        await self.bus.publish_batch([to_outgoing(m, revision) for m in msgs])
        self.last_revision = revision
