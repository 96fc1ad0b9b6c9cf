"""Policy semantics through trace: default deny, deny precedence, scoping, entities, CIDR,
ports, named ports, and Kubernetes NetworkPolicy equivalents."""

from __future__ import annotations

from services.common.contract import AgentEvent, validate
from services.common.identities import ID_HOST, ID_REMOTE_NODE, ID_WORLD
from services.common.policytypes import PROTO_SCTP, PROTO_TCP, PROTO_UDP, Verdict
from services.policy import identity_for_address, parse_policy, trace
from tests.support.policy_helpers import build, docs, pod, verdict

A = pod(app="a")
B = pod(app="b")
C = pod(app="c")
A_DEV = pod(namespace="dev", ns_labels={"team": "x"}, app="a")
B_DEV = pod(namespace="dev", ns_labels={"team": "x"}, app="b")
IDS = {400: A, 401: B, 402: C, 403: A_DEV, 404: B_DEV}
ALLOW, DENY = Verdict.ALLOW, Verdict.DENY


def cnp(spec: str, name: str = "p", ns: str = "production") -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return (f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n"
            f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n")


def ccnp(spec: str, name: str = "cw") -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return (f"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\n"
            f"metadata: {{name: {name}}}\nspec:\n{body}\n")


def knp(spec: str, name: str = "np", ns: str = "production") -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return (f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n")


def repo_of(*texts: str):  # type: ignore[no-untyped-def]
    return build([d for t in texts for d in docs(t)], IDS)


def test_default_deny_is_per_direction() -> None:
    repo = repo_of(cnp("endpointSelector: {matchLabels: {app: b}}\n"
                       "ingress: [{fromEndpoints: [{matchLabels: {app: a}}]}]"))
    assert verdict(repo, A, B, 1) == ALLOW
    assert verdict(repo, C, B, 1) == DENY            # ingress of b is default-deny
    assert verdict(repo, B, C, 1) == ALLOW           # egress of b is still open
    assert verdict(repo, C, A, 1) == ALLOW           # a is not selected at all


def test_empty_rule_denies_everything_but_empty_list_is_no_section() -> None:
    deny_all = repo_of(cnp("endpointSelector: {}\ningress: [{}]"))
    assert verdict(deny_all, A, B, 80) == DENY
    assert verdict(deny_all, A_DEV, B, 80) == DENY
    no_section = repo_of(cnp("endpointSelector: {}\ningress: []"))
    assert verdict(no_section, A, B, 80) == ALLOW


def test_enable_default_deny_false_keeps_the_direction_open_but_denies_still_apply() -> None:
    repo = repo_of(cnp("endpointSelector: {matchLabels: {app: b}}\n"
                       "enableDefaultDeny: {ingress: false}\n"
                       "ingress: [{fromEndpoints: [{matchLabels: {app: a}}]}]\n"
                       "ingressDeny: [{fromEndpoints: [{matchLabels: {app: c}}]}]"))
    assert verdict(repo, A, B, 1) == ALLOW
    assert verdict(repo, A_DEV, B, 1) == ALLOW       # open: not default-deny
    assert verdict(repo, C, B, 1) == DENY            # but the deny rule holds
    # Another policy without the opt-out turns default deny on.
    repo2 = repo_of(cnp("endpointSelector: {matchLabels: {app: b}}\n"
                        "enableDefaultDeny: {ingress: false}\n"
                        "ingress: [{fromEndpoints: [{matchLabels: {app: a}}]}]"),
                    cnp("endpointSelector: {matchLabels: {app: b}}\n"
                        "ingress: [{fromEndpoints: [{matchLabels: {app: c}}]}]", name="q"))
    assert verdict(repo2, A_DEV, B, 1) == DENY
    assert verdict(repo2, A, B, 1) == ALLOW and verdict(repo2, C, B, 1) == ALLOW


def test_enable_default_deny_true_without_rules_denies() -> None:
    repo = repo_of(cnp("endpointSelector: {matchLabels: {app: b}}\n"
                       "enableDefaultDeny: {egress: true}"))
    assert verdict(repo, B, A, 1) == DENY
    assert verdict(repo, A, B, 1) == ALLOW


def test_deny_wins_over_allow_even_on_wider_keys() -> None:
    repo = repo_of(cnp("endpointSelector: {matchLabels: {app: b}}\n"
                       "ingress: [{fromEntities: [all]}]\n"
                       "ingressDeny: [{fromEndpoints: [{matchLabels: {app: a}}],"
                       " toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]"),
                   cnp("endpointSelector: {matchLabels: {app: b}}\n"
                       "ingress: [{fromEndpoints: [{matchLabels: {app: a}}],"
                       " toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]", name="q"))
    assert verdict(repo, A, B, 80) == DENY
    assert verdict(repo, A, B, 81) == ALLOW
    assert verdict(repo, C, B, 80) == ALLOW
    assert verdict(repo, A, B, 80, PROTO_UDP) == ALLOW
    res = trace(A, B, 80, PROTO_TCP, repo)
    assert [o.name for o in res.ingress.deciding] == ["p"]


def test_cnp_peer_selectors_are_scoped_to_the_namespace_unless_they_name_one() -> None:
    scoped = repo_of(cnp("endpointSelector: {}\n"
                         "ingress: [{fromEndpoints: [{matchLabels: {app: a}}]}]"))
    assert verdict(scoped, A, B, 1) == ALLOW
    assert verdict(scoped, A_DEV, B, 1) == DENY
    # The subject is confined too: pods of dev are not selected.
    assert verdict(scoped, C, B_DEV, 1) == ALLOW
    named = repo_of(cnp("endpointSelector: {}\ningress: [{fromEndpoints: [{matchLabels: "
                        "{app: a, k8s:io.kubernetes.pod.namespace: dev}}]}]"))
    assert verdict(named, A_DEV, B, 1) == ALLOW and verdict(named, A, B, 1) == DENY
    ns_labels = repo_of(cnp("endpointSelector: {}\ningress: [{fromEndpoints: [{matchLabels: "
                            "{io.cilium.k8s.namespace.labels.team: x}}]}]"))
    assert verdict(ns_labels, A_DEV, B, 1) == ALLOW and verdict(ns_labels, A, B, 1) == DENY
    reserved = repo_of(cnp("endpointSelector: {}\ningress: [{fromEndpoints: [{matchLabels: "
                           "{reserved:host: ''}}]}]"))
    assert verdict(reserved, ID_HOST, B, 1) == ALLOW and verdict(reserved, A, B, 1) == DENY


def test_empty_selector_means_namespace_in_cnp_and_every_pod_in_ccnp() -> None:
    ns = repo_of(cnp("endpointSelector: {matchLabels: {app: b}}\n"
                     "ingress: [{fromEndpoints: [{}]}]"))
    assert verdict(ns, A, B, 1) == ALLOW and verdict(ns, C, B, 1) == ALLOW
    assert verdict(ns, A_DEV, B, 1) == DENY and verdict(ns, ID_WORLD, B, 1) == DENY
    cw = repo_of(ccnp("endpointSelector: {matchLabels: {app: b}}\n"
                      "ingress: [{fromEndpoints: [{}]}]"))
    assert verdict(cw, A_DEV, B, 1) == ALLOW and verdict(cw, A, B_DEV, 1) == ALLOW
    assert verdict(cw, ID_WORLD, B, 1) == DENY and verdict(cw, ID_HOST, B, 1) == DENY
    # A clusterwide subject selector spans namespaces but never selects reserved identities.
    every = repo_of(ccnp("endpointSelector: {}\negress: [{toEntities: [cluster]}]"))
    assert verdict(every, A_DEV, ID_WORLD, 1) == DENY and verdict(every, A, ID_WORLD, 1) == DENY
    assert verdict(every, ID_HOST, ID_WORLD, 1) == ALLOW


def test_entities() -> None:
    def to(entity: str):  # type: ignore[no-untyped-def]
        return repo_of(cnp(f"endpointSelector: {{matchLabels: {{app: a}}}}\n"
                           f"egress: [{{toEntities: [{entity}]}}]"))
    world = to("world")
    assert verdict(world, A, ID_WORLD, 443) == ALLOW and verdict(world, A, B, 443) == DENY
    assert verdict(world, A, ID_HOST, 443) == DENY
    cluster = to("cluster")
    for peer in (B, B_DEV, ID_HOST, ID_REMOTE_NODE):
        assert verdict(cluster, A, peer, 1) == ALLOW
    assert verdict(cluster, A, ID_WORLD, 1) == DENY
    host = to("host")
    assert verdict(host, A, ID_HOST, 1) == ALLOW and verdict(host, A, ID_REMOTE_NODE, 1) == DENY
    remote = to("remote-node")
    assert verdict(remote, A, ID_REMOTE_NODE, 1) == ALLOW
    everything = to("all")
    for peer in (B, B_DEV, ID_HOST, ID_WORLD):
        assert verdict(everything, A, peer, 1) == ALLOW


def test_cidr_with_except_carves_out_and_never_covers_pods() -> None:
    repo = repo_of(cnp("endpointSelector: {matchLabels: {app: a}}\n"
                       "egress: [{toCIDRSet: [{cidr: 192.168.0.0/16, except: "
                       "[192.168.5.0/24]}]}, {toCIDR: [10.1.0.0/16]}]"))
    inside = identity_for_address(repo, "192.168.1.1")
    carved = identity_for_address(repo, "192.168.5.9")
    assert inside != carved and ID_WORLD not in (inside, carved)
    assert verdict(repo, A, inside, 80) == ALLOW
    assert verdict(repo, A, carved, 80) == DENY
    assert verdict(repo, A, identity_for_address(repo, "10.1.2.3"), 80) == ALLOW
    assert verdict(repo, A, identity_for_address(repo, "172.16.0.1"), 80) == DENY
    assert verdict(repo, A, B, 80) == DENY
    assert set(repo.prefix_entries()) == {"192.168.0.0/16", "192.168.5.0/24", "10.1.0.0/16"}
    assert all(i >= 1 << 24 for i in repo.prefix_entries().values())


def test_cidr_peer_is_matched_by_world_and_by_wider_cidr_rules() -> None:
    repo = repo_of(cnp("endpointSelector: {matchLabels: {app: a}}\n"
                       "egress: [{toCIDR: [10.1.0.0/16]}]"),
                   cnp("endpointSelector: {matchLabels: {app: b}}\n"
                       "egress: [{toEntities: [world]}]", name="q"),
                   cnp("endpointSelector: {matchLabels: {app: c}}\n"
                       "egress: [{toCIDR: [10.0.0.0/8]}]", name="r"),
                   cnp("endpointSelector: {matchLabels: {app: c}}\n"
                       "egress: [{toCIDR: [0.0.0.0/0]}]", name="s", ns="dev"))
    narrow = identity_for_address(repo, "10.1.0.1")
    assert verdict(repo, B, narrow, 1) == ALLOW      # CIDR identities are world
    assert verdict(repo, C, narrow, 1) == ALLOW      # 10.1/16 is inside 10/8
    c_dev = pod(namespace="dev", app="c")
    assert verdict(repo, c_dev, ID_WORLD, 1) == ALLOW   # 0.0.0.0/0 is world


def test_port_ranges_and_protocols() -> None:
    repo = repo_of(cnp("endpointSelector: {matchLabels: {app: b}}\n"
                       "ingress: [{toPorts: [{ports: [{port: '8000', endPort: 8010, protocol: TCP},"
                       " {port: '53', protocol: ANY}, {port: '0', protocol: SCTP}]}]}]"))
    for port in (8000, 8005, 8010):
        assert verdict(repo, A, B, port) == ALLOW
    assert verdict(repo, A, B, 7999) == DENY and verdict(repo, A, B, 8011) == DENY
    assert verdict(repo, A, B, 8005, PROTO_UDP) == DENY
    assert verdict(repo, A, B, 53, PROTO_UDP) == ALLOW and verdict(repo, A, B, 53) == ALLOW
    assert verdict(repo, A, B, 9999, PROTO_SCTP) == ALLOW
    # An L4-only rule applies to every peer, other namespaces and world included.
    assert verdict(repo, A_DEV, B, 8001) == ALLOW and verdict(repo, ID_WORLD, B, 8001) == ALLOW


def test_named_ports_resolve_against_the_destination() -> None:
    repo = repo_of(cnp("endpointSelector: {matchLabels: {app: b}}\n"
                       "ingress: [{toPorts: [{ports: [{port: http, protocol: TCP}]}]}]"),
                   cnp("endpointSelector: {matchLabels: {app: a}}\n"
                       "egress: [{toEndpoints: [{}], toPorts: [{ports: [{port: pg}]}]}]",
                       name="q"))
    named = {401: {"http": {(PROTO_TCP, 8080)}}, 402: {"pg": {(PROTO_TCP, 5432)}},
             400: {"http": {(PROTO_TCP, 9999)}}}
    assert trace(C, B, 8080, PROTO_TCP, repo, named).verdict == ALLOW
    assert trace(C, B, 9999, PROTO_TCP, repo, named).verdict == DENY   # a's http, not b's
    assert trace(A, C, 5432, PROTO_TCP, repo, named).verdict == ALLOW  # c declares pg
    assert trace(A, B, 5432, PROTO_TCP, repo, named).ingress.verdict == DENY
    assert trace(A, B, 5432, PROTO_TCP, repo, named).egress.verdict == DENY  # b has no pg
    assert trace(C, B, 8080, PROTO_TCP, repo).verdict == DENY   # nobody declares it


def test_fqdn_rules_make_egress_default_deny_and_select_learned_addresses() -> None:
    repo = repo_of(cnp("endpointSelector: {matchLabels: {app: a}}\n"
                       "egress: [{toFQDNs: [{matchName: api.example.com}, "
                       "{matchPattern: '*.example.com'}]},"
                       " {toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: "
                       "kube-system}}], toPorts: [{ports: [{port: '53', protocol: UDP}]}]}]"))
    (rule,) = repo.subject_policy(400).rules
    assert rule.entries[0].fqdns == ("api.example.com", "*.example.com")
    assert verdict(repo, A, ID_WORLD, 443) == DENY
    # nothing learned: it selects nobody; learned addresses are its peers
    assert verdict(repo, A, identity_for_address(repo, "203.0.113.7"), 443) == DENY
    repo.learn(validate(AgentEvent.FQDN_NAMES, {"node": "n1", "name": "www.example.com",
                                                "addresses": [{"ip": "203.0.113.7", "ttl": 60,
                                                               "expires": 1}]}))
    assert verdict(repo, A, identity_for_address(repo, "203.0.113.7"), 443) == ALLOW
    assert verdict(repo, A, identity_for_address(repo, "203.0.113.8"), 443) == DENY


def test_spec_and_specs_are_all_rules() -> None:
    doc = docs(cnp("endpointSelector: {matchLabels: {app: a}}\ningress: [{}]"))[0]
    doc["specs"] = [{"endpointSelector": {"matchLabels": {"app": "b"}}, "ingress": [{}]}]
    policy = parse_policy(doc)
    assert [r.path for r in policy.rules] == ["spec", "specs[0]"]
    repo = build([doc], IDS)
    assert verdict(repo, C, A, 1) == DENY and verdict(repo, C, B, 1) == DENY


# -- Kubernetes NetworkPolicy ----------------------------------------------------------------

def test_k8s_pod_selector_and_ports_default_tcp() -> None:
    repo = repo_of(knp("podSelector: {matchLabels: {app: b}}\n"
                       "ingress: [{from: [{podSelector: {matchLabels: {app: a}}}],"
                       " ports: [{port: 80}, {port: 9000, endPort: 9002}]}]"))
    assert verdict(repo, A, B, 80) == ALLOW and verdict(repo, A, B, 9002) == ALLOW
    assert verdict(repo, A, B, 80, PROTO_UDP) == DENY
    assert verdict(repo, A_DEV, B, 80) == DENY and verdict(repo, C, B, 80) == DENY


def test_k8s_namespace_selector_and_both() -> None:
    repo = repo_of(knp("podSelector: {}\ningress: [{from: [{namespaceSelector: "
                       "{matchLabels: {team: x}}}]}]"))
    assert verdict(repo, A_DEV, B, 1) == ALLOW and verdict(repo, A, B, 1) == DENY
    both = repo_of(knp("podSelector: {}\ningress: [{from: [{namespaceSelector: {}, "
                       "podSelector: {matchLabels: {app: b}}}]}]"))
    assert verdict(both, B_DEV, A, 1) == ALLOW and verdict(both, A_DEV, A, 1) == DENY
    assert verdict(both, B, A, 1) == ALLOW and verdict(both, ID_WORLD, A, 1) == DENY


def test_k8s_rule_without_from_allows_everyone_and_policy_types_deny() -> None:
    open_rule = repo_of(knp("podSelector: {matchLabels: {app: b}}\ningress: [{}]"))
    assert verdict(open_rule, ID_WORLD, B, 1) == ALLOW and verdict(open_rule, A_DEV, B, 7) == ALLOW
    deny_all = repo_of(knp("podSelector: {}\npolicyTypes: [Ingress, Egress]"))
    assert verdict(deny_all, A, B, 1) == DENY and verdict(deny_all, B, A_DEV, 1) == DENY
    ingress_only = repo_of(knp("podSelector: {}"))
    assert verdict(ingress_only, A, A_DEV, 1) == ALLOW
    assert verdict(ingress_only, A_DEV, A, 1) == DENY


def test_k8s_ip_block_with_except() -> None:
    repo = repo_of(knp("podSelector: {matchLabels: {app: a}}\npolicyTypes: [Egress]\n"
                       "egress: [{to: [{ipBlock: {cidr: 172.16.0.0/12, "
                       "except: [172.16.9.0/24]}}]}]"))
    assert verdict(repo, A, identity_for_address(repo, "172.20.0.1"), 1) == ALLOW
    assert verdict(repo, A, identity_for_address(repo, "172.16.9.1"), 1) == DENY
    assert verdict(repo, B, A, 1) == ALLOW          # ingress not in policyTypes


def test_k8s_and_cilium_forms_compile_to_the_same_map_entries() -> None:
    k8s = repo_of(knp("podSelector: {matchLabels: {app: b}}\n"
                      "ingress: [{from: [{podSelector: {matchLabels: {app: a}}}],"
                      " ports: [{port: 80, protocol: TCP}]}]"))
    cil = repo_of(cnp("endpointSelector: {matchLabels: {k8s:app: b}}\n"
                      "ingress: [{fromEndpoints: [{matchLabels: {k8s:app: a}}],"
                      " toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]"))
    from services.policy import expand
    sp_k, sp_c = k8s.subject_policy(401), cil.subject_policy(401)
    ek = expand(sp_k, {s: k8s.members(s) for s in sp_k.selector_ids()}).entries
    ec = expand(sp_c, {s: cil.members(s) for s in sp_c.selector_ids()}).entries
    assert ek == ec and len(ek) == 2   # the allow, plus the open egress wildcard


def test_k8s_namespace_selector_on_the_metadata_name_label() -> None:
    # The API server labels every namespace kubernetes.io/metadata.name=<name>; the identity
    # service copies namespace labels onto pod identities, so this common idiom works.
    web_dev = pod(namespace="dev", ns_labels={"kubernetes.io/metadata.name": "dev"}, app="web")
    repo = build(docs(knp("podSelector: {}\ningress: [{from: [{namespaceSelector: {matchLabels:"
                          " {kubernetes.io/metadata.name: dev}}}]}]")), {**IDS, 500: web_dev})
    assert verdict(repo, web_dev, B, 1) == ALLOW
    assert verdict(repo, A_DEV, B, 1) == DENY       # dev pod without that namespace label


def test_ipv6_cidr_rules() -> None:
    repo = repo_of(cnp("endpointSelector: {matchLabels: {app: a}}\n"
                       "egress: [{toCIDRSet: [{cidr: '2001:db8::/32', "
                       "except: ['2001:db8:1::/48']}]},"
                       " {toCIDR: ['::/0'], toPorts: [{ports: [{port: '443', protocol: TCP}]}]}]"))
    inside = identity_for_address(repo, "2001:db8:2::1")
    assert verdict(repo, A, inside, 80) == ALLOW
    assert verdict(repo, A, identity_for_address(repo, "2001:db8:1::1"), 80) == DENY
    assert identity_for_address(repo, "2001:db9::1") == identity_for_address(repo, "::1")
    assert verdict(repo, A, identity_for_address(repo, "2001:db9::1"), 443) == ALLOW
    assert verdict(repo, A, identity_for_address(repo, "2001:db9::1"), 80) == DENY
    assert verdict(repo, A, ID_WORLD, 443) == ALLOW     # ::/0 is world too
