"""Identities: ``identity.upsert`` {id, labels} and ``identity.delete`` {id, labels?} on
``cilia.identity.<id>``, published by the identity service only.

``id`` is a reserved (1-255) or cluster (256-65535) identity; ``labels`` are the identity's
label set as ``source:key=value`` strings (``reserved:<name>`` for reserved identities).
"""

from __future__ import annotations

from enum import StrEnum

from ._types import ClusterIdentity, LabelText, Payload


class IdentityEvent(StrEnum):
    """Event types of identities (the values are the wire strings)."""

    UPSERT = "identity.upsert"
    DELETE = "identity.delete"


IDENTITY_FILTER = "cilia.identity.>"


def identity_subject(num: int) -> str:
    """``cilia.identity.<id>``."""
    return f"cilia.identity.{num}"


class IdentityUpsert(Payload):
    """A numeric identity and its label set."""

    id: ClusterIdentity
    labels: list[LabelText]

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("labels: an identity has at least one label")

    def subjects(self) -> tuple[str, ...]:
        return (identity_subject(self.id),)


class IdentityDelete(Payload):
    """An identity released (``labels``: the set it had)."""

    id: ClusterIdentity
    labels: list[LabelText] | None = None

    def subjects(self) -> tuple[str, ...]:
        return (identity_subject(self.id),)


EVENTS: dict[str, type[Payload]] = {IdentityEvent.UPSERT: IdentityUpsert,
                                    IdentityEvent.DELETE: IdentityDelete}
