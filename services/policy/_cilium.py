"""Parse ``cilium.io/v2`` CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy."""

from __future__ import annotations

from typing import Any

from services.common.labels import SOURCE_ANY, SOURCE_K8S, SOURCE_RESERVED
from services.common.policytypes import ANY_PORT, ANY_PROTO, PROTO_TCP, PROTO_UDP

from ._fields import Ctx, parse_dns_rule, parse_fqdn, parse_metadata, parse_port
from .cidr import CIDRRule
from .entities import ALL_PODS, ENTITIES, ENTITY_SELECTORS
from .model import KIND_CCNP, FQDNSelector, PeerRule, Policy, PortRule, Rule, Section
from .selector import (
    NAMESPACE_LABELS_PREFIX,
    OP_IN,
    POD_NAMESPACE_KEY,
    EndpointSelector,
    Requirement,
)

_SPEC_FIELDS = ("endpointSelector", "ingress", "egress", "ingressDeny", "egressDeny",
                "enableDefaultDeny", "description")
_SPEC_UNSUPPORTED = ("nodeSelector", "labels")
_PORT_RULE_UNSUPPORTED = ("serverNames", "listener", "originatingTLS", "terminatingTLS")
_L7_UNSUPPORTED = ("http", "kafka", "l7proto", "l7")
DNS_PORT = 53                                  # the one port cilia's DNS proxy serves
_DNS_PROTOS = (ANY_PROTO, PROTO_UDP, PROTO_TCP)
_CIDRSET_UNSUPPORTED = ("cidrGroupRef", "cidrGroupSelector")

# Per section: the L3 peer fields (cilia name -> model slot) and the fields we reject.
_INGRESS_L3 = {"fromEndpoints": "endpoints", "fromCIDR": "cidr", "fromCIDRSet": "cidrset",
               "fromEntities": "entities"}
_EGRESS_L3 = {"toEndpoints": "endpoints", "toCIDR": "cidr", "toCIDRSet": "cidrset",
              "toEntities": "entities", "toFQDNs": "fqdns"}
_INGRESS_UNSUPPORTED = ("fromRequires", "fromGroups", "fromNodes", "icmps", "authentication")
_EGRESS_UNSUPPORTED = ("toRequires", "toServices", "toGroups", "toNodes", "icmps",
                       "authentication")


def parse_cilium(doc: dict[str, Any], kind: str, default_namespace: str) -> Policy:
    """Translate a CNP or CCNP document into the model.

    Raises:
        PolicyValidationError: naming the object and the field at fault.
    """
    clusterwide = kind == KIND_CCNP
    ctx = parse_metadata(doc, kind, not clusterwide, default_namespace)
    ctx.check_fields(doc, "", ("apiVersion", "kind", "metadata", "spec", "specs", "status"))
    specs: list[tuple[str, Any]] = []
    if doc.get("spec") is not None:
        specs.append(("spec", doc["spec"]))
    for i, spec in enumerate(ctx.listing(doc.get("specs"), "specs")):
        specs.append((f"specs[{i}]", spec))
    if not specs:
        ctx.fail("spec", f"{kind} needs spec or specs")
    rules = tuple(_parse_rule(ctx, spec, path, idx, clusterwide)
                  for idx, (path, spec) in enumerate(specs))
    return Policy(kind, ctx.namespace, ctx.name, rules)


def _namespace_req(namespace: str) -> Requirement:
    return Requirement(SOURCE_K8S, POD_NAMESPACE_KEY, OP_IN, (namespace,))


def _names_namespace(sel: EndpointSelector) -> bool:
    """Cilium leaves a peer selector unscoped if it picks namespaces or reserved identities."""
    return any((r.key == POD_NAMESPACE_KEY and r.source in (SOURCE_K8S, SOURCE_ANY))
               or r.key.startswith(NAMESPACE_LABELS_PREFIX) or r.source == SOURCE_RESERVED
               for r in sel.requirements)


def _subject(ctx: Ctx, doc: Any, path: str, clusterwide: bool) -> EndpointSelector:
    if doc is None:
        ctx.fail(path, "endpointSelector is required (nodeSelector is not supported)")
    sel = ctx.selector(doc, path)
    if any(r.source == SOURCE_RESERVED for r in sel.requirements):
        ctx.unsupported(path, "selecting reserved identities (host policy)")
    if clusterwide:
        return sel.with_requirements(ALL_PODS.requirements)
    return sel.with_requirements((_namespace_req(ctx.namespace),))


