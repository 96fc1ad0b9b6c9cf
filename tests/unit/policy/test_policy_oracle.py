"""The compiled datapath entries agree with a naive evaluation of the policy model.

The oracle reads the validated model directly (which rules select the subject, which peer
rules match the peer's labels and the port) with no selector cache, no selector ids and no
map entries; hypothesis draws policies, identities and packets, and every verdict that
expand() + lookup() produce must equal the oracle's.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.identities import ID_HOST, ID_WORLD, reserved_labels
from services.common.labels import Labels
from services.common.policytypes import ANY_PROTO, PROTO_TCP, PROTO_UDP, Direction, Verdict
from services.policy import Policy, PortRule, Repository, expand, lookup, parse_policy
from services.policy.cidr import cidr_labels, cidr_selector, matching_labels
from tests.unit.policy.test_policy_incremental import labels, policy_doc

NAMED: dict[int, dict[str, set[tuple[int, int]]]] = {
    256: {"http": {(PROTO_TCP, 8080)}}, 257: {"http": {(PROTO_TCP, 80)}},
    258: {"http": {(PROTO_UDP, 8080)}},
}
PACKETS = [(PROTO_TCP, 80), (PROTO_TCP, 8080), (PROTO_TCP, 8085), (PROTO_UDP, 8080),
           (PROTO_TCP, 22)]


def _port_ok(p: PortRule, proto: int, port: int, owners: list[int]) -> bool:
    if p.proto not in (ANY_PROTO, proto):
        return False
    if p.name:
        return any(pr == proto and pt == port
                   for o in owners for pr, pt in NAMED.get(o, {}).get(p.name, ()))
    return p.port == 0 or p.port <= port <= p.end_port


def oracle(policies: list[Policy], subject: int, s_labels: Labels, peer: int,
           p_labels: Labels, direction: Direction, proto: int, port: int) -> Verdict:
    allow = deny = enforced = False
    for policy in policies:
        for rule in policy.rules:
            if not rule.subject.matches(s_labels):
                continue
            enforced |= rule.default_deny(direction)
            for pr in rule.peers:
                if pr.section.direction != direction:
                    continue
                peer_ok = pr.any_peer or any(s.matches(p_labels) for s in pr.endpoints) or \
                    any(cidr_selector(c).matches(p_labels) for c in pr.cidrs)
                if direction == Direction.INGRESS:
                    owners = [subject]
                else:
                    owners = list(NAMED) if pr.any_peer else [peer]
                ports_ok = not pr.ports or any(_port_ok(p, proto, port, owners)
                                               for p in pr.ports)
                if peer_ok and ports_ok:
                    deny |= pr.section.deny
                    allow |= not pr.section.deny
    if deny:
        return Verdict.DENY
    return Verdict.ALLOW if allow or not enforced else Verdict.DENY


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(labels(), min_size=1, max_size=3), st.lists(policy_doc(), min_size=1,
                                                            max_size=4))
def test_expand_and_lookup_agree_with_the_model(ids: list[Labels],
                                                docs: list[dict[str, Any]]) -> None:
    repo = Repository()
    idents: dict[int, Labels] = {256 + i: lbls for i, lbls in enumerate(ids)}
    idents[ID_WORLD] = reserved_labels(ID_WORLD)
    idents[ID_HOST] = reserved_labels(ID_HOST)
    for ident, lbls in idents.items():
        repo.add_identity(ident, lbls)
    policies: dict[Any, Policy] = {}
    for doc in docs:
        repo.apply(doc)
        policy = parse_policy(doc)
        policies[policy.ref] = policy
    everyone = {i: matching_labels(i, lbls) for i, lbls in idents.items()}
    everyone |= {ident: cidr_labels(prefix) for prefix, ident in repo.prefix_entries().items()}
    members = repo.cache.snapshot()
    for subject in idents:
        expansion = expand(repo.subject_policy(subject), members, NAMED)
        for peer, p_labels in everyone.items():
            for direction in Direction:
                for proto, port in PACKETS:
                    got, _ = lookup(expansion, peer, direction, proto, port)
                    want = oracle(list(policies.values()), subject, everyone[subject], peer,
                                  p_labels, direction, proto, port)
                    assert got == want, (subject, peer, direction, proto, port)
