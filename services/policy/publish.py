"""What the policy service publishes for a :class:`~services.policy.repository.Changes`.

Pure: it turns a change set into msgpack-friendly messages, each with its channel and key, the
bus subject and the event type (:mod:`services.common.contract`) and a ``Nats-Msg-Id``
(``policy:<revision>:<channel>:<key>``, identical on every retry and on a replay of the same
source stream). The service only has to hand them to ``Bus.publish_batch``
in order. Per key, a later message supersedes an earlier one, so consumers can keep the last
message per key and converge.

Channels and payloads (``revision`` is the repository revision that produced the message):

* ``selector`` / selector id:
  ``{"selector", "revision", "op": "set", "canonical", "selector_spec", "members": [...]}``
  when a selector appears (its whole member set), ``{"op": "delta", "added": [...],
  "removed": [...]}`` when its members change, ``{"op": "delete"}`` when no rule uses it.
* ``subject`` / identity: :meth:`SubjectPolicy.to_dict` (``rules`` empty: no policy selects
  the identity, both directions open). Every cluster identity gets one as soon as the service
  knows it, selected or not: its presence means "this identity's policy is computed as of
  ``revision``", and an agent keeps an endpoint whose identity has none at deny-all.
* ``prefix`` / prefix: ``{"prefix", "identity", "revision", "op"}`` as ``ipcache.upsert`` or
  ``ipcache.delete`` on the ``cidr`` origin's ipcache subjects (CIDR identities).
* ``policy`` / ``kind/namespace/name``: ``{"kind", "namespace", "name", "revision",
  "op": "set"|"delete", "rules", "selectors"}`` (status for ``cilia policy get``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from services.common.contract import (
    IPCACHE_SOURCE_CIDR,
    IpcacheEvent,
    PolicyEvent,
    ipcache_subject,
    policy_rules_subject,
    policy_selector_subject,
    policy_status_subject,
    validate,
)
from services.common.contract.policy import PolicySelector

from .compiler import rule_selectors
from .errors import PolicyValidationError
from .repository import Changes, Repository

CHANNEL_SELECTOR = "selector"
CHANNEL_SUBJECT = "subject"
CHANNEL_PREFIX = "prefix"
CHANNEL_POLICY = "policy"
_CHANNEL_EVENTS = {CHANNEL_SUBJECT: PolicyEvent.RULES, CHANNEL_SELECTOR: PolicyEvent.SELECTOR,
                   CHANNEL_POLICY: PolicyEvent.STATUS}


class Message(NamedTuple):
    """One message to publish: channel and key, payload, and where/how it goes on the bus."""

    channel: str
    key: str
    payload: dict[str, Any]

    @property
    def event(self) -> str:
        """The event type (schema name) of the payload."""
        if self.channel == CHANNEL_PREFIX:
            return IpcacheEvent.DELETE if self.payload.get("op") == "delete" \
                else IpcacheEvent.UPSERT
        return _CHANNEL_EVENTS[self.channel]

    @property
    def subject(self) -> str:
        """The bus subject."""
        p = self.payload
        if self.channel == CHANNEL_SUBJECT:
            return policy_rules_subject(int(self.key))
        if self.channel == CHANNEL_SELECTOR:
            return policy_selector_subject(self.key)
        if self.channel == CHANNEL_PREFIX:
            return ipcache_subject(self.key, IPCACHE_SOURCE_CIDR)
        return policy_status_subject(p["kind"], p["namespace"], p["name"])

    @property
    def msg_id(self) -> str:
        """De-duplication id: unique per logical change, stable across retries and replays."""
        return f"policy:{self.payload['revision']}:{self.channel}:{self.key}"


def messages(repo: Repository, ch: Changes) -> list[Message]:
    """The messages that publish ``ch`` (taken right after the call that returned it).

    Order: prefixes and selectors before the subjects that refer to them, so a consumer that
    applies messages in order never sees a rule whose selector it does not know.
    """
    rev = ch.revision
    out: list[Message] = []
    for prefix, ident in sorted(ch.prefixes_added.items()):
        out.append(Message(CHANNEL_PREFIX, prefix, {"prefix": prefix, "identity": ident,
                                                    "revision": rev, "op": "set"}))
    for sid, (sel, members) in sorted(ch.selectors_added.items()):
        out.append(Message(CHANNEL_SELECTOR, sid, {
            "selector": sid, "revision": rev, "op": "set", "canonical": sel.canonical,
            "selector_spec": sel.to_dict(), "members": sorted(members)}))
    for sid, delta in sorted(ch.selector_deltas.items()):
        out.append(Message(CHANNEL_SELECTOR, sid, {
            "selector": sid, "revision": rev, "op": "delta", "added": sorted(delta.added),
            "removed": sorted(delta.removed)}))
    for ident in sorted(ch.subjects):
        out.append(Message(CHANNEL_SUBJECT, str(ident), repo.subject_policy(ident).to_dict()
                           | {"revision": rev}))
    for sid in sorted(ch.selectors_removed):
        out.append(Message(CHANNEL_SELECTOR, sid, {"selector": sid, "revision": rev,
                                                   "op": "delete"}))
    for prefix, ident in sorted(ch.prefixes_removed.items()):
        out.append(Message(CHANNEL_PREFIX, prefix, {"prefix": prefix, "identity": ident,
                                                    "revision": rev, "op": "delete"}))
    for ref in sorted(ch.policies_upserted):
        policy = repo.policy(ref)
        assert policy is not None
        selectors = sorted({s for r in policy.rules for s in rule_selectors(r)})
        out.append(Message(CHANNEL_POLICY, str(ref), {
            "kind": ref.kind, "namespace": ref.namespace, "name": ref.name, "revision": rev,
            "op": "set", "rules": len(policy.rules), "selectors": selectors}))
    for ref in sorted(ch.policies_deleted):
        out.append(Message(CHANNEL_POLICY, str(ref), {
            "kind": ref.kind, "namespace": ref.namespace, "name": ref.name, "revision": rev,
            "op": "delete"}))
    return out


def error_message(exc: PolicyValidationError, revision: int) -> Message:
    """The ``policy.status`` message for a rejected policy (its previous version stays)."""
    ref = f"{exc.kind}/{exc.namespace}/{exc.name}" if exc.namespace else f"{exc.kind}/{exc.name}"
    return Message(CHANNEL_POLICY, ref, {"kind": exc.kind, "namespace": exc.namespace,
                                         "name": exc.name, "revision": revision, "op": "error",
                                         "error": str(exc)})


def fold_selector(members: dict[str, set[int]], payload: PolicySelector) -> str:
    """Apply one selector message (``set``, ``delta`` or ``delete``) to ``members``.

    The one definition of what a selector message means, for every consumer. Returns the
    selector id.
    """
    sid, op = payload.selector, payload.op
    if op == "set":
        members[sid] = set(payload.members or ())
    elif op == "delta":
        cur = members.setdefault(sid, set())
        cur |= set(payload.added or ())
        cur -= set(payload.removed or ())
    else:
        members.pop(sid, None)
    return sid


class SelectorMirror:
    """A consumer's view rebuilt from selector messages (what an agent keeps).

    Used by the tests to prove that the published stream converges to the service's state.
    """

    def __init__(self) -> None:
        self.members: dict[str, set[int]] = {}
        self.subjects: dict[int, dict[str, Any]] = {}
        self.prefixes: dict[str, int] = {}

    def apply(self, msg: Message) -> None:
        """Apply one message."""
        p = msg.payload
        if msg.channel == CHANNEL_SELECTOR:
            sel = validate(PolicyEvent.SELECTOR, {"selector": msg.key, **p})
            assert isinstance(sel, PolicySelector)
            fold_selector(self.members, sel)
        elif msg.channel == CHANNEL_SUBJECT:
            if p["rules"]:
                self.subjects[int(msg.key)] = p
            else:
                self.subjects.pop(int(msg.key), None)
        elif msg.channel == CHANNEL_PREFIX:
            if p["op"] == "set":
                self.prefixes[msg.key] = p["identity"]
            else:
                del self.prefixes[msg.key]
