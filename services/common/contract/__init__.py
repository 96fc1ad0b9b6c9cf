"""The bus contract: the one place that spells the bus.

One module per domain (:mod:`.objects`, :mod:`.identity`, :mod:`.ipcache`, :mod:`.policy`,
:mod:`.lb`, :mod:`.agent`, :mod:`.flows`, :mod:`.control`) owns its subjects (builders,
filters and parsers), an enum of its event types (a ``StrEnum``: each value is the wire
string) and their typed payloads; :mod:`.streams` names the history stream and the KV
buckets; :mod:`.consumers` holds every consumer's subscription as data. Nothing outside this
package spells a ``cilia.`` subject or an event type
(``tests/unit/contract/test_contract_literals.py`` fails if something does).

A payload is checked down to its nested fields and value ranges, and against the subject it
was published on (an event about pod ``a`` on pod ``b``'s subject is malformed). Consumers
receive plain dicts, and the typed payload rides along (:attr:`Event.payload`); a producer
may hand the codec either a dict or the typed payload.

Usage::

    payload = validate("ipcache.upsert", data)           # a dict about to be published
    payload = decode_data("ipcache.upsert", raw_bytes)   # msgpack bytes of the data field
    check_subject(payload, "cilia.ipcache.k8s.10-0-0-1_32")

Each raises :class:`~services.common.errors.MalformedPayload` naming the event type and the
field at fault.
"""

from __future__ import annotations

from typing import Any

import msgpack
import msgspec

from services.common.errors import MalformedPayload

from . import agent, control, flows, identity, ipcache, lb, objects, policy
from ._types import Payload, dec_hook
from .agent import (
    AGENT_ENDPOINTS_FILTER,
    AGENT_FILTER,
    AGENT_FQDN_FILTER,
    AgentEvent,
    AgentRealized,
    EndpointDelete,
    EndpointUpsert,
    FqdnAddress,
    FqdnNames,
    agent_endpoint_subject,
    agent_endpoints_filter,
    agent_fqdn_filter,
    agent_fqdn_subject,
    agent_publish_filters,
    agent_realized_subject,
    parse_agent_endpoint,
)
from .consumers import (
    AGENT_INPUTS,
    AGENT_LB_INPUTS,
    CONSUMERS,
    IDENTITY_INPUTS,
    IDENTITY_OUTPUTS,
    K8S_FEEDBACK,
    LB_INPUTS,
    LB_OUTPUTS,
    LB_VIEW,
    POLICY_INPUTS,
    POLICY_OUTPUTS,
    REPLAY,
    ConsumerSpec,
    DeliverFrom,
)
from .control import (
    FLOWS_CONTROL,
    STATUS_CONTROL,
    ControlEvent,
    ControlRequest,
    ServiceStatus,
    ctl_reply_subject,
    parse_ctl_reply,
)
from .flows import (
    FLOW_TYPE_DNS,
    FLOW_TYPE_L3_L4,
    FLOWS_FILTER,
    DnsInfo,
    Flow,
    FlowBatch,
    FlowEvent,
    flows_subject,
)
from .identity import (
    IDENTITY_FILTER,
    IdentityDelete,
    IdentityEvent,
    IdentityUpsert,
    identity_subject,
)
from .ipcache import (
    IPCACHE_FILTER,
    IPCACHE_SOURCE_CIDR,
    IPCACHE_SOURCE_K8S,
    IpcacheDelete,
    IpcacheEvent,
    IpcacheUpsert,
    ipcache_filter,
    ipcache_subject,
    parse_ipcache_origin,
)
from .lb import (
    LB_FILTER,
    OP_DELTA,
    OP_SET,
    LbBackend,
    LbBackendDelete,
    LbEvent,
    LbMembers,
    LbServiceDelete,
    LbServiceEvent,
    LbStatus,
    ServicePortRecord,
    ServiceRecord,
    lb_backend_subject,
    lb_members_subject,
    lb_service_subject,
    lb_status_subject,
)
from .objects import (
    KIND_CCNP,
    KIND_CNP,
    KIND_KNP,
    KIND_NAMESPACE,
    KIND_NODE,
    KIND_POD,
    POLICY_KINDS,
    SOURCE_FILTER,
    ObjectDelete,
    ObjectEvent,
    ObjectUpsert,
    source_filter,
    source_subject,
)
from .policy import (
    POLICY_FILTER,
    POLICY_RULES_FILTER,
    POLICY_SELECTOR_FILTER,
    POLICY_STATUS_FILTER,
    PolicyEvent,
    policy_rules_subject,
    policy_selector_subject,
    policy_status_subject,
)
from .streams import HISTORY_STREAM, HISTORY_SUBJECTS, KV_IDENTITIES, KV_SERVICES
from .tokens import CLUSTER_SCOPE, ip_token, matches_any, subject_matches, token

