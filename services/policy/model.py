"""The normalized, immutable policy model every policy kind is translated into.

``CiliumNetworkPolicy``, ``CiliumClusterwideNetworkPolicy`` and Kubernetes ``NetworkPolicy``
all become a :class:`Policy`: an ordered tuple of :class:`Rule` (one per ``spec``/``specs``
entry), each a subject selector plus peer rules per section. Namespace scoping, entities and
defaults are already applied here, so nothing downstream looks at the policy kind again.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

# The policy kinds are the bus contract's (re-exported: the policy package's names).
from services.common.contract import KIND_CCNP as KIND_CCNP
from services.common.contract import KIND_CNP as KIND_CNP
from services.common.contract import KIND_KNP as KIND_KNP
from services.common.contract import POLICY_KINDS as POLICY_KINDS
from services.common.policytypes import PROTO_NAMES, Direction

from .cidr import CIDRRule
from .selector import EndpointSelector


class Section(StrEnum):
    """A rule section, named as in the Cilium YAML."""

    INGRESS = "ingress"
    EGRESS = "egress"
    INGRESS_DENY = "ingressDeny"
    EGRESS_DENY = "egressDeny"

    @property
    def direction(self) -> Direction:
        """The traffic direction of the section."""
        return Direction.INGRESS if self in (Section.INGRESS, Section.INGRESS_DENY) \
            else Direction.EGRESS

    @property
    def deny(self) -> bool:
        """True for the deny sections."""
        return self in (Section.INGRESS_DENY, Section.EGRESS_DENY)


class PolicyRef(NamedTuple):
    """A policy's identity in the repository: (kind, namespace, name); namespace "" if global."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace \
            else f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class PortRule:
    """A port (or inclusive range, or named port) and protocol; proto 0 is any protocol.

    ``port == end_port == 0`` with no name is every port; a single port has ``end_port == port``;
    a named port has ``name`` set and ``port == end_port == 0`` until resolved.
    """

    proto: int
    port: int = 0
    end_port: int = 0
    name: str = ""

    def __str__(self) -> str:
        proto = PROTO_NAMES.get(self.proto, str(self.proto))
        if self.name:
            return f"{self.name}/{proto}"
        if self.port == 0:
            return f"any/{proto}"
        if self.end_port != self.port:
            return f"{self.port}-{self.end_port}/{proto}"
        return f"{self.port}/{proto}"

    def to_list(self) -> list[Any]:
        """msgpack form: ``[proto, port, end_port, name]``."""
        return [self.proto, self.port, self.end_port, self.name]


@dataclass(frozen=True)
class FQDNSelector:
    """``toFQDNs`` entry: exactly one of ``match_name`` / ``match_pattern`` is set."""

    match_name: str = ""
    match_pattern: str = ""

    @property
    def text(self) -> str:
        """The normalized name or pattern (what is published and hashed into its label)."""
        return self.match_name or self.match_pattern


@dataclass(frozen=True)
class PeerRule:
    """One entry of a section: which peers, on which ports.

    Attributes:
        section: the section it belongs to (gives direction and allow/deny).
        index: its index in that section's list.
        any_peer: the rule names no peer (L4-only rule, or a NetworkPolicy rule without
            ``from``/``to``): it applies to every peer.
        endpoints: selectors of the peers (endpoints and entities, namespace scoping applied).
        cidrs: CIDR peers.
        fqdns: ``toFQDNs`` peers: they select the addresses the nodes' DNS proxies learned
            for the names they match (see :mod:`services.policy.fqdn`).
        ports: the ports; empty means every port.
        dns: the DNS names and patterns (normalized ``matchName``/``matchPattern`` texts,
            sorted, see :func:`~services.policy.fqdnmatch.dns_matcher`) that port-53 traffic
            of this rule may ask for; None when no DNS rule restricts it (every name, the
            plain L4 meaning). As in Cilium, one ``toPorts`` item covering port 53 without
            DNS rules makes it None; otherwise it is the union of the items' rules.
    """

    section: Section
    index: int
    any_peer: bool = False
    endpoints: tuple[EndpointSelector, ...] = ()
    cidrs: tuple[CIDRRule, ...] = ()
    fqdns: tuple[FQDNSelector, ...] = ()
    ports: tuple[PortRule, ...] = ()
    dns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Rule:
    """One ``spec`` of a policy.

    Attributes:
        index: position among the policy's specs (``spec`` first, then ``specs``).
        path: where it came from (``spec``, ``specs[2]``).
        subject: the endpoints it applies to (namespace scoping applied).
        peers: every peer rule of every section, in document order.
        default_deny_ingress: whether selecting an endpoint makes its ingress default-deny.
        default_deny_egress: the same for egress.
        description: the free-form ``description``.
    """

    index: int
    path: str
    subject: EndpointSelector
    peers: tuple[PeerRule, ...]
    default_deny_ingress: bool
    default_deny_egress: bool
    description: str = ""

    def default_deny(self, direction: Direction) -> bool:
        """Whether selecting an endpoint makes ``direction`` default-deny."""
        return self.default_deny_ingress if direction == Direction.INGRESS \
            else self.default_deny_egress


@dataclass(frozen=True)
class Policy:
    """A validated policy object."""

    kind: str
    namespace: str
    name: str
    rules: tuple[Rule, ...]

    @property
    def ref(self) -> PolicyRef:
        """The repository key of this policy."""
        return PolicyRef(self.kind, self.namespace, self.name)
