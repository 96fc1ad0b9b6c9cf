"""Translate ``networking.k8s.io/v1`` NetworkPolicy into the model (as Cilium does).

* ``podSelector`` (subject and peers) uses k8s-source labels, confined to the namespace.
* ``namespaceSelector`` matches the namespace labels the identity service copies onto every
  pod identity (``k8s:io.cilium.k8s.namespace.labels.<key>``); ``{}`` is every namespace.
* ``ipBlock`` becomes a CIDR rule with ``except``; like Cilium, it matches only peers without
  a label-based identity (pod addresses resolve to the pod's identity).
* A rule without ``from``/``to`` applies to every peer, without ``ports`` to every port;
  ``policyTypes`` (default: Ingress, plus Egress when egress rules exist) makes a direction
  default-deny even with no rule for it.
"""

from __future__ import annotations

from typing import Any

from services.common.labels import SOURCE_K8S

from ._fields import Ctx, parse_metadata, parse_port
from .cidr import CIDRRule
from .model import KIND_KNP, PeerRule, Policy, PortRule, Rule, Section
from .selector import (
    NAMESPACE_LABELS_PREFIX,
    OP_EXISTS,
    OP_IN,
    POD_NAMESPACE_KEY,
    EndpointSelector,
    Requirement,
)

POLICY_TYPES = ("Ingress", "Egress")
_SECTIONS = {"ingress": (Section.INGRESS, "from"), "egress": (Section.EGRESS, "to")}


def parse_k8s(doc: dict[str, Any], default_namespace: str) -> Policy:
    """Translate a Kubernetes NetworkPolicy document.

    Raises:
        PolicyValidationError: naming the object and the field at fault.
    """
    ctx = parse_metadata(doc, KIND_KNP, True, default_namespace)
    ctx.check_fields(doc, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    spec = ctx.mapping(doc.get("spec"), "spec")
    ctx.check_fields(spec, "spec", ("podSelector", "policyTypes", "ingress", "egress"))
    if "podSelector" not in spec:
        ctx.fail("spec.podSelector", "podSelector is required ({} selects every pod)")
    in_ns = Requirement(SOURCE_K8S, POD_NAMESPACE_KEY, OP_IN, (ctx.namespace,))
    subject = ctx.selector(spec["podSelector"], "spec.podSelector", SOURCE_K8S) \
        .with_requirements((in_ns,))
    sections = {name: ctx.listing(spec.get(name), f"spec.{name}") for name in _SECTIONS}
    raw_types = spec.get("policyTypes")
    if raw_types is None:
        types = {"Ingress"} | ({"Egress"} if sections["egress"] else set())
    else:
        types = set()
        for i, t in enumerate(ctx.listing(raw_types, "spec.policyTypes")):
            if t not in POLICY_TYPES:
                ctx.fail(f"spec.policyTypes[{i}]", f"unknown policy type {t!r} "
                                                   f"(expected Ingress or Egress)")
            types.add(t)
    peers: list[PeerRule] = []
    for name, (section, peer_field) in _SECTIONS.items():
        if sections[name] and name.capitalize() not in types:
            ctx.fail(f"spec.{name}", f"{name} rules given but policyTypes lacks "
                                     f"{name.capitalize()} (they would be ignored)")
        for i, item in enumerate(sections[name]):
            peers.append(_parse_rule(ctx, item, f"spec.{name}[{i}]", section, i, peer_field,
                                     in_ns))
    rule = Rule(0, "spec", subject, tuple(peers), "Ingress" in types, "Egress" in types)
    return Policy(KIND_KNP, ctx.namespace, ctx.name, (rule,))


def _parse_rule(ctx: Ctx, item: Any, path: str, section: Section, index: int,
                peer_field: str, in_ns: Requirement) -> PeerRule:
    item = ctx.mapping(item, path)
    ctx.check_fields(item, path, (peer_field, "ports"))
    endpoints: list[EndpointSelector] = []
    cidrs: list[CIDRRule] = []
    raw_peers = ctx.listing(item.get(peer_field), f"{path}.{peer_field}")
    for i, peer in enumerate(raw_peers):
        ppath = f"{path}.{peer_field}[{i}]"
        peer = ctx.mapping(peer, ppath)
        ctx.check_fields(peer, ppath, ("podSelector", "namespaceSelector", "ipBlock"))
        if "ipBlock" in peer:
            if len(peer) > 1:
                ctx.fail(f"{ppath}.ipBlock", "ipBlock cannot be combined with podSelector or "
                                             "namespaceSelector in one peer")
            cidrs.append(_ip_block(ctx, peer["ipBlock"], f"{ppath}.ipBlock"))
        elif not peer:
            ctx.fail(ppath, "a peer needs podSelector, namespaceSelector or ipBlock")
        else:
            endpoints.append(_peer_selector(ctx, peer, ppath, in_ns))
    ports = tuple(_parse_ports(ctx, item.get("ports"), f"{path}.ports"))
    return PeerRule(section, index, not raw_peers, tuple(endpoints), tuple(cidrs), (), ports)


def _peer_selector(ctx: Ctx, peer: dict[str, Any], path: str,
                   in_ns: Requirement) -> EndpointSelector:
    pods = ctx.selector(peer.get("podSelector"), f"{path}.podSelector", SOURCE_K8S)
    if "namespaceSelector" not in peer:
        return pods.with_requirements((in_ns,))
    ns = ctx.selector(peer["namespaceSelector"], f"{path}.namespaceSelector", SOURCE_K8S)
    # Namespace labels reach pod identities under the namespace-labels prefix.
    ns_reqs = [Requirement(SOURCE_K8S, NAMESPACE_LABELS_PREFIX + r.key, r.op, r.values)
               for r in ns.requirements]
    ns_reqs.append(Requirement(SOURCE_K8S, POD_NAMESPACE_KEY, OP_EXISTS))
    return pods.with_requirements(ns_reqs)


def _ip_block(ctx: Ctx, doc: Any, path: str) -> CIDRRule:
    doc = ctx.mapping(doc, path)
    ctx.check_fields(doc, path, ("cidr", "except"))
    if "cidr" not in doc:
        ctx.fail(f"{path}.cidr", "cidr is required")
    return ctx.cidr(doc["cidr"], ctx.listing(doc.get("except"), f"{path}.except"), path)


def _parse_ports(ctx: Ctx, doc: Any, path: str) -> list[PortRule]:
    return [parse_port(ctx, p, f"{path}[{i}]", "TCP")
            for i, p in enumerate(ctx.listing(doc, path))]
