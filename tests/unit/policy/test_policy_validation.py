"""Bad policies are rejected whole, naming object and field; nothing of them applies."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from services.common.policytypes import Verdict
from services.policy import (
    PolicyRef,
    PolicyValidationError,
    UnsupportedFieldError,
    messages,
    parse_policy,
)
from tests.support.policy_helpers import build, docs, pod, verdict

BASE = docs("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: a}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}, {port: "443", protocol: TCP}]
""")[0]


def mutate(path: list[Any], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


PORT = ["spec", "ingress", 0, "toPorts", 0, "ports", 1]
RULE = ["spec", "ingress", 0]

BAD = [
    (mutate([*PORT, "port"], "70000"), "spec.ingress[0].toPorts[0].ports[1].port", "out of range"),
    (mutate([*PORT, "port"], "Not_A_Name"), "spec.ingress[0].toPorts[0].ports[1].port",
     "invalid port name"),
    (mutate([*PORT, "endPort"], 400), "spec.ingress[0].toPorts[0].ports[1].endPort",
     "must be between"),
    (mutate([*PORT, "protocol"], "ICMP"), "spec.ingress[0].toPorts[0].ports[1].protocol",
     "unknown protocol"),
    (mutate([*PORT, "protocol"], "tcp"), "spec.ingress[0].toPorts[0].ports[1].protocol",
     "unknown protocol"),
    (mutate([*RULE, "fromEndpoints"], [{"matchExpressions": [
        {"key": "app", "operator": "Near", "values": ["x"]}]}]),
     "spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator", "unknown operator"),
    (mutate(RULE, {"fromEntities": ["galaxy"]}), "spec.ingress[0].fromEntities[0]",
     "unknown entity 'galaxy'"),
    (mutate(RULE, {"fromCIDR": ["10.0.0.0/33"]}), "spec.ingress[0].fromCIDR[0]",
     "malformed CIDR"),
    (mutate(RULE, {"fromCIDR": ["10.0.0.1/8"]}), "spec.ingress[0].fromCIDR[0]",
     "malformed CIDR"),
    (mutate(RULE, {"fromCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}]}),
     "spec.ingress[0].fromCIDRSet[0]", "not inside"),
    (mutate([*RULE, "fromCIDR"], ["10.0.0.0/8"]), "spec.ingress[0].fromCIDR",
     "combining fromEndpoints and fromCIDR"),
    (mutate([*RULE, "toPorts", 0, "rules"], {"http": [{"method": "GET"}]}),
     "spec.ingress[0].toPorts[0].rules.http", "'http' is not supported"),
    (mutate([*RULE, "toPorts", 0, "rules"], {"dns": [{"matchName": "x.io"}]}),
     "spec.ingress[0].toPorts[0].rules.dns", "a DNS rule in section 'ingress' is not supported"),
    (mutate(["spec", "egressDeny"], [{"toPorts": [{"ports": [{"port": "53"}],
                                                   "rules": {"dns": [{"matchPattern": "*"}]}}]}]),
     "spec.egressDeny[0].toPorts[0].rules", "'rules' is not supported"),
    (mutate([*RULE, "fromRequires"], [{}]), "spec.ingress[0].fromRequires", "not supported"),
    (mutate(["spec", "egress"], [{"toServices": [{}]}]), "spec.egress[0].toServices",
     "not supported"),
    (mutate(["spec", "egress"], [{"toGroups": [{}]}]), "spec.egress[0].toGroups",
     "not supported"),
    (mutate(["spec", "egressDeny"], [{"toFQDNs": [{"matchName": "x.io"}]}]),
     "spec.egressDeny[0].toFQDNs", "not supported"),
    (mutate(["spec", "egress"], [{"toFQDNs": [{"matchName": "x.io", "matchPattern": "*"}]}]),
     "spec.egress[0].toFQDNs[0]", "exactly one"),
    (mutate(["spec", "nodeSelector"], {}), "spec.nodeSelector", "not supported"),
    (mutate(["spec", "endpointSelector"], {"matchLabels": {"reserved:host": ""}}),
     "spec.endpointSelector", "host policy"),
    (mutate(["spec", "enableDefaultDeny"], {"ingress": "yes"}),
     "spec.enableDefaultDeny.ingress", "true or false"),
    (mutate(["spec", "ingres"], []), "spec.ingres", "unknown field"),
    (mutate(["spec", "endpointSelector"], None), "spec.endpointSelector", "required"),
    (mutate(["metadata", "name"], ""), "metadata.name", "name is required"),
    (mutate(["apiVersion"], "cilium.io/v1"), "apiVersion", "not supported"),
]


@pytest.mark.parametrize(("doc", "path", "words"), BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_error_names_object_and_field(doc: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(PolicyValidationError) as exc:
        parse_policy(doc)
    err = exc.value
    assert err.path == path, str(err)
    assert words in err.reason
    assert err.kind == "CiliumNetworkPolicy"
    if path != "metadata.name":
        assert err.name == "web" and err.namespace == "production"
        assert str(err).startswith(f"CiliumNetworkPolicy production/web: field {path}: ")


def test_unsupported_fields_have_their_own_class() -> None:
    with pytest.raises(UnsupportedFieldError):
        parse_policy(mutate([*RULE, "toPorts", 0, "rules"], {"http": []}))


def test_k8s_and_clusterwide_errors() -> None:
    knp = docs("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: dev}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]
""")[0]
    with pytest.raises(PolicyValidationError) as exc:
        parse_policy(knp)
    assert exc.value.path == "spec.egress" and "policyTypes lacks Egress" in exc.value.reason
    knp["spec"]["policyTypes"] = ["Ingress", "Egress"]
    with pytest.raises(PolicyValidationError) as exc:
        parse_policy(knp)
    assert exc.value.path == "spec.egress[0].to[0].ipBlock"
    assert str(exc.value).startswith("NetworkPolicy dev/np:")
    ccnp = {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": "cw", "namespace": "x"}, "spec": {"endpointSelector": {}}}
    with pytest.raises(PolicyValidationError) as exc:
        parse_policy(ccnp)
    assert exc.value.path == "metadata.namespace" and str(exc.value).startswith(
        "CiliumClusterwideNetworkPolicy cw:")
    with pytest.raises(PolicyValidationError) as exc:
        parse_policy({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}})
    assert "unsupported kind 'Pod'" in str(exc.value)


def test_bad_new_version_leaves_the_previous_one_in_force() -> None:
    a, b = pod(app="a"), pod(app="b")
    repo = build([BASE], {400: a, 401: b})
    before = (repo.revision, repo.subject_policy(401), repo.cache.snapshot(),
              repo.prefix_entries())
    # The bad version would also add a CIDR rule and a new selector: none of it may land.
    bad = mutate(["spec", "ingress"], [
        {"fromCIDR": ["192.168.0.0/16"]},
        {"fromEndpoints": [{"matchLabels": {"app": "c"}}],
         "toPorts": [{"ports": [{"port": "99999"}]}]}])
    with pytest.raises(PolicyValidationError) as exc:
        repo.apply(bad)
    assert exc.value.path == "spec.ingress[1].toPorts[0].ports[0].port"
    after = (repo.revision, repo.subject_policy(401), repo.cache.snapshot(),
             repo.prefix_entries())
    assert after == before
    assert verdict(repo, a, b, 80) == Verdict.ALLOW and verdict(repo, a, b, 81) == Verdict.DENY
    # And a bad first version applies nothing at all.
    with pytest.raises(PolicyValidationError):
        repo.apply(mutate(["metadata", "name"], "other") | {"spec": bad["spec"]})
    assert repo.policy(PolicyRef("CiliumNetworkPolicy", "production", "other")) is None
    # Re-applying the same good version is a no-op with nothing to publish.
    assert not messages(repo, repo.apply(BASE))
