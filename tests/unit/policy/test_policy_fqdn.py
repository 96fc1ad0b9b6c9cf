"""toFQDNs selects the addresses the nodes' DNS proxies learned (pure: repository, reducer,
the service's resync)."""

from __future__ import annotations

from services.common.contract import AgentEvent, FqdnNames, validate
from services.common.labels import Labels
from services.common.policytypes import PROTO_TCP, Verdict
from services.policy import (
    CHANNEL_PREFIX,
    CHANNEL_SELECTOR,
    Changes,
    Message,
    PolicyRef,
    Repository,
    SelectorMirror,
    cidr_labels,
    identity_for_address,
    messages,
)
from services.policy.cidr import CIDRRule, cidr_selector
from services.policy.fqdn import SOURCE_FQDN, fqdn_label, fqdn_selector
from services.policy.reducer import BusView, reduce_input
from services.policy.service import resync_messages
from tests.support.policy_helpers import build, docs, pod, verdict

CLIENT = pod(namespace="default", app="external-client")
CLIENT_ID = 400
API = fqdn_selector("api.example.com").id
CDN = fqdn_selector("*.cdn.example.net").id
REF = PolicyRef("CiliumNetworkPolicy", "default", "fqdn")

POLICY = docs("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: external-client}}
  egress:
    - toFQDNs: [{matchName: API.example.com}, {matchPattern: "*.cdn.example.net"}]
      toPorts: [{ports: [{port: "443", protocol: TCP}]}]
""")[0]

CIDR_POLICY = docs("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: net, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: external-client}}
  egress: [{toCIDR: [203.0.113.0/24], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]
""")[0]

NET = cidr_selector(CIDRRule("203.0.113.0/24")).id


def names(name: str, *ips: str, node: str = "node-1") -> FqdnNames:
    payload = validate(AgentEvent.FQDN_NAMES, {
        "node": node, "name": name, "endpoints": ["default/client"],
        "addresses": [{"ip": ip, "ttl": 30, "expires": 1_700_000_030} for ip in ips]})
    assert isinstance(payload, FqdnNames)
    return payload


def repo_with(*policy_docs: dict) -> Repository:
    return build(list(policy_docs), {CLIENT_ID: CLIENT})


def ident(repo: Repository, ip: str) -> int:
    found = repo.cidrs.identity(ip + "/32")
    assert found is not None, ip
    return found


def allowed(repo: Repository, ip: str, port: int = 443) -> bool:
    return verdict(repo, CLIENT, identity_for_address(repo, ip), port, PROTO_TCP) \
        == Verdict.ALLOW


def test_learned_addresses_join_the_selectors_of_the_names_they_match() -> None:
    repo = repo_with(POLICY)
    assert repo.members(API) == frozenset() and repo.members(CDN) == frozenset()
    assert not allowed(repo, "203.0.113.7")
    ch = repo.learn(names("api.example.com", "203.0.113.7"))
    api_ip = ident(repo, "203.0.113.7")
    assert ch.prefixes_added == {"203.0.113.7/32": api_ip}
    assert ch.selector_deltas[API].added == {api_ip} and CDN not in ch.selector_deltas
    labels = repo.cache.labels(api_ip)
    assert labels is not None and labels == cidr_labels("203.0.113.7/32") \
        | [fqdn_label("api.example.com")]
    ch = repo.learn(names("img.cdn.example.net", "198.51.100.1", "198.51.100.2"))
    assert set(ch.prefixes_added) == {"198.51.100.1/32", "198.51.100.2/32"}
    assert repo.members(CDN) == {ident(repo, "198.51.100.1"), ident(repo, "198.51.100.2")}
    assert repo.members(API) == {api_ip}
    # the subject's rule refers to both selectors: the learned addresses are allowed
    (rule,) = repo.subject_policy(CLIENT_ID).rules
    assert set(rule.entries[0].selectors) == {API, CDN}
    assert rule.entries[0].fqdns == ("api.example.com", "*.cdn.example.net")
    assert allowed(repo, "203.0.113.7") and allowed(repo, "198.51.100.2")
    assert not allowed(repo, "203.0.113.7", 80)
    # a name no pattern matches still gets its /32 identity, in no fqdn selector
    repo.learn(names("a.b.cdn.example.net", "192.0.2.9"))
    assert not allowed(repo, "192.0.2.9")
    assert not [lbl for lbl in repo.cache.labels(ident(repo, "192.0.2.9")) or ()
                if lbl.source == SOURCE_FQDN]


