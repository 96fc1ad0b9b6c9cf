"""Cilium's name and pattern semantics for toFQDNs and DNS rules (pure)."""

from __future__ import annotations

import pytest

from services.policy import parse_policy
from services.policy.errors import PolicyValidationError
from services.policy.fqdnmatch import match_name, match_pattern


@pytest.mark.parametrize(("pattern", "yes", "no"), [
    ("*", ["example.com", "a.b.c.example.org", "localhost"], []),
    ("*.example.com", ["a.example.com", "A.Example.COM.", "x-1.example.com"],
     ["example.com", "a.b.example.com", "a.example.com.evil.net", "aexample.com"]),
    ("**.example.com", ["a.example.com", "a.b.example.com", "x.y.z.example.com"],
     ["example.com", "a.example.org"]),
    ("api-*.example.com", ["api-.example.com", "api-1.example.com", "api-eu-2.example.com"],
     ["api.example.com", "api-1.b.example.com", "web-1.example.com"]),
    ("sub.*.example.com", ["sub.a.example.com"], ["sub.a.b.example.com", "sub.example.com"]),
    ("api.example.com", ["api.example.com", "API.EXAMPLE.COM."], ["xapi.example.com"]),
])
def test_patterns_match_as_cilium_documents(pattern: str, yes: list[str],
                                            no: list[str]) -> None:
    m = match_pattern(pattern)
    assert [n for n in yes if not m.matches(n)] == []
    assert [n for n in no if m.matches(n)] == []


def test_a_name_matches_itself_only() -> None:
    m = match_name("API.example.com.")
    assert m.text == "api.example.com" and not m.is_pattern
    assert m.matches("api.example.com") and m.matches("Api.Example.Com.")
    assert not m.matches("a.api.example.com") and not m.matches("apixexample.com")


@pytest.mark.parametrize("pattern", ["*.exa mple.com", "a..example.com", "[a].example.com",
                                     "a.**.example.com", "***.example.com", "", ".",
                                     "example.com/x", "a+b.example.com"])
def test_a_bad_pattern_is_refused_naming_the_policy_field_and_value(pattern: str) -> None:
    doc = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
           "metadata": {"name": "p", "namespace": "default"},
           "spec": {"endpointSelector": {}, "egress": [
               {"toFQDNs": [{"matchName": "api.example.com"}, {"matchPattern": pattern}]}]}}
    with pytest.raises(PolicyValidationError) as exc:
        parse_policy(doc)
    assert "spec.egress[0].toFQDNs[1].matchPattern" in str(exc.value)
    assert repr(pattern) in str(exc.value)


@pytest.mark.parametrize("name", ["*.example.com", "a..b", "", "exa mple.com", "a" * 254])
def test_a_bad_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid DNS name"):
        match_name(name)
