"""DNS rules (``toPorts[].rules.dns``): egress, port 53 only; parsed, merged, compiled, carried
on the bus (pure)."""

from __future__ import annotations

import copy
from typing import Any

import msgpack
import pytest

from services.common.contract.policy import compiled_rule
from services.policy import (
    CompiledRule,
    PolicyRef,
    PolicyValidationError,
    UnsupportedFieldError,
    compile_rule,
    parse_policy,
)
from services.policy.fqdn import fqdn_selector
from services.policy.fqdnmatch import dns_matcher
from tests.support.fqdn import EXERCISE_2
from tests.support.policy_helpers import load_docs

SEED = load_docs(EXERCISE_2)[0]     # the seed's Exercise 2, as examples/fqdn ships it

DNS_PORT = {"port": "53", "protocol": "UDP"}


def egress(*items: dict[str, Any]) -> dict[str, Any]:
    """The seed policy with its egress replaced by ``items``."""
    doc = copy.deepcopy(SEED)
    doc["spec"]["egress"] = list(items)
    return doc


def to_dns(*to_ports: dict[str, Any]) -> dict[str, Any]:
    return {"toEndpoints": [{"matchLabels": {"k8s-app": "kube-dns"}}], "toPorts": list(to_ports)}


def test_the_seed_policy_is_accepted() -> None:
    (rule,) = parse_policy(SEED).rules
    dns_peer, fqdn_peer = rule.peers
    assert dns_peer.dns == ("*",)
    assert fqdn_peer.dns is None and fqdn_peer.fqdns[0].text == "api.example.com"


@pytest.mark.parametrize(("items", "want"), [
    ([{"matchName": "API.Example.com."}], ("api.example.com",)),
    ([{"matchPattern": "*"}], ("*",)),
    ([{"matchPattern": "*.Example.com"}], ("*.example.com",)),
    ([{"matchPattern": "**.example.com"}, {"matchName": "a.io"}, {"matchName": "a.io"}],
     ("**.example.com", "a.io")),
])
def test_dns_rules_are_kept_normalized_sorted_and_unique(items: list[dict[str, str]],
                                                         want: tuple[str, ...]) -> None:
    doc = egress(to_dns({"ports": [DNS_PORT], "rules": {"dns": items}}))
    (peer,) = parse_policy(doc).rules[0].peers
    assert peer.dns == want


def test_the_texts_rebuild_the_matchers() -> None:
    assert dns_matcher("*.example.com").matches("a.example.com")
    assert not dns_matcher("*.example.com").matches("example.com")
    assert dns_matcher("**.example.com").matches("a.b.example.com")
    assert dns_matcher("api.example.com").matches("API.example.com.")
    assert not dns_matcher("api.example.com").is_pattern
    assert dns_matcher("*").matches("anything.at.all")


BAD = [
    (egress(to_dns({"ports": [DNS_PORT], "rules": {"http": [{"method": "GET"}]}})),
     "spec.egress[0].toPorts[0].rules.http", "'http' is not supported", True),
    (egress(to_dns({"ports": [DNS_PORT], "rules": {"kafka": [{}]}})),
     "spec.egress[0].toPorts[0].rules.kafka", "'kafka' is not supported", True),
    (egress(to_dns({"ports": [{"port": "80", "protocol": "TCP"}],
                    "rules": {"dns": [{"matchPattern": "*"}]}})),
     "spec.egress[0].toPorts[0].rules.dns", "ports[0] is 80/TCP", False),
    (egress(to_dns({"ports": [DNS_PORT, {"port": "5353", "protocol": "UDP"}],
                    "rules": {"dns": [{"matchPattern": "*"}]}})),
     "spec.egress[0].toPorts[0].rules.dns", "ports[1] is 5353/UDP", False),
    (egress(to_dns({"ports": [{"port": "53", "protocol": "SCTP"}],
                    "rules": {"dns": [{"matchPattern": "*"}]}})),
     "spec.egress[0].toPorts[0].rules.dns", "to be 53 (UDP, TCP or ANY", False),
    (egress(to_dns({"ports": [{"port": "dns", "protocol": "UDP"}],
                    "rules": {"dns": [{"matchPattern": "*"}]}})),
     "spec.egress[0].toPorts[0].rules.dns", "ports[0] is dns/UDP", False),
    (egress(to_dns({"rules": {"dns": [{"matchPattern": "*"}]}})),
     "spec.egress[0].toPorts[0].rules.dns", "DNS rules need ports", False),
    (egress(to_dns({"ports": [DNS_PORT], "rules": {"dns": []}})),
     "spec.egress[0].toPorts[0].rules.dns", "empty dns list", False),
    (egress(to_dns({"ports": [DNS_PORT], "rules": {}})),
     "spec.egress[0].toPorts[0].rules", "rules needs dns", False),
    (egress(to_dns({"ports": [DNS_PORT], "rules": {"dns": [
        {"matchName": "a.io"}, {"matchPattern": "a.**.io"}]}})),
     "spec.egress[0].toPorts[0].rules.dns[1].matchPattern", "invalid DNS pattern", False),
    (egress(to_dns({"ports": [DNS_PORT], "rules": {"dns": [
        {"matchName": "*.io"}]}})),
     "spec.egress[0].toPorts[0].rules.dns[0].matchName", "invalid DNS name", False),
    (egress(to_dns({"ports": [DNS_PORT], "rules": {"dns": [
        {"matchName": "a.io", "matchPattern": "*"}]}})),
     "spec.egress[0].toPorts[0].rules.dns[0]", "exactly one", False),
]


