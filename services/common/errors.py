"""Errors of the shared bus layer."""

from __future__ import annotations


class CiliaError(Exception):
    """Base of every cilia error."""


class CodecError(CiliaError):
    """A payload could not be decoded or does not follow its schema."""


class UnknownSchemaVersion(CodecError):
    """The payload's schema version is not one this build understands."""


class MalformedPayload(CodecError):
    """The payload is not a msgpack map of the expected shape."""


class BusError(CiliaError):
    """The bus could not be reached or configured."""


class PermissionDenied(BusError):
    """The bus refused a publish or subscription: the role may not use that subject."""
