"""The ipcache: ``ipcache.upsert`` {prefix, identity, host_ip?, pod?, node?, revision?} and
``ipcache.delete`` {prefix, identity?, revision?} on ``cilia.ipcache.<origin>.<prefix token>``.

Each origin owns its subjects: ``k8s`` (pod addresses, the identity service) and ``cidr``
(CIDR identities, the policy service). Prefixes have no host bits set; the policy service also
publishes IPv6 CIDR identities, which a datapath that is IPv4 only leaves out of its maps.
"""

from __future__ import annotations

from enum import StrEnum

from ._types import (
    IdentityNum,
    OptionalIPv4,
    OptionalName,
    Payload,
    PodRef,
    Prefix,
    Revision,
    check_identity,
)
from .tokens import ip_token


class IpcacheEvent(StrEnum):
    """Event types of the ipcache (the values are the wire strings)."""

    UPSERT = "ipcache.upsert"
    DELETE = "ipcache.delete"


IPCACHE_SOURCE_K8S = "k8s"     # pod addresses, owned by the identity service
IPCACHE_SOURCE_CIDR = "cidr"   # CIDR identities, owned by the policy service
ORIGINS = (IPCACHE_SOURCE_K8S, IPCACHE_SOURCE_CIDR)
IPCACHE_FILTER = "cilia.ipcache.>"
_IPCACHE_PREFIX = "cilia.ipcache."


def ipcache_subject(prefix: str, origin: str = IPCACHE_SOURCE_K8S) -> str:
    """``cilia.ipcache.<origin>.<prefix token>``: each origin owns its own subjects."""
    return f"{_IPCACHE_PREFIX}{origin}.{ip_token(prefix)}"


def ipcache_filter(origin: str) -> str:
    """Filter of one origin's entries."""
    return f"{_IPCACHE_PREFIX}{origin}.>"


def parse_ipcache_origin(subject: str) -> str:
    """The origin an ipcache subject names (``k8s`` for a subject too short to name one)."""
    parts = subject.split(".", 3)
    return parts[2] if len(parts) > 3 else IPCACHE_SOURCE_K8S


def _subjects(prefix: str) -> tuple[str, ...]:
    return tuple(ipcache_subject(prefix, origin) for origin in ORIGINS)


class IpcacheUpsert(Payload):
    """A prefix and the identity behind it (``host_ip``: the node hosting it)."""

    prefix: Prefix
    identity: IdentityNum
    host_ip: OptionalIPv4 | None = None
    pod: PodRef | None = None
    node: OptionalName | None = None
    revision: Revision | None = None

    def __post_init__(self) -> None:
        check_identity(self.identity, "identity")

    def subjects(self) -> tuple[str, ...]:
        return _subjects(self.prefix)


class IpcacheDelete(Payload):
    """A prefix gone from its origin."""

    prefix: Prefix
    identity: IdentityNum | None = None
    revision: Revision | None = None

    def __post_init__(self) -> None:
        if self.identity is not None:
            check_identity(self.identity, "identity")

    def subjects(self) -> tuple[str, ...]:
        return _subjects(self.prefix)


EVENTS: dict[str, type[Payload]] = {IpcacheEvent.UPSERT: IpcacheUpsert,
                                    IpcacheEvent.DELETE: IpcacheDelete}
