"""Policy service output: compiled rules per subject identity, selector members, status.

* ``policy.rules`` on ``cilia.policy.rules.<identity>``: the rules that select the identity,
  over selector ids (the wire form of :class:`services.policy.compiler.SubjectPolicy`,
  ``to_dict``/``from_dict``); ``rules`` empty: no policy selects it.
* ``policy.selector`` on ``cilia.policy.selector.<id>``: ``op`` ``set`` (whole member set,
  with the selector's canonical form and spec), ``delta`` (``added``/``removed``) or
  ``delete``.
* ``policy.status`` on ``cilia.policy.status.<kind>.<ns>.<name>``: ``op`` ``set``,
  ``delete`` or ``error`` (the previous version stays in force; ``error`` says why).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from services.common.policytypes import ANY_PORT, PROTO_BY_NAME

from ._types import (
    DnsSubdomain,
    Fqdn,
    IdentityNum,
    LabelValue,
    Namespace,
    Payload,
    PortName,
    PortOrZero,
    Revision,
    SelectorId,
    SourcedKey,
    Text,
    check_identities,
    check_identity,
    dec_hook,
)
from .objects import KIND_CCNP, KIND_CNP, KIND_KNP, NAMESPACED
from .tokens import token


class PolicyEvent(StrEnum):
    """Event types of the policy service's output (the values are the wire strings)."""

    RULES = "policy.rules"
    SELECTOR = "policy.selector"
    STATUS = "policy.status"


POLICY_FILTER = "cilia.policy.>"
POLICY_RULES_FILTER = "cilia.policy.rules.>"
POLICY_SELECTOR_FILTER = "cilia.policy.selector.>"
POLICY_STATUS_FILTER = "cilia.policy.status.>"


def policy_rules_subject(subject_identity: int) -> str:
    """``cilia.policy.rules.<identity>``: the compiled policy of one subject identity."""
    return f"cilia.policy.rules.{subject_identity}"


def policy_selector_subject(selector_id: str) -> str:
    """``cilia.policy.selector.<id>``: one selector's members."""
    return f"cilia.policy.selector.{selector_id}"


def policy_status_subject(kind: str, namespace: str, name: str) -> str:
    """``cilia.policy.status.<kind>.<ns>.<name>``: what became of one policy object."""
    return f"cilia.policy.status.{kind.lower()}.{token(namespace)}.{token(name)}"


SUBJECT_SCHEMA = 1   # services.policy.compiler.SUBJECT_SCHEMA

PolicyKind = Literal["CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy", "NetworkPolicy"]
SectionName = Literal["ingress", "egress", "ingressDeny", "egressDeny"]
Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
Index = Annotated[int, Meta(ge=0)]
PROTOCOLS = frozenset(PROTO_BY_NAME.values())
# [proto, port, end_port, name] (services.policy.model.PortRule.to_list)
PortList = tuple[int, PortOrZero, PortOrZero, PortName]
assert {KIND_CNP, KIND_CCNP, KIND_KNP} <= set(NAMESPACED)


def _check_ref(kind: str, namespace: str) -> None:
    if NAMESPACED[kind] != bool(namespace):
        raise ValueError(f"namespace: {namespace!r} does not fit a {kind}")


class RuleEntry(Payload):
    """One peer rule: the peers (selector ids, or any peer) on the ports.

    ``fqdns``: the ``toFQDNs`` names and patterns (their selectors are among ``selectors``).
    ``dns``: the names and patterns its port-53 traffic may ask for (a text with ``*`` is a
    pattern, ``services.policy.fqdnmatch.dns_matcher``); absent: every name.
    """

    section: SectionName
    index: Index
    any_peer: bool
    selectors: list[SelectorId]
    ports: list[PortList]
    fqdns: list[Fqdn]
    dns: list[Fqdn] | None = None

    def __post_init__(self) -> None:
        for i, (proto, port, end, name) in enumerate(self.ports):
            where = f"ports[{i}]"
            if proto not in PROTOCOLS:
                raise ValueError(f"{where}: protocol {proto} is not one of "
                                 f"{sorted(PROTOCOLS)}")
            if name and (port, end) != (ANY_PORT, ANY_PORT):
                raise ValueError(f"{where}: a named port has port and end_port 0")
            if port == ANY_PORT and end != ANY_PORT:
                raise ValueError(f"{where}: port 0 (any) needs end_port 0")
            if end < port:
                raise ValueError(f"{where}: end_port {end} is below port {port}")


class CompiledRuleDoc(Payload):
    """One policy rule compiled against selector ids (``CompiledRule.to_dict``)."""

    kind: PolicyKind
    namespace: Namespace
    name: DnsSubdomain
    rule: Index
    subject: SelectorId
    default_deny_ingress: bool
    default_deny_egress: bool
    entries: list[RuleEntry]

    def __post_init__(self) -> None:
        _check_ref(self.kind, self.namespace)


