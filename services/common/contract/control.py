"""Control-plane replies (core NATS request/reply, never stored): ``service.status``
{service, replica, pid, state, uptime_s, stats?, node?}, each replica's answer to
``cilia.ctl.status`` (the heartbeat ``cilia status`` reads)."""

from __future__ import annotations

from typing import Any, Literal

from ._types import U32, DnsSubdomain, Payload, Seconds, Text

EV_STATUS = "service.status"


class ServiceStatus(Payload):
    """One replica's heartbeat."""

    service: Text
    replica: Text
    pid: U32
    state: Literal["starting", "ok", "degraded"]
    uptime_s: Seconds
    stats: dict[str, Any] | None = None
    node: DnsSubdomain | None = None

    def subjects(self) -> tuple[str, ...]:
        return ()   # a reply goes to the requester's inbox


EVENTS: dict[str, type[Payload]] = {EV_STATUS: ServiceStatus}
