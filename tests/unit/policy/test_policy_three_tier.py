"""The seed's Exercise 1 (examples/three-tier/policy.yaml) as a full verdict matrix via trace."""

from __future__ import annotations

import itertools

import pytest

from services.common.policytypes import PROTO_TCP, PROTO_UDP, Verdict
from services.policy import trace
from tests.support.policy_helpers import EXAMPLES, build, load_docs, pod

TIERS = {
    "frontend": pod(ns_labels={"env": "production"}, app="frontend", tier="web"),
    "backend": pod(ns_labels={"env": "production"}, app="backend", tier="api"),
    "database": pod(ns_labels={"env": "production"}, app="database", tier="db"),
}
IDS = {1000 + i: lbls for i, lbls in enumerate(TIERS.values())}
PORTS = (80, 8080, 5432, 53)
ALLOWED = {("frontend", "backend", 8080), ("backend", "database", 5432)}


@pytest.fixture(scope="module")
def repo():  # type: ignore[no-untyped-def]
    return build(load_docs(EXAMPLES / "three-tier" / "policy.yaml"), IDS)


def expected(src: str, dst: str, port: int) -> Verdict:
    if dst == "frontend":               # nothing selects the frontend: open
        return Verdict.ALLOW
    return Verdict.ALLOW if (src, dst, port) in ALLOWED else Verdict.DENY


@pytest.mark.parametrize(("src", "dst", "port"),
                         list(itertools.product(TIERS, TIERS, PORTS)))
def test_matrix(repo, src: str, dst: str, port: int) -> None:  # type: ignore[no-untyped-def]
    result = trace(TIERS[src], TIERS[dst], port, PROTO_TCP, repo)
    assert result.verdict == expected(src, dst, port), result.render()
    assert result.egress.verdict == Verdict.ALLOW       # the policy has no egress sections


def test_udp_on_allowed_ports_is_denied(repo) -> None:  # type: ignore[no-untyped-def]
    assert trace(TIERS["frontend"], TIERS["backend"], 8080, PROTO_UDP, repo).verdict \
        == Verdict.DENY


def test_trace_names_the_deciding_rules(repo) -> None:  # type: ignore[no-untyped-def]
    ok = trace(TIERS["frontend"], TIERS["backend"], 8080, PROTO_TCP, repo)
    assert [str(o) for o in ok.ingress.deciding] == \
        ["CiliumNetworkPolicy/production/backend-allow-frontend rule 0 ingress[0]"]
    assert ok.ingress.enforced and not ok.egress.enforced
    denied = trace(TIERS["frontend"], TIERS["database"], 5432, PROTO_TCP, repo)
    assert denied.ingress.verdict == Verdict.DENY
    assert denied.ingress.reason == "denied by deny rule(s)"
    assert [str(o) for o in denied.ingress.deciding] == \
        ["CiliumNetworkPolicy/production/database-allow-backend rule 0 ingressDeny[0]"]
    default = trace(TIERS["backend"], TIERS["database"], 80, PROTO_TCP, repo)
    assert default.ingress.reason.startswith("default deny")
    assert [o.name for o in default.ingress.deciding] == ["database-allow-backend"]
    text = denied.render()
    assert "Final verdict: DENIED" in text and "ingressDeny[0]" in text
    assert denied.to_dict()["verdict"] == "DENIED"


def test_unknown_label_sets_get_a_provisional_identity(repo) -> None:  # type: ignore[no-untyped-def]
    # A second frontend pod with an extra label has no identity yet: trace still answers.
    newcomer = pod(ns_labels={"env": "production"}, app="frontend", tier="web", version="v2")
    result = trace(newcomer, TIERS["backend"], 8080, PROTO_TCP, repo)
    assert result.verdict == Verdict.ALLOW
    assert result.src_identity not in IDS
    assert trace(newcomer, TIERS["database"], 5432, PROTO_TCP, repo).verdict == Verdict.DENY