_RULE = msgspec.msgpack.Decoder(CompiledRuleDoc, dec_hook=dec_hook)
# Rules already checked, by their msgpack bytes: a subject's policy.rules message repeats all
# its rules each time one changes, so checking only the new ones keeps the cost of a message
# proportional to the change (a rule's check is a pure function of its bytes).
_CHECKED_RULES: dict[bytes, CompiledRuleDoc] = {}
MAX_CHECKED_RULES = 1 << 12   # rules remembered (a few MiB at most)


def compiled_rule(raw: msgspec.Raw | bytes) -> CompiledRuleDoc:
    """One rule of a ``policy.rules`` message, checked (from the cache when seen before).

    Raises:
        msgspec.ValidationError: it does not follow :class:`CompiledRuleDoc`.
    """
    key = bytes(raw)
    doc = _CHECKED_RULES.get(key)
    if doc is None:
        doc = _RULE.decode(key)
        if len(_CHECKED_RULES) >= MAX_CHECKED_RULES:
            _CHECKED_RULES.clear()
        _CHECKED_RULES[key] = doc
    return doc


class PolicyRules(Payload):
    """The compiled policy of one subject identity (``SubjectPolicy.to_dict``).

    ``rules`` holds each rule's msgpack bytes; each is checked as a :class:`CompiledRuleDoc`
    (:func:`compiled_rule`, which also gives the typed rule).
    """

    identity: IdentityNum
    revision: Revision
    rules: list[msgspec.Raw]
    schema: Literal[1] | None = None
    ingress_enforced: bool | None = None
    egress_enforced: bool | None = None

    def __post_init__(self) -> None:
        check_identity(self.identity, "identity")
        docs = []
        for i, raw in enumerate(self.rules):
            try:
                docs.append(compiled_rule(raw))
            except msgspec.ValidationError as exc:
                raise ValueError(f"rules[{i}]: {exc}") from None
        for flag, value in (("ingress_enforced", any(r.default_deny_ingress for r in docs)),
                            ("egress_enforced", any(r.default_deny_egress for r in docs))):
            given = getattr(self, flag)
            if given is not None and given != value:
                raise ValueError(f"{flag}: {given} contradicts the rules ({value})")

    def subjects(self) -> tuple[str, ...]:
        return (policy_rules_subject(self.identity),)


class SelectorExpression(Payload):
    """One requirement of a selector (``matchExpressions`` with the source in the key)."""

    key: SourcedKey
    operator: Operator
    values: list[LabelValue] = []

    def __post_init__(self) -> None:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"values: operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"values: operator {self.operator} takes no values")


class SelectorSpec(Payload):
    """A selector's requirements (``EndpointSelector.to_dict``)."""

    id: SelectorId
    matchExpressions: list[SelectorExpression]


class PolicySelector(Payload):
    """The members of one selector: the whole set, a delta, or its removal."""

    selector: SelectorId
    revision: Revision
    op: Literal["set", "delta", "delete"]
    members: list[IdentityNum] | None = None
    added: list[IdentityNum] | None = None
    removed: list[IdentityNum] | None = None
    canonical: Text | None = None
    selector_spec: SelectorSpec | None = None

    def __post_init__(self) -> None:
        lists = {"members": self.members, "added": self.added, "removed": self.removed}
        wanted = {"set": {"members"}, "delta": {"added", "removed"}, "delete": set()}[self.op]
        for name, value in lists.items():
            if name in wanted and value is None:
                raise ValueError(f"{name}: required by op {self.op!r}")
            if name not in wanted and value:
                raise ValueError(f"{name}: not part of op {self.op!r}")
            if value:
                check_identities(value, name)
        if self.selector_spec is not None and self.selector_spec.id != self.selector:
            raise ValueError(f"selector_spec.id: {self.selector_spec.id!r} is not the "
                             f"selector {self.selector!r}")

    def subjects(self) -> tuple[str, ...]:
        return (policy_selector_subject(self.selector),)


class PolicyStatus(Payload):
    """What the policy service made of one policy object."""

    kind: PolicyKind
    namespace: Namespace
    name: DnsSubdomain
    revision: Revision
    op: Literal["set", "delete", "error"]
    rules: Index | None = None
    selectors: list[SelectorId] | None = None
    error: Text | None = None

    def __post_init__(self) -> None:
        _check_ref(self.kind, self.namespace)
        if self.op == "error" and not self.error:
            raise ValueError("error: required by op 'error'")

    def subjects(self) -> tuple[str, ...]:
        return (policy_status_subject(self.kind, self.namespace, self.name),)


EVENTS: dict[str, type[Payload]] = {PolicyEvent.RULES: PolicyRules,
                                    PolicyEvent.SELECTOR: PolicySelector,
                                    PolicyEvent.STATUS: PolicyStatus}
