"""The lab as nodes of a Kubernetes API server (``cilia lab up --k8s-api``), on real packets.

The seed's Exercise 1 is written to the test API server over its HTTP interface, as kubectl
would (Namespace, Deployments, Services, the CiliumNetworkPolicies): the lab's scheduler,
kubelet and Deployment controller run the pods from there, cilia's watcher is the only source
of the bus, and the verdicts on real connections are those of ``cilia apply``. A policy deleted
through the API leaves the kernel maps.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import Cluster, cluster
from tests.support.k8sapi import ApiServer, api_server
from tests.support.k8sapi._kinds import by_kind
from tests.support.procs import REPO
from tests.support.threetier import (
    EXPECTED,
    enforced,
    placement,
    verdicts,
)

THREE_TIER = REPO / "examples" / "three-tier"
FILES = ("00-namespace.yaml", "deployments.yaml", "services.yaml")


def _path(obj: dict[str, Any], name: bool = False) -> str:
    kind = by_kind(obj["apiVersion"], obj["kind"])
    assert kind is not None, obj["kind"]
    base = "/api/v1" if not kind.group else f"/apis/{kind.group}/{kind.version}"
    ns = obj["metadata"].get("namespace", "default") if kind.namespaced else ""
    path = f"{base}/namespaces/{ns}/{kind.plural}" if ns else f"{base}/{kind.plural}"
    return f"{path}/{obj['metadata']['name']}" if name else path


def http(api: ApiServer, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One request to the API server, as kubectl sends it (JSON, bearer token)."""
    req = urllib.request.Request(api.url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {api.token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def create(api: ApiServer, path: Path) -> list[str]:
    made = []
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            out = http(api, "POST", _path(doc), doc)
            made.append(f"{out['kind']}/{out['metadata']['name']}")
    return made


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Cluster, ApiServer]]:
    tmp = Path(tempfile.mkdtemp(prefix="cilia-k8s-"))
    try:
        with api_server() as api:
            kubeconfig = api.kubeconfig(tmp / "kubeconfig")
            with cluster(tmp, nodes=2, lab_args=("--k8s-api", api.url, "--kubeconfig",
                                                 str(kubeconfig))) as c:
                yield c, api
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_exercise_1_through_the_api_server(lab: tuple[Cluster, ApiServer]) -> None:
    c, api = lab
    # the lab registered its nodes as a kubelet would, Ready
    c.wait("the lab's nodes registered", lambda: len(
        http(api, "GET", "/api/v1/nodes")["items"]) == 2, timeout=30)
    nodes = http(api, "GET", "/api/v1/nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == [f"{c.lab}-node1", f"{c.lab}-node2"]
    assert all(n["status"]["conditions"][0]["status"] == "True" for n in nodes)
    for name in FILES:
        create(api, THREE_TIER / name)
    # the Deployment controller made the pods, the scheduler bound them, the kubelet ran them
    # and wrote their addresses back; the watcher published them and the identities followed
    c.wait("three endpoints with identities", lambda: len(
        [e for e in c.endpoints() if e["identity"] >= 256]) == 3, timeout=60)

    def pods() -> list[dict[str, Any]]:
        return list(http(api, "GET", "/api/v1/namespaces/production/pods")["items"])

    # the kubelet writes a pod's status once its CNI ADD returns, just after its endpoint
    c.wait("three pods with a status", lambda: len(
        [p for p in pods() if "status" in p]) == 3, timeout=30)
    running = pods()
    assert len(running) == 3
    assert all(p["status"]["phase"] == "Running" and p["status"]["podIP"]
               and p["spec"]["nodeName"].startswith(c.lab) for p in running)
    assert {p["metadata"]["ownerReferences"][0]["kind"] for p in running} == {"Deployment"}
    created = create(api, THREE_TIER / "policy.yaml")
    assert created == ["CiliumNetworkPolicy/backend-allow-frontend",
                       "CiliumNetworkPolicy/database-allow-backend"]
    c.wait("policy enforced", lambda: enforced(c, "backend") and enforced(c, "database"),
           timeout=30)
    c.settle()
    assert verdicts(c, placement(c)) == EXPECTED
    # what cilia shows is what the API holds
    assert {p["name"]: p["status"] for p in c.json("policy", "get")} == {
        "backend-allow-frontend": "OK", "database-allow-backend": "OK"}


def test_a_policy_deleted_through_the_api_leaves_the_kernel(
        lab: tuple[Cluster, ApiServer]) -> None:
    c, api = lab
    where = placement(c)
    assert c.connect("deploy/frontend", "production", where.ips["database"], 5432) == "timeout"
    doc = next(d for d in yaml.safe_load_all((THREE_TIER / "policy.yaml").read_text())
               if d["metadata"]["name"] == "database-allow-backend")
    http(api, "DELETE", _path(doc, name=True))
    c.wait("the database's ingress open again", lambda: not enforced(c, "database"), timeout=30)
    c.settle()
    assert c.connect("deploy/frontend", "production", where.ips["database"], 5432) == "OK"
    assert [p["name"] for p in c.json("policy", "get")] == ["backend-allow-frontend"]


def test_a_deployment_scaled_through_the_api_gets_its_pods(
        lab: tuple[Cluster, ApiServer]) -> None:
    c, api = lab
    path = "/apis/apps/v1/namespaces/production/deployments/backend"
    deploy = http(api, "GET", path)
    deploy["spec"]["replicas"] = 2
    http(api, "PUT", path, deploy)
    c.wait("two backends with the backend's identity", lambda: len(
        [e for e in c.endpoints() if "k8s:app=backend" in e["labels"]
         and e["status"] == "ready"]) == 2, timeout=60)
