"""``replay explain`` towards an address outside the cluster, learned through DNS (issue 12).

The history is built as the cluster writes it: source objects, the identity and ipcache of a
pod, a CiliumNetworkPolicy with ``toFQDNs``, a node's ``fqdn.names`` report, and after each
policy input the policy service's own output (its repository's changes turned into messages by
its publishing code), every payload encoded with the bus codec.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from services.cli._context import CliContext
from services.cli.replay import replay_group
from services.common import contract
from services.common.codec import encode
from services.common.contract import AgentEvent, validate
from services.common.identities import RESERVED, reserved_labels
from services.common.policytypes import PROTO_TCP
from services.policy import Repository, messages
from services.policy.fqdn import fqdn_label
from services.policy.reducer import reduce_input
from services.policy.repository import Changes
from services.policy.service import to_outgoing
from services.replay import (
    HistoryHeader,
    Moment,
    Record,
    Replay,
    cut,
    explain,
    parse_moment,
    write_history,
)
from services.replay.explain import render
from tests.support.policy_helpers import docs, pod

T0 = int(datetime(2026, 11, 28, 10, 0, tzinfo=UTC).timestamp())   # unix seconds
NS = 10**9
NODE, SRC, SRC_IP, SRC_ID = "node1", "default/ext-a", "10.0.1.5", 300
API_IP, OTHER_IP = "203.0.113.20", "203.0.113.21"
LEARNED_AT = T0 + 60          # 10:01:00: api.example.com resolves to API_IP on node1
FORGOTTEN_AT = T0 + 120       # 10:02:00: every address of the name expired on node1
TRACE = "ab" * 16

POLICY = docs("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: external-client-fqdn, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: ext-a}}
  egress:
    - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system,
                                   k8s-app: kube-dns}}]
      toPorts: [{ports: [{port: "53", protocol: ANY}],
                 rules: {dns: [{matchPattern: "*"}]}}]
    - toFQDNs: [{matchName: api.example.com}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
""")[0]


class History:
    """Records at chosen times, with the policy service's output after each of its inputs."""

    def __init__(self) -> None:
        self.repo = Repository()
        self.records: list[Record] = []

    def emit(self, at: int, subject: str, etype: str, data: Any,
             trace: str = "") -> int:
        seq = len(self.records) + 1
        headers = {"traceparent": f"00-{trace}-{seq:016x}-01"} if trace else {}
        self.records.append(Record(seq, at * NS + seq, subject, headers, encode(etype, data)))
        return seq

    def policy_input(self, at: int, subject: str, etype: str, data: dict[str, Any],
                     trace: str = "") -> int:
        """An input of the policy service, then what the service publishes for it."""
        seq = self.emit(at, subject, etype, data, trace)
        changes = reduce_input(self.repo, validate(etype, data))
        assert isinstance(changes, Changes)
        for msg in messages(self.repo, changes):
            out = to_outgoing(msg, seq)
            self.emit(at, out.subject, out.event_type, out.data, trace)
        return seq


def history() -> tuple[list[Record], int]:
    """The history, and the sequence of the fqdn.names event that taught API_IP."""
    h = History()
    for ident in RESERVED:
        h.policy_input(T0, contract.identity_subject(ident), "identity.upsert",
                       {"id": ident, "labels": reserved_labels(ident).strings()})
    h.emit(T0, contract.source_subject("Node", "", NODE), "object.upsert", {
        "kind": "Node", "namespace": "", "name": NODE, "object": {
            "kind": "Node", "metadata": {"name": NODE}, "status": {"addresses": [
                {"type": "InternalIP", "address": "172.31.0.11"}]}}})
    h.emit(T0 + 1, contract.source_subject("Pod", "default", "ext-a"), "object.upsert", {
        "kind": "Pod", "namespace": "default", "name": "ext-a", "object": {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "ext-a", "namespace": "default", "labels": {"app": "ext-a"}},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "curl"}]},
            "status": {"podIP": SRC_IP, "hostIP": "172.31.0.11"}}})
    h.policy_input(T0 + 1, contract.identity_subject(SRC_ID), "identity.upsert",
                   {"id": SRC_ID, "labels": pod(namespace="default", app="ext-a").strings()})
    h.emit(T0 + 1, contract.ipcache_subject(f"{SRC_IP}/32"), "ipcache.upsert",
           {"prefix": f"{SRC_IP}/32", "identity": SRC_ID, "pod": SRC, "node": NODE,
            "host_ip": "172.31.0.11"})
    meta = POLICY["metadata"]
    h.policy_input(T0 + 2, contract.source_subject("CiliumNetworkPolicy", meta["namespace"],
                                                   meta["name"]), "object.upsert",
                   {"kind": "CiliumNetworkPolicy", "namespace": meta["namespace"],
                    "name": meta["name"], "object": POLICY})
    subject = contract.agent_fqdn_subject(NODE, "api.example.com")
    taught = h.policy_input(LEARNED_AT, subject, AgentEvent.FQDN_NAMES, {
        "node": NODE, "name": "api.example.com", "endpoints": [SRC],
        "addresses": [{"ip": API_IP, "ttl": 5, "expires": LEARNED_AT + 5}]}, trace=TRACE)
    h.policy_input(FORGOTTEN_AT, subject, AgentEvent.FQDN_NAMES,
                   {"node": NODE, "name": "api.example.com", "endpoints": [SRC],
                    "addresses": []})
    return h.records, taught


def _at(unix: int) -> Moment:
    return parse_moment(datetime.fromtimestamp(unix, UTC).isoformat())


def _explain(at: int, dst: str, port: int = 80) -> dict[str, Any]:
    records, _ = history()
    moment = _at(at)
    return explain(records[:cut(records, moment)], moment, SRC, dst, port, PROTO_TCP)


