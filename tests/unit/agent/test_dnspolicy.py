"""What an endpoint's compiled policy says about DNS: who goes through the proxy, which
queries it refuses (Cilium's merge of DNS rules), which names are worth learning and on which
ports their addresses must be allowed before an answer is released."""

from __future__ import annotations

from services.common.policytypes import PROTO_TCP, PROTO_UDP
from services.nodeagent.dnspolicy import fqdn_ports, query_allowed, selects, uses_dns_proxy
from services.policy import Repository
from tests.support.policy_helpers import build, docs, pod

CLIENT, DNS, OTHER = 400, 401, 402
IDENTITIES = {CLIENT: pod(namespace="default", app="client"),
              DNS: pod(namespace="kube-system", **{"k8s-app": "kube-dns"}),
              OTHER: pod(namespace="default", app="other")}
TO_DNS = """
    - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system,
                                   k8s:k8s-app: kube-dns}}]
      toPorts: [{ports: [{port: "53", protocol: %s}]%s}]
"""
POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: %s, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
%s
"""


def repo(*egress: str) -> Repository:
    return build([docs(POLICY % (f"p{i}", e))[0] for i, e in enumerate(egress)], IDENTITIES)


def ask(r: Repository, name: str, server: int = DNS, proto: int = PROTO_UDP) -> bool:
    members = {sid: set(r.members(sid)) for sid in r.cache.selector_ids()}
    return query_allowed(r.subjects().get(CLIENT), members, server, proto, name)


def test_dns_rules_narrow_the_names_asked_of_the_server_they_cover() -> None:
    r = repo(TO_DNS % ("UDP", ', rules: {dns: [{matchName: api.example.com}, '
                              '{matchPattern: "**.cluster.local"}]}'))
    sp = r.subjects()[CLIENT]
    assert uses_dns_proxy(sp)
    assert ask(r, "api.example.com") and ask(r, "web.default.svc.cluster.local")
    assert not ask(r, "www.example.com")
    assert not ask(r, "api.example.com", server=OTHER)     # no rule covers that server
    assert not ask(r, "api.example.com", proto=PROTO_TCP)  # nor TCP on port 53


def test_a_rule_without_dns_rules_on_the_same_port_allows_every_name() -> None:
    r = repo(TO_DNS % ("UDP", ', rules: {dns: [{matchName: api.example.com}]}'),
             TO_DNS % ("ANY", ""))
    assert ask(r, "www.example.com") and ask(r, "anything.example.org")


def test_to_fqdns_alone_redirects_and_says_what_to_learn_and_which_ports_to_wait_for() -> None:
    r = repo(TO_DNS % ("ANY", ""),
             """
    - toFQDNs: [{matchName: api.example.com}, {matchPattern: "*.cdn.example.net"}]
      toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "443", protocol: TCP}]}]
""")
    sp = r.subjects()[CLIENT]
    assert uses_dns_proxy(sp)
    assert selects(sp, "api.example.com") and selects(sp, "static.cdn.example.net")
    assert not selects(sp, "www.example.com")
    assert fqdn_ports(sp, "static.cdn.example.net") == [(PROTO_TCP, 80), (PROTO_TCP, 443)]
    assert fqdn_ports(sp, "www.example.com") == []


def test_an_endpoint_without_dns_rules_or_to_fqdns_keeps_its_dns_to_itself() -> None:
    r = repo(TO_DNS % ("ANY", ""))
    assert not uses_dns_proxy(r.subjects()[CLIENT])
    assert not uses_dns_proxy(None)