def _peer_selector(ctx: Ctx, doc: Any, path: str, clusterwide: bool) -> EndpointSelector:
    sel = ctx.selector(doc, path)
    if clusterwide:
        return sel if sel.requirements else ALL_PODS
    if _names_namespace(sel):
        return sel
    return sel.with_requirements((_namespace_req(ctx.namespace),))


def _parse_rule(ctx: Ctx, spec: Any, path: str, index: int, clusterwide: bool) -> Rule:
    spec = ctx.mapping(spec, path)
    ctx.check_fields(spec, path, _SPEC_FIELDS, _SPEC_UNSUPPORTED)
    subject = _subject(ctx, spec.get("endpointSelector"), f"{path}.endpointSelector",
                       clusterwide)
    peers: list[PeerRule] = []
    present = {}
    for section in Section:
        items = ctx.listing(spec.get(section.value), f"{path}.{section.value}")
        present[section] = bool(items)
        for i, item in enumerate(items):
            peers.append(_parse_peer(ctx, item, f"{path}.{section.value}[{i}]", section, i,
                                     clusterwide))
    dd = ctx.mapping(spec.get("enableDefaultDeny") or {}, f"{path}.enableDefaultDeny")
    ctx.check_fields(dd, f"{path}.enableDefaultDeny", ("ingress", "egress"))
    flags = {}
    for direction, sections in (("ingress", (Section.INGRESS, Section.INGRESS_DENY)),
                                ("egress", (Section.EGRESS, Section.EGRESS_DENY))):
        value = dd.get(direction)
        if value is not None and not isinstance(value, bool):
            ctx.fail(f"{path}.enableDefaultDeny.{direction}", f"must be true or false, "
                                                              f"got {value!r}")
        flags[direction] = value if value is not None else any(present[s] for s in sections)
    description = spec.get("description", "")
    if not isinstance(description, str):
        ctx.fail(f"{path}.description", "must be a string")
    return Rule(index, path, subject, tuple(peers), flags["ingress"], flags["egress"],
                description)


def _parse_peer(ctx: Ctx, item: Any, path: str, section: Section, index: int,
                clusterwide: bool) -> PeerRule:
    item = ctx.mapping(item, path)
    ingress = section in (Section.INGRESS, Section.INGRESS_DENY)
    l3 = dict(_INGRESS_L3 if ingress else _EGRESS_L3)
    unsupported = list(_INGRESS_UNSUPPORTED if ingress else _EGRESS_UNSUPPORTED)
    if section == Section.EGRESS_DENY:
        del l3["toFQDNs"]
        unsupported.append("toFQDNs")
    ctx.check_fields(item, path, (*l3, "toPorts"), unsupported)
    used = [f for f in l3 if item.get(f)]
    if len(used) > 1:
        ctx.fail(f"{path}.{used[1]}", f"combining {used[0]} and {used[1]} in one rule is not "
                                      f"supported (write two rules)")
    endpoints: list[EndpointSelector] = []
    cidrs: list[CIDRRule] = []
    fqdns: list[FQDNSelector] = []
    for field, slot in l3.items():
        for i, value in enumerate(ctx.listing(item.get(field), f"{path}.{field}")):
            fpath = f"{path}.{field}[{i}]"
            if slot == "endpoints":
                endpoints.append(_peer_selector(ctx, value, fpath, clusterwide))
            elif slot == "entities":
                if value not in ENTITY_SELECTORS:
                    ctx.fail(fpath, f"unknown entity {value!r} (expected one of "
                                    f"{', '.join(ENTITIES)})")
                endpoints.append(ENTITY_SELECTORS[value])
            elif slot == "cidr":
                cidrs.append(ctx.cidr(value, (), fpath))
            elif slot == "cidrset":
                cidrs.append(_parse_cidrset(ctx, value, fpath))
            else:
                fqdns.append(parse_fqdn(ctx, value, fpath))
    ports, dns = _parse_to_ports(ctx, item.get("toPorts"), f"{path}.toPorts", section)
    # Cilium: a rule with ports but no peer applies to every peer; a rule with neither is empty.
    any_peer = not used and bool(ports)
    return PeerRule(section, index, any_peer, tuple(endpoints), tuple(cidrs), tuple(fqdns),
                    ports, dns)


