"""Control-plane requests and replies (core NATS, never stored).

A request is published on ``<request prefix>.<nonce>`` with an empty body; each responder
answers on ``cilia.ctl.reply.<role>.<nonce>``, a subject only that role may publish, so a
reply proves its sender's role:

* ``cilia.ctl.status.<nonce>``: every service replica answers ``service.status`` {service,
  replica, pid, state, uptime_s, stats?, node?} (the heartbeat ``cilia status`` reads);
* ``cilia.ctl.flows.<nonce>``: every agent answers ``flow`` (:mod:`.flows`) with its recent
  flows.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from ._types import U32, DnsSubdomain, Payload, Seconds, Text
from .flows import FlowEvent


class ControlEvent(StrEnum):
    """Event types of control replies (the values are the wire strings)."""

    STATUS = "service.status"


CTL_REPLY = "cilia.ctl.reply"           # cilia.ctl.reply.<role>.<nonce>: only <role> publishes


@dataclass(frozen=True)
class ControlRequest:
    """A kind of control request: published on ``<prefix>.<nonce>`` with an empty body, and
    answered with ``reply`` events on each responder's :func:`ctl_reply_subject`."""

    prefix: str
    reply: str

    def subject(self, nonce: str) -> str:
        """The request ``nonce`` (the nonce names the replies' subjects)."""
        return f"{self.prefix}.{nonce}"

    @property
    def filter(self) -> str:
        """Every request of this kind (what a responder subscribes to)."""
        return f"{self.prefix}.*"


# Every service replica answers a heartbeat; each agent answers with its recent flows.
STATUS_CONTROL = ControlRequest("cilia.ctl.status", ControlEvent.STATUS)
FLOWS_CONTROL = ControlRequest("cilia.ctl.flows", FlowEvent.FLOW)


def ctl_reply_subject(role: str, nonce: str) -> str:
    """Where ``role`` answers the control request ``nonce``: the subject proves the role."""
    return f"{CTL_REPLY}.{role}.{nonce}"


def parse_ctl_reply(subject: str) -> tuple[str, str] | None:
    """(role, nonce) of a reply subject, or None if ``subject`` is not one."""
    head, sep, rest = subject.partition(f"{CTL_REPLY}.")
    parts = rest.split(".")
    if head or not sep or len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


ServiceState = Literal["starting", "ok", "degraded"]


class ServiceStatus(Payload):
    """One replica's heartbeat."""

    service: Text
    replica: Text
    pid: U32
    state: ServiceState
    uptime_s: Seconds
    stats: dict[str, Any] | None = None
    node: DnsSubdomain | None = None

    def subjects(self) -> tuple[str, ...]:
        return ()   # a reply goes to the requester's inbox


EVENTS: dict[str, type[Payload]] = {ControlEvent.STATUS: ServiceStatus}
