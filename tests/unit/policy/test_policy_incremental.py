"""Incremental state equals from-scratch state, and the published stream converges to it.

Hypothesis draws identities, policies and random orders of add/remove/upsert/delete; after
every step the incrementally maintained repository must equal one rebuilt from scratch from
the surviving identities and policies, and a consumer applying only the published messages
must hold the same selector members, subject rules and prefixes.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.identities import RESERVED, reserved_labels
from services.common.labels import Labels
from services.policy import PolicyRef, Repository, SelectorMirror, expand, messages, parse_policy
from tests.support.policy_helpers import pod

NAMESPACES = ("ns1", "ns2")
APPS = ("a", "b", "c")
PREFIXES = ("10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/24", "0.0.0.0/0")
EXCEPTS = {"10.0.0.0/8": ["10.1.0.0/16"], "192.168.0.0/24": ["192.168.0.128/25"]}
ENTITIES = ("world", "cluster", "host", "all", "remote-node")


@st.composite
def labels(draw: st.DrawFn) -> Labels:
    extra = {"tier": draw(st.sampled_from(("x", "y")))} if draw(st.booleans()) else {}
    ns_labels = {"team": "t1"} if draw(st.booleans()) else {}
    return pod(namespace=draw(st.sampled_from(NAMESPACES)), ns_labels=ns_labels,
               app=draw(st.sampled_from(APPS)), **extra)


@st.composite
def selector(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out["matchLabels"] = {"app": draw(st.sampled_from(APPS))}
    choice = draw(st.integers(0, 4))
    if choice == 1:
        out["matchExpressions"] = [{"key": "tier", "operator": "Exists"}]
    elif choice == 2:
        out["matchExpressions"] = [{"key": "app", "operator": "NotIn",
                                    "values": [draw(st.sampled_from(APPS))]}]
    elif choice == 3:
        out["matchLabels"] = {**out.get("matchLabels", {}),
                              "io.cilium.k8s.namespace.labels.team": "t1"}
    return out


@st.composite
def peer_rule(draw: st.DrawFn, direction: str, deny: bool) -> dict[str, Any]:
    pre = "from" if direction == "ingress" else "to"
    kind = draw(st.integers(0, 4))
    rule: dict[str, Any] = {}
    if kind == 1:
        rule[f"{pre}Endpoints"] = draw(st.lists(selector(), min_size=1, max_size=2))
    elif kind == 2:
        rule[f"{pre}Entities"] = draw(st.lists(st.sampled_from(ENTITIES), min_size=1,
                                               max_size=2))
    elif kind == 3:
        rule[f"{pre}CIDR"] = draw(st.lists(st.sampled_from(PREFIXES), min_size=1, max_size=2))
    elif kind == 4:
        p = draw(st.sampled_from(PREFIXES))
        rule[f"{pre}CIDRSet"] = [{"cidr": p, "except": EXCEPTS.get(p, [])}]
    if draw(st.booleans()) or not rule:
        port = draw(st.sampled_from(["80", "8080", "http", "0"]))
        item: dict[str, Any] = {"port": port, "protocol": draw(st.sampled_from(["TCP", "ANY"]))}
        if port == "8080" and draw(st.booleans()):
            item["endPort"] = 8090
        rule["toPorts"] = [{"ports": [item]}]
    return rule


@st.composite
def k8s_peer(draw: st.DrawFn) -> dict[str, Any]:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        p = draw(st.sampled_from(PREFIXES))
        return {"ipBlock": {"cidr": p, "except": EXCEPTS.get(p, [])}}
    peer: dict[str, Any] = {"podSelector": {"matchLabels": {"app": draw(st.sampled_from(APPS))}}}
    if choice == 2:
        peer["namespaceSelector"] = {}
    elif choice == 3:
        peer["namespaceSelector"] = {"matchLabels": {"team": "t1"}}
    return peer


@st.composite
def k8s_policy(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": draw(selector()) if draw(st.booleans()) else {}}
    spec["podSelector"].pop("matchExpressions", None)
    spec["podSelector"]["matchLabels"] = {
        k: v for k, v in spec["podSelector"].get("matchLabels", {}).items() if k == "app"}
    types = draw(st.sets(st.sampled_from(["Ingress", "Egress"]), min_size=1))
    for direction, peer_key in (("Ingress", "from"), ("Egress", "to")):
        if direction in types and draw(st.booleans()):
            rules = []
            for _ in range(draw(st.integers(0, 2))):
                rule: dict[str, Any] = {}
                if draw(st.booleans()):
                    rule[peer_key] = draw(st.lists(k8s_peer(), min_size=1, max_size=2))
                if draw(st.booleans()):
                    rule["ports"] = [{"port": draw(st.sampled_from([80, "http"])),
                                      "protocol": "TCP"}]
                rules.append(rule)
            spec[direction.lower()] = rules
    spec["policyTypes"] = sorted(types)
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": draw(st.sampled_from(["k0", "k1"])),
                         "namespace": draw(st.sampled_from(NAMESPACES))}, "spec": spec}


@st.composite
def policy_doc(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["CNP", "CCNP", "KNP"]))
    if kind == "KNP":
        return draw(k8s_policy())
    spec: dict[str, Any] = {"endpointSelector": draw(selector())}
    for section in ("ingress", "egress", "ingressDeny", "egressDeny"):
        if draw(st.integers(0, 2)) == 0:
            direction = "ingress" if section.startswith("ingress") else "egress"
            spec[section] = draw(st.lists(peer_rule(direction, section.endswith("Deny")),
                                          max_size=2))
    if draw(st.integers(0, 4)) == 0:
        spec["enableDefaultDeny"] = {"ingress": draw(st.booleans())}
    name = draw(st.sampled_from(["p0", "p1", "p2"]))
    if kind == "CCNP":
        return {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
                "metadata": {"name": name}, "spec": spec}
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": draw(st.sampled_from(NAMESPACES))},
            "spec": spec}


IDENT = st.integers(256, 259)
OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), IDENT, labels()),
    st.tuples(st.just("remove"), IDENT),
    st.tuples(st.just("upsert"), policy_doc()),
    st.tuples(st.just("delete"), st.integers(0, 10)),
    st.tuples(st.just("reserved"), st.sampled_from(sorted(RESERVED)), st.booleans()),
), min_size=4, max_size=30)

NAMED = {i: {"http": {(6, 8000 + i)}} for i in range(256, 264)}


def state(repo: Repository) -> dict[str, Any]:
    subjects = repo.subjects()
    return {
        "selectors": repo.cache.snapshot(),
        "subjects": {i: sp.rules for i, sp in subjects.items()},
        "prefixes": repo.prefix_entries(),
        "entries": {i: expand(sp, repo.cache.snapshot(), NAMED).entries
                    for i, sp in subjects.items()},
    }


def mirror_state(mirror: SelectorMirror) -> dict[str, Any]:
    return {"selectors": {k: frozenset(v) for k, v in mirror.members.items()},
            "subjects": {i: sorted(map(repr, p["rules"])) for i, p in mirror.subjects.items()},
            "prefixes": dict(mirror.prefixes)}


def repo_mirror_view(repo: Repository) -> dict[str, Any]:
    return {"selectors": repo.cache.snapshot(),
            "subjects": {i: sorted(repr(r.to_dict()) for r in sp.rules)
                         for i, sp in repo.subjects().items()},
            "prefixes": repo.prefix_entries()}


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_incremental_equals_from_scratch(ops: list[tuple[Any, ...]]) -> None:
    repo = Repository()
    mirror = SelectorMirror()
    identities: dict[int, Labels] = {}
    policies: dict[PolicyRef, dict[str, Any]] = {}
    for op in ops:
        if op[0] == "add":
            ch = repo.add_identity(op[1], op[2])
            identities[op[1]] = op[2]
        elif op[0] == "remove":
            ch = repo.remove_identity(op[1])
            identities.pop(op[1], None)
        elif op[0] == "reserved":
            if op[2]:
                ch = repo.add_identity(op[1], reserved_labels(op[1]))
                identities[op[1]] = reserved_labels(op[1])
            else:
                ch = repo.remove_identity(op[1])
                identities.pop(op[1], None)
        elif op[0] == "upsert":
            ch = repo.apply(op[1])
            policies[parse_policy(op[1]).ref] = op[1]
        else:
            refs = sorted(policies)
            if not refs:
                continue
            ref = refs[op[1] % len(refs)]
            ch = repo.delete(ref)
            del policies[ref]
        for msg in messages(repo, ch):
            mirror.apply(msg)
        # From scratch, in both orders.
        fresh_a = Repository()
        for ident, lbls in identities.items():
            fresh_a.add_identity(ident, lbls)
        for doc in policies.values():
            fresh_a.apply(doc)
        fresh_b = Repository()
        for doc in policies.values():
            fresh_b.apply(doc)
        for ident, lbls in identities.items():
            fresh_b.add_identity(ident, lbls)
        assert state(repo) == state(fresh_a) == state(fresh_b)
        # Expanding only some peers gives exactly the full expansion's entries for them.
        snapshot = repo.cache.snapshot()
        some = {*list(identities)[::2], *list(repo.prefix_entries().values())[::2], 2}
        for sp in repo.subjects().values():
            full = expand(sp, snapshot, NAMED).entries
            part = expand(sp, snapshot, NAMED, peers=some).entries
            assert part == {k: v for k, v in full.items() if k.peer in some}
        assert mirror_state(mirror) == repo_mirror_view(repo)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_removing_everything_leaves_nothing_behind(ops: list[tuple[Any, ...]]) -> None:
    repo = Repository()
    mirror = SelectorMirror()
    for op in ops:
        if op[0] == "add":
            ch = repo.add_identity(op[1], op[2])
        elif op[0] == "upsert":
            ch = repo.apply(op[1])
        else:
            continue
        for msg in messages(repo, ch):
            mirror.apply(msg)
    for policy in list(repo.policies()):
        for msg in messages(repo, repo.delete(policy.ref)):
            mirror.apply(msg)
    for ident in list(repo.identities()):
        for msg in messages(repo, repo.remove_identity(ident)):
            mirror.apply(msg)
    assert repo.cache.selector_ids() == [] and repo.cache.identities() == {}
    assert repo.subjects() == {} and repo.prefix_entries() == {}
    assert repo.compiled_rules() == []
    assert mirror.members == {} and mirror.subjects == {} and mirror.prefixes == {}