def test_a_new_address_set_moves_membership_and_an_empty_one_forgets() -> None:
    repo = repo_with(POLICY)
    repo.learn(names("api.example.com", "203.0.113.7"))
    old = ident(repo, "203.0.113.7")
    assert repo.learn(names("api.example.com", "203.0.113.7")) == Changes(repo.revision)
    ch = repo.learn(names("api.example.com", "203.0.113.8"))
    new = ident(repo, "203.0.113.8")
    assert ch.prefixes_added == {"203.0.113.8/32": new}
    assert ch.prefixes_removed == {"203.0.113.7/32": old}
    assert ch.selector_deltas[API].added == {new} and ch.selector_deltas[API].removed == {old}
    assert repo.members(API) == {new}
    ch = repo.learn(names("api.example.com"))
    assert ch.prefixes_removed == {"203.0.113.8/32": new}
    assert ch.selector_deltas[API].removed == {new}
    assert repo.members(API) == frozenset() and repo.prefix_entries() == {}
    assert repo.learned() == {}


def test_a_to_cidr_rule_shares_the_identity_of_a_learned_address() -> None:
    repo = repo_with(POLICY, CIDR_POLICY)
    repo.learn(names("api.example.com", "203.0.113.7"))
    ip = ident(repo, "203.0.113.7")
    assert ip in repo.members(NET) and ip in repo.members(API)
    assert allowed(repo, "203.0.113.7", 8080) and allowed(repo, "203.0.113.7", 443)
    # a toCIDR rule on the very /32: forgetting the name keeps the prefix, drops the label
    host = docs("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: host, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: external-client}}
  egress: [{toCIDR: [203.0.113.7/32], toPorts: [{ports: [{port: "22", protocol: TCP}]}]}]
""")[0]
    ch = repo.apply(host)
    assert ch.prefixes_added == {} and repo.members(API) == {ip}
    ch = repo.learn(names("api.example.com"))
    assert ch.prefixes_removed == {} and repo.cidrs.identity("203.0.113.7/32") == ip
    assert ch.selector_deltas[API].removed == {ip} and ip in repo.members(NET)
    assert repo.cache.labels(ip) == cidr_labels("203.0.113.7/32")
    # learned again while the toCIDR rule holds it: the fqdn label comes back
    ch = repo.learn(names("api.example.com", "203.0.113.7"))
    assert ch.prefixes_added == {} and ch.selector_deltas[API].added == {ip}
    # the toCIDR rule goes first: the learned address keeps its identity and labels
    repo.delete(PolicyRef("CiliumNetworkPolicy", "default", "host"))
    assert repo.members(API) == {ip}


def test_a_fresh_to_cidr_prefix_of_a_learned_address_is_labelled_for_its_names() -> None:
    repo = repo_with(POLICY)
    repo.learn(names("api.example.com", "203.0.113.7"))
    repo.learn(names("api.example.com"))
    repo.apply(docs("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: host, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: external-client}}
  egress: [{toCIDR: [203.0.113.7/32]}]
""")[0])
    ip = ident(repo, "203.0.113.7")
    assert repo.members(API) == frozenset()
    repo.learn(names("api.example.com", "203.0.113.7"))
    assert repo.members(API) == {ip}


