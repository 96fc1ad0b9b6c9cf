"""The policy service's pure core: model, selectors, selector cache, CIDR, compiler, trace.

Typical use (the service wiring)::

    repo = Repository()
    ch = repo.apply(yaml_doc)               # or repo.upsert(parse_policy(doc)); repo.delete(ref)
    ch = repo.add_identity(300, labels)     # identity events; repo.remove_identity(300)
    ch = repo.learn(fqdn_names)             # what a node's DNS proxy learned (toFQDNs peers)
    for m in messages(repo, ch):            # in order, e.g. via Bus.publish_batch:
        Outgoing(m.subject, m.event, m.payload, m.msg_id)

The agent side rebuilds ``SubjectPolicy.from_payload(payload)`` and selector members from the
published messages and calls :func:`expand`; ``cilia policy trace`` calls :func:`trace`. The
agent's DNS proxy rebuilds an entry's ``dns`` and ``fqdns`` texts with
:func:`~services.policy.fqdnmatch.dns_matcher`.
"""

from .cidr import CIDRRule, cidr_labels, lpm_identity
from .compiler import (
    CompiledEntry,
    CompiledRule,
    Expansion,
    NamedPorts,
    RuleOrigin,
    SubjectPolicy,
    compile_rule,
    expand,
    key_matches,
    lookup,
)
from .entities import ALL_PODS, ENTITIES, ENTITY_SELECTORS
from .errors import (
    CIDRError,
    PolicyError,
    PolicyValidationError,
    SelectorError,
    UnsupportedFieldError,
)
from .model import (
    KIND_CCNP,
    KIND_CNP,
    KIND_KNP,
    POLICY_KINDS,
    FQDNSelector,
    PeerRule,
    Policy,
    PolicyRef,
    PortRule,
    Rule,
    Section,
)
from .publish import (
    CHANNEL_POLICY,
    CHANNEL_PREFIX,
    CHANNEL_SELECTOR,
    CHANNEL_SUBJECT,
    Message,
    SelectorMirror,
    error_message,
    messages,
)
from .repository import Changes, Repository
from .selector import EndpointSelector, Requirement, parse_selector
from .selectorcache import SelectorCache, SelectorDelta
from .trace import DirectionTrace, TraceResult, identity_for_address, pod_labels, trace
from .validate import is_policy_document, parse_policy

__all__ = [
    "ALL_PODS", "CHANNEL_POLICY", "CHANNEL_PREFIX", "CHANNEL_SELECTOR", "CHANNEL_SUBJECT",
    "ENTITIES", "ENTITY_SELECTORS", "KIND_CCNP", "KIND_CNP", "KIND_KNP", "POLICY_KINDS",
    "CIDRError", "CIDRRule", "Changes", "CompiledEntry", "CompiledRule", "DirectionTrace",
    "EndpointSelector", "Expansion", "FQDNSelector", "Message", "NamedPorts", "PeerRule",
    "Policy", "PolicyError", "PolicyRef", "PolicyValidationError", "PortRule", "Repository",
    "Requirement", "Rule", "RuleOrigin", "Section", "SelectorCache", "SelectorDelta",
    "SelectorError", "SelectorMirror", "SubjectPolicy", "TraceResult", "UnsupportedFieldError",
    "cidr_labels", "compile_rule", "error_message", "expand", "identity_for_address",
    "is_policy_document", "key_matches", "lookup", "lpm_identity", "messages", "parse_policy",
    "parse_selector", "pod_labels", "trace",
]
