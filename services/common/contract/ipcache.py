"""The ipcache: ``ipcache.upsert`` {prefix, identity, host_ip?, pod?, node?, revision?} and
``ipcache.delete`` {prefix, identity?, revision?} on ``cilia.ipcache.<origin>.<prefix token>``.

Each origin owns its subjects: ``k8s`` (pod addresses, the identity service) and ``cidr``
(CIDR identities, the policy service). Prefixes have no host bits set; the policy service also
publishes IPv6 CIDR identities, which a datapath that is IPv4 only leaves out of its maps.
"""

from __future__ import annotations

from services.common import subjects

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

EV_UPSERT = "ipcache.upsert"
EV_DELETE = "ipcache.delete"
ORIGINS = (subjects.IPCACHE_SOURCE_K8S, subjects.IPCACHE_SOURCE_CIDR)


def _subjects(prefix: str) -> tuple[str, ...]:
    return tuple(subjects.ipcache(prefix, origin) for origin in ORIGINS)


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


EVENTS: dict[str, type[Payload]] = {EV_UPSERT: IpcacheUpsert, EV_DELETE: IpcacheDelete}
