"""The msgpack event codec: pure functions, no I/O.

Every payload is a msgpack map ``{"v": SCHEMA_VERSION, "type": <event type>, "data": {...}}``.
The data is a dict or the event type's typed payload (:class:`~services.common.contract.Payload`).
Encoding and decoding check the data whole against its schema (:mod:`services.common.contract`:
nested fields, value ranges and, given the subject, that the event belongs there); decoding
rejects unknown versions and malformed payloads with typed errors so that a consumer can count
them and go on.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import msgspec

from services.common import contract
from services.common.errors import MalformedPayload, UnknownSchemaVersion
from services.common.schemas import SCHEMA_VERSION


@dataclass(frozen=True)
class Event:
    """A decoded event: its type, ``payload`` (the typed form, which consumers fold) and its
    checked data's msgpack bytes; :attr:`data` is the same as a dict, decoded on first use
    (for output and tests: consumers do not pay for it)."""

    type: str
    payload: contract.Payload = field(compare=False, repr=False)
    raw: bytes = field(repr=False)

    @functools.cached_property
    def data(self) -> dict[str, Any]:
        data = _PLAIN.decode(self.raw)
        assert isinstance(data, dict)    # the schema decoded a map
        return data


class _Envelope(msgspec.Struct):
    v: Any = None
    type: Any = None
    data: msgspec.Raw = msgspec.Raw()


_ENVELOPE = msgspec.msgpack.Decoder(_Envelope)
# {"v": SCHEMA_VERSION, "type": ..., "data": ...} as msgpack, in pieces: a map of three
# entries and its first keys, then the type, then the key of the data.
_HEAD = b"\x83" + msgpack.packb("v") + msgpack.packb(SCHEMA_VERSION) + msgpack.packb("type")
_DATA_KEY = msgpack.packb("data")
_PLAIN = msgspec.msgpack.Decoder()


def _enc_hook(obj: Any) -> Any:
    """The contract's checked strings (``str`` subclasses such as an IPv4 address) go out as
    the strings they are, so a decoded payload can be published again."""
    if isinstance(obj, str):
        return str(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_TYPED = msgspec.msgpack.Encoder(enc_hook=_enc_hook)

# What a producer hands the codec: the data as a dict, or the event type's typed payload.
Data = Mapping[str, Any] | contract.Payload


def encode(event_type: str, data: Data) -> bytes:
    """Encode one event after checking it whole.

    The data is checked as consumers will check it: its msgpack bytes are decoded against
    the schema (faster than checking the dict itself, and the very same rules). A typed
    payload must be the event type's own.

    Raises:
        MalformedPayload: the type is unknown or the data does not follow its schema.
    """
    try:
        if isinstance(data, contract.Payload):
            if type(data) is not contract.EVENTS.get(event_type):
                raise MalformedPayload(f"{event_type}: a {type(data).__name__} is another "
                                       f"event type's payload")
            packed = _TYPED.encode(data)
        else:
            packed = msgpack.packb(data, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MalformedPayload(f"{event_type}: cannot be encoded: {exc}") from None
    contract.decode_data(event_type, packed)
    return b"".join((_HEAD, msgpack.packb(event_type, use_bin_type=True), _DATA_KEY, packed))


def decode(payload: bytes, subject: str | None = None) -> Event:
    """Decode and check one event (and, given ``subject``, that it belongs there).

    Raises:
        UnknownSchemaVersion: the payload's version is not ours.
        MalformedPayload: not msgpack, not an event map, or not following its schema.
    """
    try:
        env = _ENVELOPE.decode(payload)
    except (msgspec.ValidationError, RecursionError) as exc:   # before its base DecodeError
        raise MalformedPayload(f"payload must be a map of v, type and data: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MalformedPayload(f"not a msgpack payload: {exc}") from None
    if env.v != SCHEMA_VERSION or isinstance(env.v, bool):
        raise UnknownSchemaVersion(
            f"schema version {env.v!r:.40} is not supported (this build reads "
            f"{SCHEMA_VERSION})")
    if not isinstance(env.type, str):
        raise MalformedPayload("payload has no event type")
    if not env.data:
        raise MalformedPayload(f"{env.type[:80]}: payload has no data")
    typed = contract.decode_data(env.type, env.data)
    if subject is not None:
        contract.check_subject(env.type, typed, subject)
    return Event(env.type, typed, bytes(env.data))