def _parse_cidrset(ctx: Ctx, value: Any, path: str) -> CIDRRule:
    value = ctx.mapping(value, path)
    ctx.check_fields(value, path, ("cidr", "except"), _CIDRSET_UNSUPPORTED)
    if "cidr" not in value:
        ctx.fail(f"{path}.cidr", "cidr is required")
    excepts = ctx.listing(value.get("except"), f"{path}.except")
    return ctx.cidr(value["cidr"], excepts, path)


def _parse_to_ports(ctx: Ctx, doc: Any, path: str, section: Section
                    ) -> tuple[tuple[PortRule, ...], tuple[str, ...] | None]:
    """The ports of every ``toPorts`` item, and the DNS rules of the peer rule's port-53
    traffic (:attr:`PeerRule.dns`)."""
    out: list[PortRule] = []
    covering: list[tuple[str, ...] | None] = []   # per item covering port 53: its DNS rules
    # Deny sections take no L7 rules at all (Cilium's deny toPorts have no ``rules`` either).
    unsupported = _PORT_RULE_UNSUPPORTED if not section.deny \
        else ("rules", *_PORT_RULE_UNSUPPORTED)
    for i, item in enumerate(ctx.listing(doc, path)):
        ipath = f"{path}[{i}]"
        item = ctx.mapping(item, ipath)
        ctx.check_fields(item, ipath, ("ports", "rules"), unsupported)
        ports = tuple(parse_port(ctx, p, f"{ipath}.ports[{j}]", "ANY")
                      for j, p in enumerate(ctx.listing(item.get("ports"), f"{ipath}.ports")))
        dns = None
        if "rules" in item:
            dns = _parse_rules(ctx, item["rules"], f"{ipath}.rules", section, ports)
        if not ports:
            ctx.fail(f"{ipath}.ports", "at least one port is required")
        if any(_covers_dns(p) for p in ports):
            covering.append(dns)
        out.extend(ports)
    if not covering or any(d is None for d in covering):
        return tuple(out), None
    return tuple(out), tuple(sorted({t for d in covering if d is not None for t in d}))


def _covers_dns(port: PortRule) -> bool:
    """Whether ``port`` takes DNS traffic to port 53 (a named port is never resolved here:
    it does not count)."""
    return not port.name and port.proto in _DNS_PROTOS \
        and (port.port == ANY_PORT or port.port <= DNS_PORT <= port.end_port)


def _parse_rules(ctx: Ctx, doc: Any, path: str, section: Section,
                 ports: tuple[PortRule, ...]) -> tuple[str, ...]:
    """``toPorts[].rules``: DNS rules only, in egress only, on port 53 only (what cilia's DNS
    proxy enforces; anything else is refused rather than accepted and not enforced)."""
    rules = ctx.mapping(doc, path)
    ctx.check_fields(rules, path, ("dns",), _L7_UNSUPPORTED)
    dpath = f"{path}.dns"
    if "dns" not in rules:
        ctx.fail(path, "rules needs dns, the only L7 rules cilia enforces (leave rules out "
                       "for a plain L4 rule)")
    if section != Section.EGRESS:
        ctx.unsupported(dpath, f"a DNS rule in section {section.value!r}",
                        "the DNS proxy filters what endpoints ask: egress only")
    if not ports:
        ctx.fail(dpath, "DNS rules need ports: [{port: \"53\"}] (cilia's DNS proxy serves "
                        "port 53 only)")
    for j, p in enumerate(ports):
        if p.name or p.port != DNS_PORT or p.end_port != DNS_PORT or p.proto not in _DNS_PROTOS:
            ctx.fail(dpath, f"DNS rules need every port of their toPorts item to be 53 (UDP, "
                            f"TCP or ANY; cilia's DNS proxy serves no other port), but "
                            f"ports[{j}] is {p}")
    items = ctx.listing(rules["dns"], dpath)
    if not items:
        ctx.fail(dpath, "an empty dns list is not supported: list matchName/matchPattern "
                        "items (matchPattern '*' allows every name), or leave rules out")
    return tuple(sorted({parse_dns_rule(ctx, x, f"{dpath}[{k}]") for k, x in enumerate(items)}))
