"""What gets published: proportional to the change, and enough for a consumer to expand."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from services.common.contract import validate
from services.common.policytypes import PROTO_TCP, Direction, PolicyKey, Verdict
from services.policy import (
    CHANNEL_PREFIX,
    CHANNEL_SELECTOR,
    CHANNEL_SUBJECT,
    PolicyRef,
    PolicyValidationError,
    SelectorMirror,
    SubjectPolicy,
    error_message,
    expand,
    messages,
    parse_selector,
)
from services.policy.service import BusView, resync_messages, to_outgoing
from tests.support.policy_helpers import EXAMPLES, REPO_ROOT, build, docs, load_docs, pod

FLAT_RATIO = 1.2  # bench/policy_compile.py's bound: bytes and messages, 10k vs 100

CIDR_POLICY = docs("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: out, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]}]
""")[0]


def test_new_identity_publishes_only_matching_selector_deltas_and_itself() -> None:
    ids = {300 + i: pod(app=f"app{i}") for i in range(20)}
    ids[299] = pod(app="frontend", tier="web")
    repo = build(load_docs(EXAMPLES / "three-tier" / "policy.yaml"), ids)
    ch = repo.add_identity(400, pod(app="frontend", tier="web", version="v2"))
    msgs = messages(repo, ch)
    selector_msgs = [m for m in msgs if m.channel == CHANNEL_SELECTOR]
    frontend_sel = parse_selector({"matchLabels": {
        "app": "frontend", "tier": "web", "k8s:io.kubernetes.pod.namespace": "production"}}, "s")
    deny_sel = parse_selector({"matchLabels": {
        "app": "frontend", "k8s:io.kubernetes.pod.namespace": "production"}}, "s")
    assert {m.key for m in selector_msgs} == {frontend_sel.id, deny_sel.id}
    assert all(m.payload == {"selector": m.key, "revision": ch.revision, "op": "delta",
                             "added": [400], "removed": []} for m in selector_msgs)
    # The new identity is selected by no rule: its only subject message is its own, with no
    # rules (its policy is computed: open both ways); no other subject is republished.
    own = [m for m in msgs if m.channel == CHANNEL_SUBJECT]
    assert [(m.key, m.payload["rules"], m.payload["ingress_enforced"],
             m.payload["egress_enforced"]) for m in own] == [("400", [], False, False)]
    ch = repo.add_identity(401, pod(app="database", tier="db", version="v2"))
    subject_msgs = [m for m in messages(repo, ch) if m.channel == CHANNEL_SUBJECT]
    assert [m.key for m in subject_msgs] == ["401"]
    assert subject_msgs[0].payload["ingress_enforced"] is True


def test_delete_removes_exactly_its_contributions() -> None:
    backend = pod(app="backend")
    repo = build([CIDR_POLICY], {300: backend, 301: pod(app="other")})
    mirror = SelectorMirror()
    before_selectors = set(repo.cache.selector_ids())
    ch = repo.apply(load_docs(EXAMPLES / "policies" / "seed-allow-monitoring-scrape.yaml")[0])
    for m in messages(repo, ch):
        mirror.apply(m)
    added = set(ch.selectors_added)
    assert added and not added & before_selectors
    ch = repo.delete(PolicyRef("CiliumNetworkPolicy", "production", "allow-monitoring-scrape"))
    msgs = messages(repo, ch)
    assert ch.selectors_removed == added
    assert set(repo.cache.selector_ids()) == before_selectors
    assert [m.key for m in msgs if m.channel == CHANNEL_SUBJECT] == ["300"]
    assert repo.prefix_entries() and not ch.prefixes_removed   # the CIDR policy still holds
    ch = repo.delete(PolicyRef("CiliumNetworkPolicy", "production", "out"))
    msgs = messages(repo, ch)
    assert sorted(m.key for m in msgs if m.channel == CHANNEL_PREFIX) == \
        ["10.0.0.0/8", "10.1.0.0/16"]
    sub = [m.payload for m in msgs if m.channel == CHANNEL_SUBJECT]
    assert sub and sub[0]["rules"] == [] and sub[0]["egress_enforced"] is False
    assert repo.subjects() == {} and repo.prefix_entries() == {}


