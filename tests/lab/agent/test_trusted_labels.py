"""Trusted labels on real packets: pod labels that claim a namespace's labels or a service
account are dropped from the pod's identity, in a Kubernetes NetworkPolicy and in a
CiliumNetworkPolicy; the honest pods (really in the labelled namespace, really running as the
service account) still pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster

SERVER_NS = "srv"
OBJECTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: team-a, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Namespace
metadata: {name: srv}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: srv, labels: {app: server}}
spec:
  containers: [{name: c, image: echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: honest-ns, namespace: team-a, labels: {app: client}}
spec:
  containers: [{name: c, image: echo}]
---
apiVersion: v1
kind: Pod
metadata:
  name: spoof-ns
  namespace: other
  labels: {app: client, io.cilium.k8s.namespace.labels.team: a}
spec:
  containers: [{name: c, image: echo}]
---
apiVersion: v1
kind: Pod
metadata: {name: robot, namespace: srv, labels: {app: client}}
spec:
  serviceAccountName: robot
  containers: [{name: c, image: echo}]
---
apiVersion: v1
kind: Pod
metadata:
  name: spoof-sa
  namespace: srv
  labels: {app: client, io.cilium.k8s.policy.serviceaccount: robot}
spec:
  containers: [{name: c, image: echo}]
"""
# The server admits pods of namespaces labelled team=a, and pods running as service account
# robot (in its own namespace).
K8S_POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: trusted, namespace: srv}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {team: a}}
        - podSelector: {matchLabels: {io.cilium.k8s.policy.serviceaccount: robot}}
"""
CILIUM_POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: trusted, namespace: srv}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints:
        - matchLabels: {k8s:io.cilium.k8s.namespace.labels.team: a}
        - matchLabels: {k8s:io.cilium.k8s.policy.serviceaccount: robot}
"""
CLIENTS = {("team-a", "honest-ns"): "OK", ("srv", "robot"): "OK",
           ("other", "spoof-ns"): "timeout", ("srv", "spoof-sa"): "timeout"}


def _write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def _endpoint(lab: Cluster, pod: str) -> dict[str, Any]:
    found = lab.json("endpoint", "get", pod)
    assert len(found) == 1, found
    return dict(found[0])


def _server_enforced(lab: Cluster, policy_kind: str) -> bool:
    ep = _endpoint(lab, f"{SERVER_NS}/server")["status"]
    return bool(ep["policy"]["ingress"]["enforcing"]) and any(
        p["name"] == "trusted" and p["kind"] == policy_kind
        for p in lab.json("policy", "get"))


@pytest.fixture(scope="module")
def objects(lab: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Namespaces and pods applied; pod -> IPv4."""
    tmp = tmp_path_factory.mktemp("trusted")
    lab.ok("apply", "-f", _write(tmp, "objects.yaml", OBJECTS))
    # `apply` returned: every pod's endpoint holds its identity already.
    return {e["pod"]: e["ipv4"] for e in lab.endpoints()}


def _probe_all(lab: Cluster, server_ip: str) -> dict[tuple[str, str], str]:
    return {(ns, pod): lab.connect(pod, ns, server_ip, 8080) for ns, pod in CLIENTS}


@pytest.mark.parametrize("policy_kind,policy", [("NetworkPolicy", K8S_POLICY),
                                               ("CiliumNetworkPolicy", CILIUM_POLICY)])
def test_spoofed_namespace_and_serviceaccount_labels_are_dropped(
        lab: Cluster, objects: dict[str, str], tmp_path: Path, policy_kind: str,
        policy: str) -> None:
    server_ip = objects[f"{SERVER_NS}/server"]
    file = _write(tmp_path, "policy.yaml", policy)
    lab.ok("apply", "-f", file)
    try:
        lab.wait(f"server ingress enforced by the {policy_kind}",
                 lambda: _server_enforced(lab, policy_kind))
        lab.settle()
        assert _probe_all(lab, server_ip) == CLIENTS
        # The spoofs were dropped by policy at the server, with their true identities.
        flows = [f for f in lab.json("observe", "--verdict", "DROPPED", "--last", "500")
                 if f["dst_ip"] == server_ip and f["dst_port"] == 8080]
        for pod in ("other/spoof-ns", "srv/spoof-sa"):
            ident = _endpoint(lab, pod)["status"]["identity"]["id"]
            hits = [f for f in flows if f["src_ip"] == objects[pod]]
            assert hits and all(f["src_identity"] == ident for f in hits), (pod, flows)
            assert all("policy denied" in f["reason_name"] for f in hits), hits
    finally:
        lab.ok("delete", "-f", file)


def test_endpoint_get_shows_the_dropped_labels(lab: Cluster, objects: dict[str, str]) -> None:
    spoof = _endpoint(lab, "other/spoof-ns")["status"]
    assert spoof["labels"]["dropped"] == [{"key": "io.cilium.k8s.namespace.labels.team",
                                           "value": "a", "reason": "namespace-labels"}]
    # Namespace labels come from the Namespace object only: "other" has no team label.
    assert not [lbl for lbl in spoof["labels"]["security-relevant"]
                if lbl.startswith("k8s:io.cilium.k8s.namespace.labels.team")]
    assert "k8s:io.kubernetes.pod.namespace=other" in spoof["labels"]["security-relevant"]

    sa = _endpoint(lab, "srv/spoof-sa")["status"]
    assert sa["labels"]["dropped"] == [{"key": "io.cilium.k8s.policy.serviceaccount",
                                        "value": "robot", "reason": "serviceaccount"}]
    # The service account comes from spec.serviceAccountName only (here: none, "default").
    assert "k8s:io.cilium.k8s.policy.serviceaccount=default" in \
        sa["labels"]["security-relevant"]
    assert "k8s:io.cilium.k8s.policy.serviceaccount=robot" not in \
        sa["labels"]["security-relevant"]

    honest = _endpoint(lab, "team-a/honest-ns")["status"]
    assert honest["labels"]["dropped"] == []
    assert "k8s:io.cilium.k8s.namespace.labels.team=a" in honest["labels"]["security-relevant"]
    robot = _endpoint(lab, str(_endpoint(lab, "srv/robot")["id"]))["status"]
    assert "k8s:io.cilium.k8s.policy.serviceaccount=robot" in \
        robot["labels"]["security-relevant"]
    assert robot["state"] == "ready" and robot["external-identifiers"]["pod-name"] == "srv/robot"

    text = lab.ok("endpoint", "get", "other/spoof-ns")
    assert "Dropped labels (only their owner may set them):" in text
    assert "io.cilium.k8s.namespace.labels.team=a  (namespace-labels)" in text
    assert f"IPv4:                {objects['other/spoof-ns']}" in text

    # The identity service counted both.
    stats = next(s["stats"] for s in lab.json("status")["services"]
                 if s["service"] == "identity")
    assert stats["labels_dropped"] >= 2 and stats["pods_with_dropped_labels"] == 2, stats
