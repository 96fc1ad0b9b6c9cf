"""The agent's reducer (pure): folding events, desired maps, the saved position."""

from __future__ import annotations

import msgpack

from services.common.contract import validate
from services.common.identities import ID_HOST, ID_INIT, ID_REMOTE_NODE
from services.common.labels import Labels
from services.common.policytypes import PROTO_TCP, Direction, PolicyKey, Verdict
from services.nodeagent.state import LocalEndpoint, NodeState
from services.policy import Repository, messages, parse_policy
from services.policy.service import to_outgoing

POLICY = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
          "metadata": {"name": "p", "namespace": "prod"},
          "spec": {"endpointSelector": {"matchLabels": {"app": "db"}},
                   "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "api"}}],
                                "toPorts": [{"ports": [{"port": "5432",
                                                        "protocol": "TCP"}]}]}]}}


def _labels(app: str) -> Labels:
    return Labels.parse([f"k8s:app={app}", "k8s:io.kubernetes.pod.namespace=prod"])


def _fold(state: NodeState) -> None:
    repo = Repository()
    events = []
    for num, app in ((300, "db"), (301, "api")):
        events.append((f"cilia.identity.{num}", "identity.upsert",
                       {"id": num, "labels": _labels(app).strings()}))
        repo.add_identity(num, _labels(app))
    ch = repo.upsert(parse_policy(POLICY))
    for msg in messages(repo, ch):
        out = to_outgoing(msg, 10)
        events.append((out.subject, out.event_type, out.data))
    events += [("cilia.ipcache.k8s.10-244-1-5_32", "ipcache.upsert",
                {"prefix": "10.244.1.5/32", "identity": 300, "host_ip": "172.31.0.11",
                 "node": "n1", "pod": "prod/db"}),
               ("cilia.ipcache.k8s.10-244-2-5_32", "ipcache.upsert",
                {"prefix": "10.244.2.5/32", "identity": 301, "host_ip": "172.31.0.12",
                 "node": "n2", "pod": "prod/api"}),
               ("cilia.src.node._.n1", "object.upsert", {"kind": "Node", "namespace": "",
                "name": "n1", "object": {"metadata": {"name": "n1"}, "status": {"addresses": [
                    {"type": "InternalIP", "address": "172.31.0.11"}]}}}),
               ("cilia.src.node._.n2", "object.upsert", {"kind": "Node", "namespace": "",
                "name": "n2", "object": {"metadata": {"name": "n2"}, "status": {"addresses": [
                    {"type": "InternalIP", "address": "172.31.0.12"}]}}})]
    for seq, (subject, event_type, data) in enumerate(events, 1):
        state.apply(subject, validate(event_type, data), seq)


def test_desired_maps_of_a_node() -> None:
    state = NodeState("n1")
    _fold(state)
    eps = [LocalEndpoint(1, "10.244.1.5", 7, "lxc1", "prod/db")]
    ipc = state.desired_ipcache()
    assert ipc["10.244.1.5/32"].identity == 300 and ipc["10.244.1.5/32"].tunnel_endpoint == ""
    assert ipc["10.244.2.5/32"].tunnel_endpoint == "172.31.0.12"   # remote pod
    assert ipc["172.31.0.11/32"].identity == ID_HOST
    assert ipc["172.31.0.12/32"].identity == ID_REMOTE_NODE
    ep = state.desired_endpoints(eps)["10.244.1.5"]
    assert ep.identity == 300 and ep.enforce_ingress and not ep.enforce_egress
    policy = state.desired_policy(state.local_identities(eps))
    assert policy[PolicyKey(300, 301, Direction.INGRESS, PROTO_TCP, 5432, 5432)] == Verdict.ALLOW
    assert all(k.subject == 300 for k in policy)


def test_snapshot_round_trip_through_msgpack() -> None:
    state = NodeState("n1")
    _fold(state)
    back = NodeState.from_snapshot(msgpack.unpackb(msgpack.packb(state.snapshot()),
                                                   strict_map_key=False))
    eps = [LocalEndpoint(1, "10.244.1.5", 7, "lxc1", "prod/db")]
    assert back.revision == state.revision
    assert back.desired_ipcache() == state.desired_ipcache()
    assert back.desired_endpoints(eps) == state.desired_endpoints(eps)
    assert back.desired_policy({300}) == state.desired_policy({300})
    assert back.subjects_of_selector == state.subjects_of_selector