@pytest.mark.parametrize(("doc", "path", "words", "unsupported"), BAD,
                         ids=[b[1] + ":" + b[2] for b in BAD])
def test_a_rule_cilia_would_not_enforce_is_refused_naming_the_field(
        doc: dict[str, Any], path: str, words: str, unsupported: bool) -> None:
    with pytest.raises(PolicyValidationError) as exc:
        parse_policy(doc)
    assert exc.value.path == path, str(exc.value)
    assert words in exc.value.reason, str(exc.value)
    assert isinstance(exc.value, UnsupportedFieldError) == unsupported


def test_dns_rules_in_ingress_are_unsupported() -> None:
    doc = egress()
    doc["spec"]["ingress"] = [{"toPorts": [{"ports": [DNS_PORT],
                                            "rules": {"dns": [{"matchPattern": "*"}]}}]}]
    with pytest.raises(UnsupportedFieldError) as exc:
        parse_policy(doc)
    assert exc.value.path == "spec.ingress[0].toPorts[0].rules.dns"


@pytest.mark.parametrize(("to_ports", "want"), [
    # every item covering 53 has DNS rules: their union
    ([{"ports": [DNS_PORT], "rules": {"dns": [{"matchName": "b.io"}]}},
      {"ports": [{"port": "53", "protocol": "TCP"}], "rules": {"dns": [{"matchName": "a.io"}]}},
      {"ports": [{"port": "443", "protocol": "TCP"}]}],
     ("a.io", "b.io")),
    # one item covering 53 without DNS rules: every name
    ([{"ports": [DNS_PORT], "rules": {"dns": [{"matchName": "b.io"}]}},
      {"ports": [{"port": "53"}]}], None),
    ([{"ports": [DNS_PORT], "rules": {"dns": [{"matchName": "b.io"}]}},
      {"ports": [{"port": "50", "endPort": 60, "protocol": "UDP"}]}], None),
    ([{"ports": [DNS_PORT], "rules": {"dns": [{"matchName": "b.io"}]}},
      {"ports": [{"port": "0", "protocol": "ANY"}]}], None),
    # SCTP and named ports do not take DNS traffic to port 53
    ([{"ports": [DNS_PORT], "rules": {"dns": [{"matchName": "b.io"}]}},
      {"ports": [{"port": "53", "protocol": "SCTP"}, {"port": "dns"}]}], ("b.io",)),
    ([{"ports": [DNS_PORT]}], None),
])
def test_dns_rules_merge_as_in_cilium(to_ports: list[dict[str, Any]],
                                      want: tuple[str, ...] | None) -> None:
    (peer,) = parse_policy(egress(to_dns(*to_ports))).rules[0].peers
    assert peer.dns == want


def test_compiled_entries_carry_dns_and_fqdn_selectors_through_the_bus() -> None:
    policy = parse_policy(SEED)
    rule = compile_rule(policy.ref, policy.rules[0])
    dns_entry, fqdn_entry = rule.entries
    assert dns_entry.dns == ("*",) and dns_entry.fqdns == ()
    assert fqdn_entry.dns is None and fqdn_entry.fqdns == ("api.example.com",)
    assert fqdn_entry.selectors == (fqdn_selector("api.example.com").id,)
    doc = rule.to_dict()
    assert doc["entries"][0]["dns"] == ["*"] and "dns" not in doc["entries"][1]
    typed = compiled_rule(msgpack.packb(doc))
    assert typed.entries[0].dns == ["*"] and typed.entries[1].dns is None
    assert CompiledRule.from_doc(typed) == rule
    assert CompiledRule.from_dict(doc) == rule


def test_an_entry_without_dns_keeps_its_old_wire_form() -> None:
    policy = parse_policy(egress({"toCIDR": ["10.0.0.0/8"]}))
    doc = compile_rule(PolicyRef(*policy.ref), policy.rules[0]).to_dict()
    assert set(doc["entries"][0]) == {"section", "index", "any_peer", "selectors", "ports",
                                      "fqdns"}
