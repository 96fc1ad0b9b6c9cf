"""Every CiliumNetworkPolicy of the seed tutorial parses and means what the tutorial says."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.identities import ID_WORLD
from services.common.policytypes import PROTO_TCP, PROTO_UDP, Verdict
from services.policy import Section, identity_for_address, parse_policy
from tests.support.policy_helpers import EXAMPLES, build, load_docs, pod, verdict
from tests.support.procs import REPO

SEED_DIR = EXAMPLES / "policies"
# A copy of the tutorial (the seed) the examples are taken from: a clone has nothing beside it.
SEED_TEXT = REPO / "tests" / "support" / "data" / "cilium-track-part1.txt"
SEEDS = sorted(SEED_DIR.glob("seed-*.yaml"))

FRONTEND = pod(app="frontend", tier="web")
BACKEND = pod(app="backend", tier="api")
OTHER_NS_FRONTEND = pod(namespace="staging", app="frontend", tier="web")
KUBE_DNS = pod(namespace="kube-system", k8s__app="kube-dns")
PROMETHEUS = pod(namespace="monitoring", app="prometheus")
PROD_PROMETHEUS = pod(app="prometheus")
DATABASE = pod(app="database", tier="db")
IDS = {300: FRONTEND, 301: BACKEND, 302: OTHER_NS_FRONTEND, 303: KUBE_DNS, 304: PROMETHEUS,
       305: PROD_PROMETHEUS, 306: DATABASE}


def seed(name: str) -> dict:  # type: ignore[type-arg]
    (doc,) = load_docs(SEED_DIR / f"seed-{name}.yaml")
    return doc


def test_seed_files_are_verbatim_copies_of_the_tutorial() -> None:
    assert len(SEEDS) == 3
    text = SEED_TEXT.read_text()   # the shared seed is the source; copies must not drift
    for path in SEEDS:
        assert path.read_text().strip() in text, path.name


@pytest.mark.parametrize("path", SEEDS, ids=lambda p: p.name)
def test_every_seed_parses(path: Path) -> None:
    (doc,) = load_docs(path)
    policy = parse_policy(doc)
    assert policy.namespace == "production" and policy.rules


def test_allow_frontend_to_backend_means_ports_8080_and_8443_from_frontend() -> None:
    policy = parse_policy(seed("allow-frontend-to-backend"))
    (rule,) = policy.rules
    assert [p.section for p in rule.peers] == [Section.INGRESS]
    assert rule.default_deny_ingress and not rule.default_deny_egress
    repo = build([seed("allow-frontend-to-backend")], IDS)
    assert verdict(repo, FRONTEND, BACKEND, 8080) == Verdict.ALLOW
    assert verdict(repo, FRONTEND, BACKEND, 8443) == Verdict.ALLOW
    assert verdict(repo, FRONTEND, BACKEND, 9000) == Verdict.DENY
    assert verdict(repo, FRONTEND, BACKEND, 8080, PROTO_UDP) == Verdict.DENY
    assert verdict(repo, OTHER_NS_FRONTEND, BACKEND, 8080) == Verdict.DENY   # namespace scoped
    assert verdict(repo, DATABASE, BACKEND, 8080) == Verdict.DENY
    # Egress of the backend and ingress of the frontend are untouched.
    assert verdict(repo, BACKEND, FRONTEND, 1234) == Verdict.ALLOW


def test_backend_egress_policy_allows_dns_and_the_cidr_on_5432_only() -> None:
    repo = build([seed("backend-egress-policy")], IDS)
    assert verdict(repo, BACKEND, KUBE_DNS, 53, PROTO_UDP) == Verdict.ALLOW
    assert verdict(repo, BACKEND, KUBE_DNS, 53, PROTO_TCP) == Verdict.DENY
    external = identity_for_address(repo, "10.20.30.40")
    assert external != ID_WORLD
    assert verdict(repo, BACKEND, external, 5432) == Verdict.ALLOW
    assert verdict(repo, BACKEND, external, 80) == Verdict.DENY
    # Outside 10.0.0.0/8: world; "deny all other egress (implicit with egress rules present)".
    assert identity_for_address(repo, "8.8.8.8") == ID_WORLD
    assert verdict(repo, BACKEND, ID_WORLD, 5432) == Verdict.DENY
    # Pods inside 10.0.0.0/8 keep their own identity: the CIDR rule does not cover them.
    assert verdict(repo, BACKEND, DATABASE, 5432) == Verdict.DENY
    # Ingress of the backend stays open: the policy has no ingress section.
    assert verdict(repo, FRONTEND, BACKEND, 80) == Verdict.ALLOW
    assert repo.prefix_entries() == {"10.0.0.0/8": external}


def test_allow_monitoring_scrape_crosses_namespaces_only_where_named() -> None:
    repo = build([seed("allow-monitoring-scrape")], IDS)
    assert verdict(repo, PROMETHEUS, BACKEND, 9090) == Verdict.ALLOW
    assert verdict(repo, PROMETHEUS, BACKEND, 8080) == Verdict.DENY
    # The selector names the monitoring namespace, so production's prometheus is not it.
    assert verdict(repo, PROD_PROMETHEUS, BACKEND, 9090) == Verdict.DENY


def test_all_seeds_together_are_a_union_of_allows() -> None:
    repo = build([seed("allow-frontend-to-backend"), seed("backend-egress-policy"),
                  seed("allow-monitoring-scrape")], IDS)
    assert verdict(repo, FRONTEND, BACKEND, 8080) == Verdict.ALLOW
    assert verdict(repo, PROMETHEUS, BACKEND, 9090) == Verdict.ALLOW
    assert verdict(repo, PROMETHEUS, BACKEND, 8443) == Verdict.DENY
    result = verdict(repo, FRONTEND, BACKEND, 9090)
    assert result == Verdict.DENY