EVENTS: dict[str, type[Payload]] = {
    **objects.EVENTS, **identity.EVENTS, **ipcache.EVENTS, **policy.EVENTS, **lb.EVENTS,
    **agent.EVENTS, **flows.EVENTS, **control.EVENTS,
}

# Every event type enum: the wire strings that only this package spells.
EVENT_ENUMS = (ObjectEvent, IdentityEvent, IpcacheEvent, PolicyEvent, LbEvent, AgentEvent,
               FlowEvent, ControlEvent)
assert set(EVENTS) == {e for enum in EVENT_ENUMS for e in enum}, "an event type has no schema"

_DECODERS = {name: msgspec.msgpack.Decoder(tp, dec_hook=dec_hook) for name, tp in EVENTS.items()}


def _schema(event_type: str) -> type[Payload]:
    tp = EVENTS.get(event_type)
    if tp is None:
        raise MalformedPayload(f"unknown event type {event_type[:80]!r}")
    return tp


def validate(event_type: str, data: Any) -> Payload:
    """Check an event's data (a dict as a producer builds it); returns the typed payload.

    Raises:
        MalformedPayload: unknown type, or the data does not follow its schema.
    """
    _schema(event_type)
    try:
        packed = msgpack.packb(data, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MalformedPayload(f"{event_type}: cannot be encoded: {exc}") from None
    return decode_data(event_type, packed)


def decode_data(event_type: str, raw: bytes | memoryview) -> Payload:
    """Decode and check an event's data from its msgpack bytes.

    Raises:
        MalformedPayload: unknown type, or the data does not follow its schema.
    """
    _schema(event_type)
    try:
        payload: Payload = _DECODERS[event_type].decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        raise MalformedPayload(f"{event_type}: {_reason(exc)}") from None
    return payload


def check_subject(event_type: str, payload: Payload, subject: str) -> None:
    """Check that ``payload`` belongs on ``subject``.

    Raises:
        MalformedPayload: it names another object than its subject does.
    """
    allowed = payload.subjects()
    if allowed and subject not in allowed:
        raise MalformedPayload(f"{event_type}: belongs on {allowed[0]}, not on {subject[:200]}")


# Subject families (for counting bad messages without one series per object): the tokens
# after ``cilia.`` that name a kind of subject, per domain.
_FAMILY_TOKENS: dict[str, frozenset[str]] = {
    "src": frozenset(k.lower() for k in objects.NAMESPACED),
    "identity": frozenset(),
    "ipcache": frozenset(ipcache.ORIGINS),
    "policy": frozenset({"rules", "selector", "status"}),
    "lb": frozenset({"service", "backend", "members", "status"}),
    "agent": frozenset({"realized", "endpoint"}),
    "flows": frozenset(),
    "ctl": frozenset({"status", "flows"}),
}


def subject_family(subject: str) -> str:
    """The kind of subject (``cilia.src.pod``, ``cilia.identity``...), ``other`` if unknown."""
    tokens = subject.split(".", 3)
    if len(tokens) < 2 or tokens[0] != "cilia" or tokens[1] not in _FAMILY_TOKENS:
        return "other"
    known = _FAMILY_TOKENS[tokens[1]]
    if not known:
        return f"cilia.{tokens[1]}"
    if len(tokens) > 2 and tokens[2] in known:
        return f"cilia.{tokens[1]}.{tokens[2]}"
    return f"cilia.{tokens[1]}.other"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = str(exc)
    if text.startswith("Object missing required field"):
        return text.replace("Object missing required field", "missing field", 1)
    return text


__all__ = [
    "AGENT_ENDPOINTS_FILTER",
    "AGENT_FILTER",
    "AGENT_FQDN_FILTER",
    "AGENT_INPUTS",
    "AGENT_LB_INPUTS",
    "CLUSTER_SCOPE",
    "CONSUMERS",
    "EVENTS",
    "EVENT_ENUMS",
    "FLOWS_CONTROL",
    "FLOWS_FILTER",
    "FLOW_TYPE_DNS",
    "FLOW_TYPE_L3_L4",
    "HISTORY_STREAM",
    "HISTORY_SUBJECTS",
    "IDENTITY_FILTER",
    "IDENTITY_INPUTS",
    "IDENTITY_OUTPUTS",
    "IPCACHE_FILTER",
    "IPCACHE_SOURCE_CIDR",
    "IPCACHE_SOURCE_K8S",
    "K8S_FEEDBACK",
    "KIND_CCNP",
    "KIND_CNP",
    "KIND_KNP",
    "KIND_NAMESPACE",
    "KIND_NODE",
    "KIND_POD",
    "KV_IDENTITIES",
    "KV_SERVICES",
    "LB_FILTER",
    "LB_INPUTS",
    "LB_OUTPUTS",
    "LB_VIEW",
    "OP_DELTA",
    "OP_SET",
    "POLICY_FILTER",
    "POLICY_INPUTS",
    "POLICY_KINDS",
    "POLICY_OUTPUTS",
    "POLICY_RULES_FILTER",
    "POLICY_SELECTOR_FILTER",
    "POLICY_STATUS_FILTER",
    "REPLAY",
    "SOURCE_FILTER",
    "STATUS_CONTROL",
    "AgentEvent",
    "AgentRealized",
    "ConsumerSpec",
    "ControlEvent",
    "ControlRequest",
    "DeliverFrom",
    "DnsInfo",
    "EndpointDelete",
    "EndpointUpsert",
    "Flow",
    "FlowBatch",
    "FlowEvent",
    "FqdnAddress",
    "FqdnNames",
    "IdentityDelete",
    "IdentityEvent",
    "IdentityUpsert",
    "IpcacheDelete",
    "IpcacheEvent",
    "IpcacheUpsert",
    "LbBackend",
    "LbBackendDelete",
    "LbEvent",
    "LbMembers",
    "LbServiceDelete",
    "LbServiceEvent",
    "LbStatus",
    "ObjectDelete",
    "ObjectEvent",
    "ObjectUpsert",
    "Payload",
    "PolicyEvent",
    "ServicePortRecord",
    "ServiceRecord",
    "ServiceStatus",
    "agent",
    "agent_endpoint_subject",
    "agent_endpoints_filter",
    "agent_fqdn_filter",
    "agent_fqdn_subject",
    "agent_publish_filters",
    "agent_realized_subject",
    "check_subject",
    "control",
    "ctl_reply_subject",
    "decode_data",
    "flows",
    "flows_subject",
    "identity",
    "identity_subject",
    "ip_token",
    "ipcache",
    "ipcache_filter",
    "ipcache_subject",
    "lb",
    "lb_backend_subject",
    "lb_members_subject",
    "lb_service_subject",
    "lb_status_subject",
    "matches_any",
    "objects",
    "parse_agent_endpoint",
    "parse_ctl_reply",
    "parse_ipcache_origin",
    "policy",
    "policy_rules_subject",
    "policy_selector_subject",
    "policy_status_subject",
    "source_filter",
    "source_subject",
    "subject_family",
    "subject_matches",
    "token",
    "validate",
]