def test_a_policy_added_after_learning_selects_what_was_learned() -> None:
    repo = repo_with()
    repo.learn(names("api.example.com", "203.0.113.7"))
    repo.learn(names("x.cdn.example.net", "198.51.100.1"))
    api_ip, cdn_ip = ident(repo, "203.0.113.7"), ident(repo, "198.51.100.1")
    ch = repo.apply(POLICY)
    assert ch.selectors_added[API][1] == {api_ip}
    assert ch.selectors_added[CDN][1] == {cdn_ip}
    assert CLIENT_ID in ch.subjects and allowed(repo, "198.51.100.1")
    # deleting it drops the fqdn labels; the learned addresses keep their identities
    ch = repo.delete(REF)
    assert {API, CDN} <= ch.selectors_removed and not ch.prefixes_removed
    for ip in (api_ip, cdn_ip):
        assert not [lbl for lbl in repo.cache.labels(ip) or () if lbl.source == SOURCE_FQDN]
    # a new version with only one of the names keeps that one's label only
    repo.apply(POLICY)
    narrow = docs("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: external-client}}
  egress: [{toFQDNs: [{matchName: api.example.com}]}]
""")[0]
    ch = repo.apply(narrow)
    assert ch.selectors_removed == {CDN} and repo.members(API) == {api_ip}
    assert repo.cache.labels(cdn_ip) == cidr_labels("198.51.100.1/32")


def test_nodes_learn_separately_and_selectors_see_the_union() -> None:
    repo = repo_with(POLICY)
    repo.learn(names("api.example.com", "203.0.113.7", node="node-1"))
    ch = repo.learn(names("api.example.com", "203.0.113.7", node="node-2"))
    assert not ch.prefixes_added and not ch.selector_deltas
    ip = ident(repo, "203.0.113.7")
    ch = repo.learn(names("api.example.com", node="node-1"))
    assert not ch.prefixes_removed and repo.members(API) == {ip}
    ch = repo.learn(names("api.example.com", node="node-2"))
    assert ch.prefixes_removed == {"203.0.113.7/32": ip} and repo.members(API) == frozenset()


def test_an_address_under_two_names_keeps_the_labels_of_both() -> None:
    repo = repo_with(POLICY)
    repo.learn(names("api.example.com", "203.0.113.7"))
    repo.learn(names("img.cdn.example.net", "203.0.113.7"))
    ip = ident(repo, "203.0.113.7")
    assert repo.members(API) == {ip} and repo.members(CDN) == {ip}
    assert repo.learned() == {"203.0.113.7": {"api.example.com", "img.cdn.example.net"}}
    ch = repo.learn(names("api.example.com"))
    assert ch.selector_deltas == {API: (frozenset(), frozenset({ip}))}
    assert repo.members(CDN) == {ip} and not ch.prefixes_removed


def test_the_reducer_learns_and_the_published_stream_converges() -> None:
    repo = repo_with(POLICY)
    mirror = SelectorMirror()
    for m in resync_messages(repo, BusView()):
        mirror.apply(Message(m.channel, m.key, {**m.payload, "revision": repo.revision}))
    for payload in (names("api.example.com", "203.0.113.7"),
                    names("x.cdn.example.net", "198.51.100.1", "203.0.113.7"),
                    names("api.example.com", "203.0.113.9")):
        ch = reduce_input(repo, payload)
        assert ch
        for m in messages(repo, ch):
            mirror.apply(m)
    assert mirror.members == {sid: set(ms) for sid, ms in repo.cache.snapshot().items()}
    assert mirror.prefixes == repo.prefix_entries()


def test_the_resync_publishes_the_prefix_and_the_member_of_a_learned_name() -> None:
    repo = repo_with(POLICY)
    view = BusView()
    for m in resync_messages(repo, view):   # what the bus held before anything was learned
        if m.channel == CHANNEL_SELECTOR:
            view.members[m.key] = set(m.payload["members"])
    repo.learn(names("api.example.com", "203.0.113.7"))
    ip = ident(repo, "203.0.113.7")
    msgs = resync_messages(repo, view)
    prefix = [m.payload for m in msgs if m.channel == CHANNEL_PREFIX]
    assert prefix == [{"prefix": "203.0.113.7/32", "identity": ip, "op": "set"}]
    sel = [m.payload for m in msgs if m.channel == CHANNEL_SELECTOR and m.key == API]
    assert sel == [{"selector": API, "op": "delta", "added": [ip], "removed": []}]


def test_fqdn_selectors_are_valid_on_the_bus() -> None:
    repo = repo_with()
    repo.learn(names("api.example.com", "203.0.113.7"))
    ch = repo.apply(POLICY)
    set_msgs = [m for m in messages(repo, ch) if m.channel == CHANNEL_SELECTOR]
    assert {m.key for m in set_msgs} >= {API, CDN}
    for m in set_msgs:
        validate(m.event, m.payload)
    status = [m for m in messages(repo, ch) if m.key == str(REF)]
    assert {API, CDN} <= set(status[0].payload["selectors"])
    assert isinstance(repo.cache.labels(ident(repo, "203.0.113.7")), Labels)