def test_replay_folds_what_the_nodes_learned_into_its_policy_repository() -> None:
    records, taught = history()
    rp = Replay([NODE])
    rp.fold(records[:taught])
    assert rp.repo.learned() == {API_IP: frozenset({"api.example.com"})}
    assert rp.repo.learned_sources(API_IP) == [(NODE, "api.example.com")]
    # The service's output reached the node: a CIDR identity for the address, carrying the
    # fqdn label of the rule's name, member of the rule's toFQDNs selector.
    rp.fold(records[taught:cut(records, _at(LEARNED_AT + 30))])
    ident = rp.node(NODE).state.identity_of(API_IP)
    assert ident is not None and ident == rp.repo.cidrs.identity(f"{API_IP}/32")
    labels = rp.repo.cache.labels(ident)
    assert labels is not None and fqdn_label("api.example.com") in labels


def test_after_the_lookup_the_learned_address_is_allowed_and_explained() -> None:
    _, taught = history()
    doc = _explain(LEARNED_AT + 2, API_IP)
    assert doc["verdict"] == doc["policy_service_verdict"] == "ALLOWED"
    assert [s["direction"] for s in doc["sides"]] == ["egress"]
    assert doc["destination"]["prefix"] == f"{API_IP}/32"
    [learned] = doc["learned"]
    assert (learned["name"], learned["node"], learned["endpoints"]) == \
        ("api.example.com", NODE, [SRC])
    assert (learned["held"], learned["ttl"], learned["expires"]) == \
        (True, 5, "2026-11-28T10:01:05Z")
    assert learned["event"]["seq"] == taught and learned["event"]["trace_id"] == TRACE
    assert learned["event"]["type"] == "fqdn.names"
    assert learned["rules"] == [{
        "match": "matchName", "pattern": "api.example.com", "deciding": True,
        "rule": "CiliumNetworkPolicy/default/external-client-fqdn rule 0 egress[1]",
        "policy": "CiliumNetworkPolicy/default/external-client-fqdn"}]
    # The deciding policy entry was put there by the service's output for that lookup.
    [entry] = doc["sides"][0]["entries"]
    assert entry["map"] == "policy" and entry["event"]["seq"] > taught


def test_before_the_lookup_the_address_is_denied_without_a_learned_section() -> None:
    doc = _explain(LEARNED_AT - 1, API_IP)
    assert doc["verdict"] == "DENIED" and doc["learned"] == []
    assert doc["destination"]["identity"] == 2 and doc["destination"]["prefix"] is None
    assert doc["sides"][0]["reason"] == "default deny: no rule allows it"


def test_an_address_the_name_never_resolved_to_is_denied() -> None:
    doc = _explain(LEARNED_AT + 2, OTHER_IP)
    assert doc["verdict"] == "DENIED" and doc["learned"] == []
    assert doc["destination"]["identity"] == 2


def test_another_port_of_the_learned_address_is_denied_and_the_rule_does_not_decide() -> None:
    doc = _explain(LEARNED_AT + 2, API_IP, port=443)
    assert doc["verdict"] == "DENIED"
    [learned] = doc["learned"]
    assert [r["deciding"] for r in learned["rules"]] == [False]


def test_an_expired_address_is_denied_and_its_last_learning_is_cited() -> None:
    _, taught = history()
    doc = _explain(FORGOTTEN_AT + 1, API_IP)
    assert doc["verdict"] == "DENIED"
    [learned] = doc["learned"]
    assert learned["held"] is False and learned["expired"] is True
    assert learned["event"]["seq"] == taught
    assert learned["dropped_by"]["time"].startswith("2026-11-28T10:02:00")


def test_text_rendering() -> None:
    _, taught = history()
    text = render(_explain(LEARNED_AT + 2, API_IP))
    lines = text.splitlines()
    assert lines[0].endswith(f"{SRC} -> {API_IP} 80/TCP: ALLOWED")
    i = next(n for n, line in enumerate(lines) if line.startswith("  learned "))
    assert lines[i:i + 3] == [
        f"  learned  api.example.com -> {API_IP} on {NODE} (asked by {SRC}), ttl 5s, "
        "expires 2026-11-28T10:01:05Z",
        f"           by seq {taught} 2026-11-28T10:01:00.000000Z fqdn.names "
        f"cilia.agent.fqdn.{NODE}.api_example_com trace {TRACE}",
        "           selected by toFQDNs matchName api.example.com of "
        "CiliumNetworkPolicy/default/external-client-fqdn rule 0 egress[1]"]
    assert lines[-1] == "Final verdict: ALLOWED"


def test_cli_explains_an_address_from_a_history_file(tmp_path: Path) -> None:
    records, _ = history()
    path = tmp_path / "h.cilia"
    write_history(path, HistoryHeader("CILIA", "test"), records)
    run = CliRunner().invoke
    obj = CliContext(None, tmp_path)
    args = ["explain", "--file", str(path), "--at", "2026-11-28T10:01:02Z", "--from", SRC,
            "--dport", "80/TCP", "--to"]
    res = run(replay_group, [*args, API_IP], obj=obj)
    assert res.exit_code == 0, res.output
    assert "  learned  api.example.com -> 203.0.113.20 on node1" in res.output
    assert res.output.rstrip().endswith("Final verdict: ALLOWED")
    res = run(replay_group, [*args, OTHER_IP], obj=obj)
    assert res.exit_code == 0 and "learned" not in res.output
    assert "world: no ipcache prefix holds it" in res.output
    res = run(replay_group, [*args, "203.0.113"], obj=obj)
    assert res.exit_code == 2 and "NAMESPACE/POD or an IPv4 address" in res.output
