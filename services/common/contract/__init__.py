"""The bus contract: every event type's payload schema, validated whole (msgspec).

One module per domain owns its event types (:mod:`.objects`, :mod:`.identity`,
:mod:`.ipcache`, :mod:`.policy`, :mod:`.lb`, :mod:`.agent`, :mod:`.flows`, :mod:`.control`).
A payload is checked down to its nested fields and value ranges, and against the subject it
was published on (an event about pod ``a`` on pod ``b``'s subject is malformed). Consumers
still receive plain dicts; the typed payload rides along (:attr:`Event.payload`).

Usage::

    payload = validate("ipcache.upsert", data)           # a dict about to be published
    payload = decode_data("ipcache.upsert", raw_bytes)   # msgpack bytes of the data field
    check_subject(payload, "cilia.ipcache.k8s.10-0-0-1_32")

Each raises :class:`~services.common.errors.MalformedPayload` naming the event type and the
field at fault.
"""

from __future__ import annotations

from typing import Any

import msgpack
import msgspec

from services.common.errors import MalformedPayload

from . import agent, control, flows, identity, ipcache, lb, objects, policy
from ._types import Payload, dec_hook

EVENTS: dict[str, type[Payload]] = {
    **objects.EVENTS, **identity.EVENTS, **ipcache.EVENTS, **policy.EVENTS, **lb.EVENTS,
    **agent.EVENTS, **flows.EVENTS, **control.EVENTS,
}

_DECODERS = {name: msgspec.msgpack.Decoder(tp, dec_hook=dec_hook) for name, tp in EVENTS.items()}


def _schema(event_type: str) -> type[Payload]:
    tp = EVENTS.get(event_type)
    if tp is None:
        raise MalformedPayload(f"unknown event type {event_type[:80]!r}")
    return tp


def validate(event_type: str, data: Any) -> Payload:
    """Check an event's data (a dict as a producer builds it); returns the typed payload.

    Raises:
        MalformedPayload: unknown type, or the data does not follow its schema.
    """
    _schema(event_type)
    try:
        packed = msgpack.packb(data, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MalformedPayload(f"{event_type}: cannot be encoded: {exc}") from None
    return decode_data(event_type, packed)


def decode_data(event_type: str, raw: bytes | memoryview) -> Payload:
    """Decode and check an event's data from its msgpack bytes.

    Raises:
        MalformedPayload: unknown type, or the data does not follow its schema.
    """
    _schema(event_type)
    try:
        payload: Payload = _DECODERS[event_type].decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        raise MalformedPayload(f"{event_type}: {_reason(exc)}") from None
    return payload


def check_subject(event_type: str, payload: Payload, subject: str) -> None:
    """Check that ``payload`` belongs on ``subject``.

    Raises:
        MalformedPayload: it names another object than its subject does.
    """
    allowed = payload.subjects()
    if allowed and subject not in allowed:
        raise MalformedPayload(f"{event_type}: belongs on {allowed[0]}, not on {subject[:200]}")


# Subject families (for counting bad messages without one series per object): the tokens
# after ``cilia.`` that name a kind of subject, per domain.
_FAMILY_TOKENS: dict[str, frozenset[str]] = {
    "src": frozenset(k.lower() for k in objects.NAMESPACED),
    "identity": frozenset(),
    "ipcache": frozenset(ipcache.ORIGINS),
    "policy": frozenset({"rules", "selector", "status"}),
    "lb": frozenset({"service", "backend", "members", "status"}),
    "agent": frozenset({"realized", "endpoint"}),
    "flows": frozenset(),
    "ctl": frozenset({"status", "flows"}),
}


def subject_family(subject: str) -> str:
    """The kind of subject (``cilia.src.pod``, ``cilia.identity``...), ``other`` if unknown."""
    tokens = subject.split(".", 3)
    if len(tokens) < 2 or tokens[0] != "cilia" or tokens[1] not in _FAMILY_TOKENS:
        return "other"
    known = _FAMILY_TOKENS[tokens[1]]
    if not known:
        return f"cilia.{tokens[1]}"
    if len(tokens) > 2 and tokens[2] in known:
        return f"cilia.{tokens[1]}.{tokens[2]}"
    return f"cilia.{tokens[1]}.other"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = str(exc)
    if text.startswith("Object missing required field"):
        return text.replace("Object missing required field", "missing field", 1)
    return text


__all__ = ["EVENTS", "Payload", "check_subject", "decode_data", "subject_family", "validate"]