def _rules(state: NodeState, ident: int, seq: int, rules: list[object] | None = None) -> None:
    state.apply(f"cilia.policy.rules.{ident}", validate("policy.rules",
                {"identity": ident, "revision": seq, "rules": rules or []}), seq)


def _ipcache(state: NodeState, ip: str, ident: int, pod: str, seq: int) -> None:
    state.apply(f"cilia.ipcache.k8s.{ip.replace('.', '-')}_32", validate("ipcache.upsert",
                {"prefix": f"{ip}/32", "identity": ident, "host_ip": "172.31.0.11",
                 "node": "n1", "pod": pod}), seq)


def _identity(state: NodeState, ident: int, app: str, seq: int) -> None:
    state.apply(f"cilia.identity.{ident}", validate("identity.upsert",
                {"id": ident, "labels": _labels(app).strings()}), seq)


INIT_DENY_ALL = (ID_INIT, True, True)


def _ep(state: NodeState, ep: LocalEndpoint) -> tuple[int, bool, bool]:
    e = state.desired_endpoints([ep])[ep.ip]
    return e.identity, e.enforce_ingress, e.enforce_egress


def test_an_endpoint_stays_at_deny_all_until_its_identity_and_policy_are_known() -> None:
    state = NodeState("n1")
    ep = LocalEndpoint(1, "10.244.1.9", 7, "lxc1", "prod/web")
    assert _ep(state, ep) == INIT_DENY_ALL                    # nothing known yet
    _identity(state, 400, "web", 1)
    _ipcache(state, ep.ip, 400, "prod/web", 2)
    assert _ep(state, ep) == INIT_DENY_ALL                    # identity, no computed policy
    assert state.desired_policy(state.local_identities([ep])) == {}
    _rules(state, 400, 3)                                     # computed: nothing selects it
    assert _ep(state, ep) == (400, False, False)
    # A relabel to a new identity is not computed either until its policy message comes.
    _identity(state, 401, "web2", 4)
    _ipcache(state, ep.ip, 401, "prod/web", 5)
    assert _ep(state, ep) == INIT_DENY_ALL
    _rules(state, 401, 6)
    assert _ep(state, ep) == (401, False, False)


def test_a_message_computed_for_other_labels_does_not_count() -> None:
    state = NodeState("n1")
    ep = LocalEndpoint(1, "10.244.1.9", 7, "lxc1", "prod/web")
    _identity(state, 400, "web", 1)
    _rules(state, 400, 2)
    _ipcache(state, ep.ip, 400, "prod/web", 3)
    assert _ep(state, ep) == (400, False, False)
    # The number is released and reused for another label set: not computed any more.
    state.apply("cilia.identity.400", validate("identity.delete", {"id": 400}), 4)
    _identity(state, 400, "db", 5)
    assert _ep(state, ep) == INIT_DENY_ALL
    assert state.realized({400}) == {400: 0}
    _rules(state, 400, 6)
    assert _ep(state, ep) == (400, False, False)
    # Re-publishing the same labels changes nothing.
    _identity(state, 400, "db", 7)
    assert _ep(state, ep) == (400, False, False)


def test_an_address_owned_by_another_pod_gives_no_identity() -> None:
    state = NodeState("n1")
    _fold(state)
    # 10.244.1.5 is prod/db's address in the ipcache; a new pod got it before the delete came.
    ep = LocalEndpoint(2, "10.244.1.5", 8, "lxc2", "prod/newcomer")
    assert _ep(state, ep) == INIT_DENY_ALL
    assert state.local_identities([ep]) == {ID_INIT}
    # A CIDR identity for a pod address is not a pod identity either.
    state.apply("cilia.ipcache.cidr.10-244-1-7_32", validate("ipcache.upsert",
                {"prefix": "10.244.1.7/32", "identity": 16777217}), 99)
    assert _ep(state, LocalEndpoint(3, "10.244.1.7", 9, "lxc3", "prod/x")) == INIT_DENY_ALL