def test_consumer_expands_the_same_entries_from_messages_alone() -> None:
    repo = build([], {})
    mirror = SelectorMirror()
    calls = [
        lambda: repo.apply(CIDR_POLICY),
        lambda: repo.add_identity(300, pod(app="backend")),
        lambda: repo.apply(
            load_docs(EXAMPLES / "policies" / "seed-allow-frontend-to-backend.yaml")[0]),
        lambda: repo.add_identity(301, pod(app="frontend", tier="web")),
        lambda: repo.add_identity(302, pod(app="backend", tier="api")),
    ]
    for call in calls:
        for m in messages(repo, call()):   # published right after each change
            mirror.apply(m)
    for ident, payload in mirror.subjects.items():
        sp = SubjectPolicy.from_dict(payload)
        assert sp == repo.subject_policy(ident)
        mine = expand(sp, {k: frozenset(v) for k, v in mirror.members.items()}).entries
        theirs = expand(repo.subject_policy(ident), repo.cache.snapshot()).entries
        assert mine == theirs
    entries = expand(repo.subject_policy(302), repo.cache.snapshot()).entries
    assert entries[PolicyKey(302, 301, Direction.INGRESS, PROTO_TCP, 8080, 8080)] == Verdict.ALLOW
    assert mirror.prefixes == repo.prefix_entries()


def test_volume_of_a_new_identity_stays_flat_as_the_cluster_grows() -> None:
    # The bench's own scenario at test scale (bench/ is run as a module from the repo root).
    code = ("import json; from bench.policy_compile import bench_new_identity as b; "
            "print(json.dumps(b(sizes=(100, 2000), n_policies=100)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    result = json.loads(out)
    assert result["100"]["messages"] >= 2            # the deltas and the new subject
    assert result["100"]["by_channel"].get("subject") == 1
    assert result["ratio_bytes"] <= FLAT_RATIO and result["ratio_messages"] <= FLAT_RATIO


def test_every_message_follows_the_bus_schemas_and_subjects() -> None:
    from services.common.codec import decode, encode
    from services.policy.service import to_outgoing
    repo = build([], {300: pod(app="backend")})
    msgs = [*messages(repo, repo.apply(CIDR_POLICY)),
            *messages(repo, repo.add_identity(301, pod(app="backend", tier="x"))),
            *messages(repo, repo.delete(PolicyRef("CiliumNetworkPolicy", "production", "out")))]
    events = {m.event for m in msgs}
    assert events == {"policy.rules", "policy.selector", "policy.status", "ipcache.upsert",
                      "ipcache.delete"}
    for m in msgs:
        out = to_outgoing(m, m.payload["revision"])   # what the service publishes
        assert decode(encode(out.event_type, out.data), out.subject).data == out.data
        assert m.subject.startswith(("cilia.policy.", "cilia.ipcache.cidr."))
        assert " " not in m.subject and m.msg_id.startswith(f"policy:{m.payload['revision']}:")
    assert len({m.msg_id for m in msgs}) == len(msgs)
    with pytest.raises(PolicyValidationError) as exc:
        repo.apply({**CIDR_POLICY, "spec": {"endpointSelector": {"matchLabels": {"app": 1}}}})
    err = error_message(exc.value, repo.revision)
    assert err.subject == "cilia.policy.status.ciliumnetworkpolicy.production.out"
    assert decode(encode(err.event, err.payload), err.subject).data["op"] == "error"
    assert "spec.endpointSelector.matchLabels.app" in err.payload["error"]


def _view_after(repo_msgs: list[Any], revision: int) -> BusView:
    view = BusView()
    for m in repo_msgs:
        out = to_outgoing(m, revision)
        view.apply(validate(out.event_type, out.data))
    return view


def test_every_cluster_identity_has_a_computed_policy_and_resync_keeps_it() -> None:
    repo = build(load_docs(EXAMPLES / "three-tier" / "policy.yaml"),
                 {300: pod(app="database", tier="db"), 301: pod(app="unselected")})
    subjects_now = repo.computed_subjects()
    assert set(subjects_now) == {300, 301}                   # no reserved identity
    assert subjects_now[301].rules == () and subjects_now[300].rules
    view = _view_after(resync_messages(repo, BusView()), 10)
    assert set(view.subjects) == {300, 301}                  # the empty mark is kept too
    assert resync_messages(repo, view, {300: 5, 301: 9}) == []   # nothing to republish
    # 301's labels changed after its message was published (a number reused while the
    # service was down): its message no longer counts and is published again.
    again = resync_messages(repo, view, {300: 5, 301: 11})
    assert [(m.channel, m.key, m.payload["rules"]) for m in again] == [
        (CHANNEL_SUBJECT, "301", [])]
    # An identity that is gone keeps its (empty) last message: nothing to publish.
    repo.remove_identity(301)
    assert resync_messages(repo, view, {300: 5}) == []
