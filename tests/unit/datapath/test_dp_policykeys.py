"""Pure tests of the policy map encoding: port blocks, deny folding, the kernel's decision."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.policytypes import ANY_PEER, ANY_PROTO, PolicyKey, Verdict
from services.nodeagent.datapath import EncodeError, decide, expand_policy, port_range_prefixes
from services.nodeagent.datapath.maps.policy import (
    decode_policy,
    encode_policy,
    policy_partition,
    prefix_range,
    prefix_to_key,
)


@given(st.integers(0, 65535), st.integers(0, 65535))
def test_port_blocks_cover_exactly_the_range(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    blocks = port_range_prefixes(lo, hi)
    covered = []
    for port, plen in blocks:
        start, end = prefix_range(port, plen)
        assert start % (end - start + 1) == 0, "blocks are aligned"
        covered.append((start, end))
    covered.sort()
    assert covered[0][0] == lo and covered[-1][1] == hi
    assert all(x[1] + 1 == y[0] for x, y in itertools.pairwise(covered))
    assert len(blocks) <= 2 * 16


def test_known_splits() -> None:
    assert port_range_prefixes(80, 80) == [(80, 16)]
    assert port_range_prefixes(0, 65535) == [(0, 0)]
    assert port_range_prefixes(8080, 8083) == [(8080, 14)]
    assert port_range_prefixes(1, 3) == [(1, 16), (2, 15)]


SUBJECTS = st.sampled_from([300, 301])
PEERS = st.sampled_from([0, 400, 401])
PROTOS = st.sampled_from([0, 6, 17])
PORTS = st.integers(1, 64)


@st.composite
def policy_keys(draw: st.DrawFn) -> PolicyKey:
    if draw(st.booleans()):
        lo = hi = 0
    else:
        lo = draw(PORTS)
        hi = draw(st.integers(lo, 70))
    return PolicyKey(draw(SUBJECTS), draw(PEERS), draw(st.sampled_from([0, 1])),
                     draw(PROTOS), lo, hi)


def reference(desired: dict[PolicyKey, Verdict], subject: int, peer: int, direction: int,
              proto: int, port: int) -> Verdict | None:
    """The policy semantics spelled out: any matching deny denies, else any allow allows."""
    matches = [v for k, v in desired.items()
               if k.subject == subject and k.direction == direction
               and k.peer in (ANY_PEER, peer) and k.proto in (ANY_PROTO, proto)
               and (k.port == 0 or k.port <= port <= (k.end_port or k.port))]
    if Verdict.DENY in matches:
        return Verdict.DENY
    return Verdict.ALLOW if matches else None


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(policy_keys(), st.sampled_from([Verdict.ALLOW, Verdict.DENY]),
                       max_size=8),
       st.lists(st.tuples(SUBJECTS, PEERS.filter(bool), st.sampled_from([0, 1]),
                          st.sampled_from([6, 17]), st.integers(0, 72)), min_size=1,
                max_size=20))
def test_kernel_decision_equals_policy_semantics(
        desired: dict[PolicyKey, Verdict], queries: list[tuple[int, int, int, int, int]]) -> None:
    blocks = expand_policy(desired)
    roundtrip = decode_policy(encode_policy(desired))
    assert roundtrip == blocks
    for q in queries:
        assert decide(blocks, *q) == reference(desired, *q), q


def test_encoded_key_partition_is_the_subject() -> None:
    raw = encode_policy({PolicyKey(4242, 7, 0, 6, 80, 80): Verdict.ALLOW})
    assert [policy_partition(k) for k in raw] == [4242]


def test_prefix_to_key_shows_the_range() -> None:
    blocks = expand_policy({PolicyKey(300, 0, 1, 6, 8080, 8083): Verdict.ALLOW})
    assert [prefix_to_key(p) for p in blocks] == [PolicyKey(300, 0, 1, 6, 8080, 8083)]


@pytest.mark.parametrize(("key", "field"), [
    (PolicyKey(0, 1, 0, 6, 80, 80), "subject"),
    (PolicyKey(300, -1, 0, 6, 80, 80), "peer"),
    (PolicyKey(300, 1, 2, 6, 80, 80), "direction"),
    (PolicyKey(300, 1, 0, 300, 80, 80), "proto"),
    (PolicyKey(300, 1, 0, 6, 90, 80), "end_port"),
    (PolicyKey(300, 1, 0, 6, 70000, 70000), "port"),
    (PolicyKey(300, 1, 0, 6, 0, 80), "port"),
])
def test_bad_entries_name_the_field(key: PolicyKey, field: str) -> None:
    with pytest.raises(EncodeError, match=f"field {field}"):
        expand_policy({key: Verdict.ALLOW})
