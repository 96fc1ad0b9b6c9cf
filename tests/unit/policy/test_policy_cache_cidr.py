"""Selector cache deltas and refcounts; CIDR identities, labels and longest-prefix match."""

from __future__ import annotations

import pytest

from services.common.identities import ID_HOST, ID_WORLD, LOCAL_IDENTITY_FLAG, reserved_labels
from services.common.labels import Labels
from services.policy import (
    ENTITY_SELECTORS,
    CIDRError,
    SelectorCache,
    SelectorDelta,
    cidr_labels,
    lpm_identity,
    parse_selector,
)
from services.policy.cidr import CIDRAllocator, cidr_selector, make_cidr_rule
from tests.support.policy_helpers import pod

WEB = parse_selector({"matchLabels": {"app": "web"}}, "s")
NOT_WEB = parse_selector({"matchExpressions": [{"key": "app", "operator": "NotIn",
                                                "values": ["web"]}]}, "s")


def test_add_selector_returns_members_and_is_refcounted() -> None:
    cache = SelectorCache()
    cache.add_identity(300, pod(app="web"))
    cache.add_identity(301, pod(app="db"))
    assert cache.add_selector(WEB) == (frozenset({300}), True)
    assert cache.add_selector(WEB) == (frozenset({300}), False)
    assert cache.remove_selector(WEB.id) is False
    assert cache.members(WEB.id) == {300}
    assert cache.remove_selector(WEB.id) is True
    assert cache.members(WEB.id) == frozenset() and WEB.id not in cache.selector_ids()


def test_identity_events_give_per_selector_deltas() -> None:
    cache = SelectorCache()
    cache.add_selector(WEB)
    cache.add_selector(NOT_WEB)
    cache.add_selector(ENTITY_SELECTORS["world"])
    assert cache.add_identity(300, pod(app="web")) == {
        WEB.id: SelectorDelta(frozenset({300}), frozenset())}
    assert cache.add_identity(301, pod(app="db")) == {
        NOT_WEB.id: SelectorDelta(frozenset({301}), frozenset())}
    # Relabel: leaves WEB, joins NOT_WEB.
    assert cache.add_identity(300, pod(app="api")) == {
        WEB.id: SelectorDelta(frozenset(), frozenset({300})),
        NOT_WEB.id: SelectorDelta(frozenset({300}), frozenset())}
    assert cache.add_identity(300, pod(app="api")) == {}
    assert cache.remove_identity(301) == {NOT_WEB.id: SelectorDelta(frozenset(), frozenset({301}))}
    assert cache.remove_identity(999) == {}
    deltas = cache.add_identity(ID_WORLD, reserved_labels(ID_WORLD))
    assert set(deltas) == {NOT_WEB.id, ENTITY_SELECTORS["world"].id}


def test_cidr_labels_include_supernets_and_world() -> None:
    lbls = cidr_labels("10.1.0.0/16")
    assert "cidr:10.0.0.0/8=" in lbls.strings() and "cidr:0.0.0.0/0=" in lbls.strings()
    assert "reserved:world" in lbls.strings() and "cidr:10.1.0.0/16=" in lbls.strings()
    assert "cidr:10.1.0.0/17=" not in lbls.strings()
    v6 = cidr_labels("2001:db8::/32")
    assert "cidr:2001-db8--/32=" in v6.strings()


def test_cidr_selector_with_except() -> None:
    rule = make_cidr_rule("10.0.0.0/8", ["10.1.0.0/16"])
    sel = cidr_selector(rule)
    assert sel.matches(cidr_labels("10.0.0.0/8"))
    assert sel.matches(cidr_labels("10.2.0.0/16"))
    assert not sel.matches(cidr_labels("10.1.0.0/16"))
    assert not sel.matches(cidr_labels("10.1.2.0/24"))    # inside the except
    assert not sel.matches(cidr_labels("11.0.0.0/8"))
    assert not sel.matches(pod(app="x"))                   # pods never match CIDR rules
    assert ENTITY_SELECTORS["world"].matches(cidr_labels("10.0.0.0/8"))
    assert not ENTITY_SELECTORS["cluster"].matches(cidr_labels("10.0.0.0/8"))
    assert ENTITY_SELECTORS["cluster"].matches(reserved_labels(ID_HOST))


def test_cidr_allocator_is_deterministic_refcounted_and_in_local_scope() -> None:
    a, b = CIDRAllocator(), CIDRAllocator()
    ia, new = a.acquire("10.0.0.0/8")
    assert new and ia >= LOCAL_IDENTITY_FLAG
    b.acquire("192.168.0.0/16")
    assert b.acquire("10.0.0.0/8")[0] == ia          # a function of the prefix, not the order
    assert a.acquire("10.0.0.0/8") == (ia, False)
    assert a.release("10.0.0.0/8") is None
    assert a.release("10.0.0.0/8") == ia
    assert a.entries() == {}


def test_lpm() -> None:
    entries = {"10.0.0.0/8": 1 << 24 | 1, "10.1.0.0/16": 1 << 24 | 2}
    assert lpm_identity("10.1.2.3", entries) == 1 << 24 | 2
    assert lpm_identity("10.2.2.3", entries) == 1 << 24 | 1
    assert lpm_identity("11.0.0.1", entries) == ID_WORLD
    assert lpm_identity("2001:db8::1", entries) == ID_WORLD
    with pytest.raises(CIDRError):
        lpm_identity("not-an-ip", entries)


def test_labels_of_unrelated_sources_do_not_leak() -> None:
    k8s_only = parse_selector({"matchLabels": {"k8s:app": "web"}}, "s")
    assert not k8s_only.matches(Labels.parse(["container:app=web"]))
