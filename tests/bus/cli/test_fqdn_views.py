"""`cilia fqdn cache list` and `cilia policy selectors` read what the bus holds: the nodes'
``fqdn.names`` reports, and the policy service's selectors, rules and CIDR ipcache entries."""

from __future__ import annotations

import itertools
import json
from typing import Any

import yaml

from services.common.bus import Bus
from services.common.contract import (
    IPCACHE_SOURCE_CIDR,
    AgentEvent,
    IpcacheEvent,
    PolicyEvent,
    agent_fqdn_subject,
    ipcache_subject,
    policy_selector_subject,
)
from services.common.identities import LOCAL_IDENTITY_FLAG
from services.policy import Repository, messages
from services.policy.fqdn import fqdn_selector
from tests.support.cli import cilia
from tests.support.policy_helpers import pod, with_reserved

_ids = itertools.count()


async def _publish(bus: Bus, subject: str, event: str, data: dict[str, Any]) -> None:
    await bus.publish(subject, event, data, msg_id=f"test:{next(_ids)}")


async def _names(bus: Bus, node: str, name: str, addresses: list[tuple[str, int, float]],
                 endpoints: list[str]) -> None:
    await _publish(bus, agent_fqdn_subject(node, name), AgentEvent.FQDN_NAMES, {
        "node": node, "name": name, "endpoints": endpoints,
        "addresses": [{"ip": ip, "ttl": ttl, "expires": exp} for ip, ttl, exp in addresses]})


async def test_fqdn_cache_list_shows_what_each_node_learned(bus: Bus, nats_url: str) -> None:
    await _names(bus, "node1", "api.example.com", [("203.0.113.21", 300, 1800000300.0)],
                 ["shop/web-1"])
    # the last report of a name counts
    await _names(bus, "node1", "api.example.com",
                 [("203.0.113.21", 30, 1800000030.0), ("203.0.113.20", 30, 1800000030.5)],
                 ["shop/web-1", "shop/web-2"])
    await _names(bus, "node2", "api.example.com", [("203.0.113.20", 60, 1800000060.0)],
                 ["shop/web-3"])
    await _names(bus, "node1", "a.cdn.example.net", [("198.51.100.7", 5, 1800000005.0)],
                 ["shop/web-1"])
    # every address expired: forgotten
    await _names(bus, "node1", "old.example.org", [("192.0.2.1", 30, 1700000000.0)], [])
    await _names(bus, "node1", "old.example.org", [], [])

    res = cilia("--nats-url", nats_url, "fqdn", "cache", "list")
    assert res.returncode == 0, res.stderr
    lines = [line.split() for line in res.stdout.splitlines()]
    assert lines == [
        ["NODE", "ENDPOINTS", "FQDN", "TTL", "EXPIRATION", "IP"],
        ["node1", "shop/web-1", "a.cdn.example.net", "5", "2027-01-15T08:00:05.000Z",
         "198.51.100.7"],
        ["node1", "shop/web-1,shop/web-2", "api.example.com", "30", "2027-01-15T08:00:30.500Z",
         "203.0.113.20"],
        ["node1", "shop/web-1,shop/web-2", "api.example.com", "30", "2027-01-15T08:00:30.000Z",
         "203.0.113.21"],
        ["node2", "shop/web-3", "api.example.com", "60", "2027-01-15T08:01:00.000Z",
         "203.0.113.20"]]
    assert "old.example.org" not in res.stdout

    res = cilia("--nats-url", nats_url, "fqdn", "cache", "list", "--node", "node2", "-o",
                "json")
    assert json.loads(res.stdout) == [
        {"node": "node2", "endpoints": ["shop/web-3"], "fqdn": "api.example.com", "ttl": 60,
         "expiration": "2027-01-15T08:01:00.000Z", "ip": "203.0.113.20"}]
    res = cilia("--nats-url", nats_url, "fqdn", "cache", "list", "--name", "*.cdn.example.net",
                "-o", "json")
    assert [(r["node"], r["fqdn"]) for r in json.loads(res.stdout)] == [
        ("node1", "a.cdn.example.net")]
    res = cilia("--nats-url", nats_url, "fqdn", "cache", "list", "--name", "bad name!")
    assert res.returncode == 2 and "--name" in res.stderr


POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-egress, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toFQDNs: [{matchName: api.example.com}, {matchPattern: "*.cdn.example.net"}]
  - toEndpoints: [{matchLabels: {app: db}}]
"""
CIDR_1, CIDR_2, CIDR_3 = (LOCAL_IDENTITY_FLAG + n for n in (1, 2, 3))


async def test_policy_selectors_show_members_and_fqdn_patterns(bus: Bus, nats_url: str) -> None:
    # What the policy service publishes for the policy (its own compiler's messages) ...
    repo = with_reserved(Repository())
    repo.add_identity(300, pod("shop", app="web"))
    repo.add_identity(301, pod("shop", app="db"))
    for m in messages(repo, repo.apply(yaml.safe_load(POLICY))):
        await _publish(bus, m.subject, m.event, m.payload)
    # ... and for what the DNS proxies learned: the FQDN selectors' members are the CIDR
    # identities of the learned addresses (a set, then a delta), their prefixes in the ipcache.
    api, cdn = fqdn_selector("api.example.com"), fqdn_selector("*.cdn.example.net")
    for prefix, ident in (("203.0.113.20/32", CIDR_1), ("203.0.113.21/32", CIDR_2),
                          ("198.51.100.7/32", CIDR_3)):
        await _publish(bus, ipcache_subject(prefix, IPCACHE_SOURCE_CIDR), IpcacheEvent.UPSERT,
                       {"prefix": prefix, "identity": ident})
    for sel, members in ((api, [CIDR_2]), (cdn, [CIDR_3])):
        await _publish(bus, policy_selector_subject(sel.id), PolicyEvent.SELECTOR, {
            "selector": sel.id, "revision": 20, "op": "set", "members": members,
            "canonical": sel.canonical})
    await _publish(bus, policy_selector_subject(api.id), PolicyEvent.SELECTOR, {
        "selector": api.id, "revision": 21, "op": "delta", "added": [CIDR_1], "removed": []})
    # a selector no rule uses any more
    gone = "0123456789abcdef"
    await _publish(bus, policy_selector_subject(gone), PolicyEvent.SELECTOR, {
        "selector": gone, "revision": 5, "op": "set", "members": [301], "canonical": "{x}"})
    await _publish(bus, policy_selector_subject(gone), PolicyEvent.SELECTOR,
                   {"selector": gone, "revision": 6, "op": "delete"})

    res = cilia("--nats-url", nats_url, "policy", "selectors", "-o", "json")
    assert res.returncode == 0, res.stderr
    rows = {r["selector"]: r for r in json.loads(res.stdout)}
    assert set(rows) == {
        "MatchName: api.example.com", "MatchPattern: *.cdn.example.net",
        "{any:app In (db), k8s:io.kubernetes.pod.namespace In (shop)}",
        "{any:app In (web), k8s:io.kubernetes.pod.namespace In (shop)}"}
    assert rows["MatchName: api.example.com"] == {
        "id": api.id, "selector": "MatchName: api.example.com", "canonical": api.canonical,
        "fqdn": "api.example.com", "users": 1, "identities": [CIDR_1, CIDR_2],
        "ips": ["203.0.113.20", "203.0.113.21"]}
    assert rows["MatchPattern: *.cdn.example.net"]["ips"] == ["198.51.100.7"]
    db = rows["{any:app In (db), k8s:io.kubernetes.pod.namespace In (shop)}"]
    assert (db["identities"], db["users"], db["fqdn"], db["ips"]) == ([301], 1, None, [])
    web = rows["{any:app In (web), k8s:io.kubernetes.pod.namespace In (shop)}"]
    assert (web["identities"], web["users"]) == ([300], 1)

    table = cilia("--nats-url", nats_url, "policy", "selectors").stdout.splitlines()
    assert table[0].split() == ["SELECTOR", "USERS", "IDENTITIES", "ID"]
    at = next(i for i, line in enumerate(table) if line.startswith("MatchName: api.example.com"))
    assert table[at].split() == ["MatchName:", "api.example.com", "1", str(CIDR_1),
                                 "203.0.113.20", api.id]
    assert table[at + 1].split() == [str(CIDR_2), "203.0.113.21"]   # one member per line
    assert gone not in "\n".join(table)
