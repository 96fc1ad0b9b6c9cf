"""Identities: ``identity.upsert`` {id, labels} and ``identity.delete`` {id, labels?} on
``cilia.identity.<id>``, published by the identity service only.

``id`` is a reserved (1-255) or cluster (256-65535) identity; ``labels`` are the identity's
label set as ``source:key=value`` strings (``reserved:<name>`` for reserved identities).
"""

from __future__ import annotations

from services.common import subjects

from ._types import ClusterIdentity, LabelText, Payload

EV_UPSERT = "identity.upsert"
EV_DELETE = "identity.delete"


class IdentityUpsert(Payload):
    """A numeric identity and its label set."""

    id: ClusterIdentity
    labels: list[LabelText]

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("labels: an identity has at least one label")

    def subjects(self) -> tuple[str, ...]:
        return (subjects.identity(self.id),)


class IdentityDelete(Payload):
    """An identity released (``labels``: the set it had)."""

    id: ClusterIdentity
    labels: list[LabelText] | None = None

    def subjects(self) -> tuple[str, ...]:
        return (subjects.identity(self.id),)


EVENTS: dict[str, type[Payload]] = {EV_UPSERT: IdentityUpsert, EV_DELETE: IdentityDelete}
