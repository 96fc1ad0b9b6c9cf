"""The msgpack event codec: pure functions, no I/O.

Every payload is a msgpack map ``{"v": SCHEMA_VERSION, "type": <event type>, "data": {...}}``.
Encoding validates against :mod:`services.common.schemas`; decoding rejects unknown versions and
malformed payloads with typed errors so that a consumer can count them and go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from services.common.errors import MalformedPayload, UnknownSchemaVersion
from services.common.schemas import SCHEMA_VERSION, SCHEMAS


@dataclass(frozen=True)
class Event:
    """A decoded event: its type and its validated data."""

    type: str
    data: dict[str, Any]


def _validate(event_type: str, data: Any) -> None:
    schema = SCHEMAS.get(event_type)
    if schema is None:
        raise MalformedPayload(f"unknown event type {event_type!r}")
    if not isinstance(data, dict):
        raise MalformedPayload(f"{event_type}: data must be a map, got {type(data).__name__}")
    for name, typ in schema.required.items():
        if name not in data:
            raise MalformedPayload(f"{event_type}: missing field {name!r}")
        if not isinstance(data[name], typ) or (typ is int and isinstance(data[name], bool)):
            raise MalformedPayload(
                f"{event_type}: field {name!r} must be {_type_name(typ)}, "
                f"got {type(data[name]).__name__}")
    for name, typ in schema.optional.items():
        value = data.get(name)
        if value is not None and not isinstance(value, typ):
            raise MalformedPayload(
                f"{event_type}: field {name!r} must be {_type_name(typ)}, "
                f"got {type(value).__name__}")


def _type_name(typ: type | tuple[type, ...]) -> str:
    if isinstance(typ, tuple):
        return " or ".join(t.__name__ for t in typ)
    return typ.__name__


def encode(event_type: str, data: dict[str, Any]) -> bytes:
    """Encode one event after validating it.

    Raises:
        MalformedPayload: the type is unknown or the data does not follow its schema.
    """
    _validate(event_type, data)
    return msgpack.packb({"v": SCHEMA_VERSION, "type": event_type, "data": data},
                         use_bin_type=True)


def decode(payload: bytes) -> Event:
    """Decode and validate one event.

    Raises:
        UnknownSchemaVersion: the payload's version is not ours.
        MalformedPayload: not msgpack, not a map, or not following its schema.
    """
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise MalformedPayload(f"not a msgpack payload: {exc}") from exc
    if not isinstance(raw, dict):
        raise MalformedPayload(f"payload must be a map, got {type(raw).__name__}")
    version = raw.get("v")
    if version != SCHEMA_VERSION:
        raise UnknownSchemaVersion(
            f"schema version {version!r} is not supported (this build reads {SCHEMA_VERSION})")
    event_type = raw.get("type")
    if not isinstance(event_type, str):
        raise MalformedPayload("payload has no event type")
    data = raw.get("data")
    _validate(event_type, data)
    assert isinstance(data, dict)
    return Event(event_type, data)
