"""The agent's reducer (pure): folding events, desired maps, the saved position."""

from __future__ import annotations

import msgpack

from services.common.identities import ID_HOST, ID_REMOTE_NODE
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
                "name": "n1", "object": {"status": {"addresses": [
                    {"type": "InternalIP", "address": "172.31.0.11"}]}}}),
               ("cilia.src.node._.n2", "object.upsert", {"kind": "Node", "namespace": "",
                "name": "n2", "object": {"status": {"addresses": [
                    {"type": "InternalIP", "address": "172.31.0.12"}]}}})]
    for seq, (subject, event_type, data) in enumerate(events, 1):
        state.apply(subject, event_type, data, seq)


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
