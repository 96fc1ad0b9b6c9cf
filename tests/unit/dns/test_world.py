"""The lab's world (pure): names given as ``NAME=IP`` and ``ALIAS=TARGET``, checked whole, and
how the cluster DNS answers them: exact names, ``*.`` wildcards, CNAME chains, NODATA."""

from __future__ import annotations

import ipaddress
import itertools

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from services.common.world import DEFAULT_WORLD, WORLD_IPS, World, WorldError, world
from services.dns.records import answer


def ask(w: World, name: str, rdtype: str = "A") -> dns.message.Message:
    return answer(dns.message.make_query(name, rdtype), {}, w)


def records(resp: dns.message.Message) -> list[tuple[str, str, str]]:
    """(owner, type, data) of every answer record, in order."""
    return [(rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype), rr.to_text())
            for rrset in resp.answer for rr in sorted(rrset, key=lambda r: r.to_text())]


def addresses_of(w: World, name: str) -> list[str]:
    found = w.resolve(name)
    assert found is not None, name
    return [str(ip) for ip in found.addresses]


def test_the_default_world_has_the_exercise_names_and_the_external_hosts() -> None:
    assert addresses_of(DEFAULT_WORLD, "api.example.com") == ["203.0.113.20"]
    assert addresses_of(DEFAULT_WORLD, "external.cilia.test") == [str(WORLD_IPS[0])]
    assert DEFAULT_WORLD.resolve("nothing.example.com") is None
    # the external host answers on its own addresses and on every named one
    assert set(DEFAULT_WORLD.addresses()) >= {*WORLD_IPS, ipaddress.IPv4Address("203.0.113.20"),
                                              ipaddress.IPv4Address("198.51.100.20")}


def test_names_are_added_to_the_defaults_and_replace_them() -> None:
    w = world(["api.example.com=203.0.113.50", "api.example.com=203.0.113.51",
               "shop.example.net=198.51.100.7"])
    assert [str(ip) for ip in w.names["api.example.com"]] == ["203.0.113.50", "203.0.113.51"]
    assert "shop.example.net" in w.names and "www.example.com" in w.names
    # what the lab's state and the DNS pods carry gives the same world back
    assert World.from_json(w.to_json()) == w
    args = w.to_args()
    names = [v for k, v in itertools.pairwise(args) if k == "--external-name"]
    cnames = [v for k, v in itertools.pairwise(args) if k == "--external-cname"]
    assert world(names, cnames, defaults=False) == w


def test_an_exact_name_answers_its_addresses() -> None:
    w = world(["api.example.com=203.0.113.50", "api.example.com=203.0.113.51"])
    resp = ask(w, "API.example.com.")
    assert resp.rcode() == dns.rcode.NOERROR
    assert records(resp) == [("API.example.com.", "A", "203.0.113.50"),
                             ("API.example.com.", "A", "203.0.113.51")]
    assert not resp.flags & dns.flags.AA        # outside the cluster's own zones
    assert ask(w, "external.cilia.test.").flags & dns.flags.AA


def test_a_wildcard_stands_for_every_name_below_it_but_not_itself() -> None:
    w = world(["*.cdn.example.net=203.0.113.40"])
    for name in ("a.cdn.example.net.", "x.y.cdn.example.net."):
        assert records(ask(w, name)) == [(name, "A", "203.0.113.40")]
    assert ask(w, "cdn.example.net.").rcode() == dns.rcode.NXDOMAIN
    # an exact name below a wildcard wins over it
    w2 = world(["*.cdn.example.net=203.0.113.40", "img.cdn.example.net=203.0.113.41"])
    assert records(ask(w2, "img.cdn.example.net.")) == [
        ("img.cdn.example.net.", "A", "203.0.113.41")]


def test_a_cname_chain_is_answered_link_by_link_then_the_addresses() -> None:
    w = world(["*.cdn.example.net=203.0.113.40"],
              ["a.example.com=b.example.com", "b.example.com=edge.cdn.example.net"])
    assert records(ask(w, "a.example.com.")) == [
        ("a.example.com.", "CNAME", "b.example.com."),
        ("b.example.com.", "CNAME", "edge.cdn.example.net."),
        ("edge.cdn.example.net.", "A", "203.0.113.40")]
    # another type: the chain, and no data (NOERROR), as a resolver answers
    resp = ask(w, "a.example.com.", "AAAA")
    assert resp.rcode() == dns.rcode.NOERROR
    assert [r[1] for r in records(resp)] == ["CNAME", "CNAME"]
    # the default CNAME
    assert records(ask(DEFAULT_WORLD, "assets.example.com."))[-1] == (
        "static.cdn.example.net.", "A", "203.0.113.40")


def test_an_unknown_name_is_nxdomain() -> None:
    assert ask(DEFAULT_WORLD, "blocked.example.com.").rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize(("names", "cnames", "message"), [
    (["api.example.com"], [], "expected NAME=VALUE"),
    (["api.example.com=10.0.0.1"], [], "outside the lab's internet"),
    (["api.example.com=8.8.8.8"], [], "outside the lab's internet"),
    (["api.example.com=nope"], [], "is not an IPv4 address"),
    (["single=203.0.113.9"], [], "two labels or more"),
    (["bad_name.example.com=203.0.113.9"], [], "is not a DNS name"),
    (["*.*.example.com=203.0.113.9"], [], "is not a DNS name"),
    ([], ["*.example.com=api.example.com"], "is not a DNS name"),
    ([], ["a.example.com=b.example.com", "b.example.com=a.example.com"], "is a loop"),
    ([], ["a.example.com=nowhere.example.com"], "ends at no address"),
    ([], ["a.example.com=api.example.com", "a.example.com=www.example.com"],
     "already an alias"),
    (["a.example.com=203.0.113.9"], ["a.example.com=api.example.com"], "not both"),
])
def test_a_bad_name_is_refused_whole_naming_the_value(names: list[str], cnames: list[str],
                                                     message: str) -> None:
    with pytest.raises(WorldError, match=message) as exc:
        world(names, cnames)
    given = (names or cnames)[-1]
    assert given.split("=")[0] in str(exc.value) or "loop" in message


def test_a_long_chain_is_refused() -> None:
    chain = [f"n{i}.example.com=n{i + 1}.example.com" for i in range(9)]
    with pytest.raises(WorldError, match="more than 8 CNAMEs"):
        world(["n9.example.com=203.0.113.9"], chain)
    assert addresses_of(world(["n8.example.com=203.0.113.9"], chain[:8]),
                        "n0.example.com") == ["203.0.113.9"]
