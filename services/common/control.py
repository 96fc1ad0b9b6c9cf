"""Control requests whose replies prove who sent them (status heartbeats, recent flows).

A requester publishes a request (:class:`~services.common.contract.ControlRequest`) with a
fresh random nonce; each responder publishes its reply on ``cilia.ctl.reply.<its
role>.<nonce>``, a subject only that role may publish (the server enforces it, see
:mod:`services.common.roles`). The requester reads the role
from the subject and keeps a reply only if its payload speaks for that role (an agent for its
own node, a service for itself); anything else is counted and ignored. A reply cannot be
forged by replying to an inbox: there is none.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from prometheus_client import Counter

from services.common.bus import Bus
from services.common.codec import decode
from services.common.contract import ControlRequest, ctl_reply_subject, parse_ctl_reply
from services.common.errors import CodecError
from services.common.roles import may_report, role_for_service

log = logging.getLogger(__name__)

NONCE_BYTES = 16                       # 128 random bits per request
_NONCE = re.compile(r"^[0-9a-f]{1,64}$")

REJECTED = Counter("cilia_ctl_replies_rejected_total",
                   "Control replies ignored: not from the role they claim, or malformed",
                   ["reason"])


@dataclass(frozen=True)
class Reply:
    """One accepted control reply: the role the server let publish it, and its data."""

    role: str
    data: dict[str, Any]


# What a reply claims to be: (service, node) read from its data.
Claim = Callable[[dict[str, Any]], tuple[str, str | None]]


def status_claim(data: dict[str, Any]) -> tuple[str, str | None]:
    stats = data.get("stats")
    node = data.get("node") or (stats.get("node") if isinstance(stats, dict) else None)
    return str(data.get("service", "")), node if isinstance(node, str) else None


def flows_claim(data: dict[str, Any]) -> tuple[str, str | None]:
    node = data.get("node")
    return "nodeagent", node if isinstance(node, str) else None


def _reject(reason: str, subject: str, detail: str = "") -> None:
    REJECTED.labels(reason).inc()
    log.warning("ignored control reply on %s: %s%s", subject, reason,
                f" ({detail})" if detail else "")


async def request(bus: Bus, kind: ControlRequest, claim: Claim, wait: float) -> list[Reply]:
    """Publish a request of ``kind`` and gather the replies that come within ``wait``.

    Only replies whose payload (``kind.reply``) speaks for the role in their subject are kept.
    """
    nonce = secrets.token_hex(NONCE_BYTES)
    replies: list[Reply] = []

    async def on_reply(msg: Msg) -> None:
        parsed = parse_ctl_reply(msg.subject)
        if msg.reply or parsed is None or parsed[1] != nonce:
            # A responder publishes on exactly cilia.ctl.reply.<role>.<nonce>, with no reply
            # subject; anything else here was delivered by a JetStream consumer someone pointed
            # at this subject (a stored message, not an answer).
            _reject("not a reply", msg.subject, msg.reply)
            return
        role = parsed[0]
        try:
            event = decode(msg.data)
        except CodecError as exc:
            _reject("malformed", msg.subject, str(exc))
            return
        if event.type != kind.reply:
            _reject("unexpected type", msg.subject, event.type)
            return
        service, node = claim(event.data)
        if not may_report(role, service, node):
            _reject("role mismatch", msg.subject,
                    f"role {role} cannot speak for {service}{f' on {node}' if node else ''}")
            return
        replies.append(Reply(role, event.data))

    sub = await bus.nc.subscribe(ctl_reply_subject("*", nonce), cb=on_reply)
    try:
        await bus.nc.publish(kind.subject(nonce), b"")
        await asyncio.sleep(wait)
    finally:
        await sub.unsubscribe()
    return replies


def responder_role(bus: Bus, service: str, node: str | None) -> str:
    """The role a responder answers as: its credentials' role, else its service's own."""
    return bus.role or role_for_service(service, node) or service


async def serve(bus: Bus, kind: ControlRequest, role: str,
                payload: Callable[[], bytes | Awaitable[bytes]]) -> Any:
    """Answer every request of ``kind`` with ``payload()`` on ``role``'s reply subject;
    returns the subscription."""

    async def on_request(msg: Msg) -> None:
        nonce = msg.subject.rsplit(".", 1)[-1]
        if not _NONCE.match(nonce):
            return
        body = payload()
        if not isinstance(body, bytes):
            body = await body
        await bus.nc.publish(ctl_reply_subject(role, nonce), body)

    return await bus.nc.subscribe(kind.filter, cb=on_request)
