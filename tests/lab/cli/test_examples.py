"""Every example folder applies as a folder (`cilia apply -f examples/<name>/`) on a fresh lab.

A single one-node lab for all of them, in the order the folders' READMEs give: three-tier
first (the namespace and pods the others refer to), kube-dns, then policies, fail-closed and
services, each applied, checked for what it created (endpoints, services, policies, a packet
where the README promises one) and deleted again; three-tier and kube-dns are deleted last,
leaving nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from tests.support.cluster import Cluster, temp_cluster
from tests.support.procs import REPO
from tests.support.wait import wait_until

EXAMPLES = REPO / "examples"
# Every example folder, in the order their READMEs apply them.
FOLDERS = ("three-tier", "kube-dns", "fqdn", "policies", "fail-closed", "services")
NS = "production"
WAIT_S = 30.0


T = TypeVar("T")


def _until(what: str, fetch: Callable[[], T], ok: Callable[[T], bool]) -> T:
    """``fetch()`` again until ``ok`` holds for what it returns (one CLI call a try)."""
    seen: list[T] = []

    def check() -> bool:
        seen[:] = [fetch()]
        return ok(seen[0])

    wait_until(what, check, WAIT_S)
    return seen[0]


def _pods(c: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    """Ready endpoints of ``namespace`` with a cluster identity, by pod name."""
    return {e["pod"].split("/", 1)[1]: e for e in c.endpoints()
            if e["pod"].startswith(f"{namespace}/") and e["status"] == "ready"
            and e["identity"] >= 256}


def _apps(c: Cluster) -> dict[str, dict[str, Any]]:
    """Ready endpoints of the three tiers, by deployment (``frontend``, ...)."""
    return {pod.split("-", 1)[0]: e for pod, e in _pods(c, NS).items()}


def _services(c: Cluster, namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(name, type) -> its first frontend row in `cilia service list`, of ``namespace``."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for row in c.json("service", "list"):
        ns, _, name = row["service"].partition("/")
        if ns == namespace:
            out.setdefault((name, row["type"]), row)
    return out


def _policies(c: Cluster) -> dict[str, str]:
    """name -> status of every policy `cilia policy get` lists."""
    return {p["name"]: p["status"] for p in c.json("policy", "get")}


def _apply(c: Cluster, name: str) -> list[str]:
    return c.ok("apply", "-f", f"examples/{name}/").splitlines()   # as a user types it


def _delete(c: Cluster, name: str) -> list[str]:
    return c.ok("delete", "-f", f"examples/{name}/").splitlines()


def _three_tier(c: Cluster) -> dict[str, dict[str, Any]]:
    """Apply three-tier (and keep it); its endpoints by app."""
    # files in name order, the namespace first (kubectl needs it before what lives in it)
    assert _apply(c, "three-tier") == [
        "namespace/production created", "deployment/frontend created",
        "deployment/backend created", "deployment/database created",
        "service/frontend created", "ciliumnetworkpolicy/backend-allow-frontend created",
        "ciliumnetworkpolicy/database-allow-backend created", "service/backend created",
        "service/database created"]
    eps = _until("three pods, the backend's and the database's ingress enforced",
                 lambda: _apps(c), lambda eps: len(eps) == 3 and {
                     app for app, e in eps.items() if e["ingress_enforcement"]} == {
                     "backend", "database"})
    for e in eps.values():   # the Namespace arrived first: its labels are in every identity
        assert "k8s:io.cilium.k8s.namespace.labels.env=production" in e["labels"]
    assert _until("both policies computed", lambda: _policies(c),
                  lambda p: "Pending" not in p.values()) == {
        "backend-allow-frontend": "OK", "database-allow-backend": "OK"}
    svcs = _until("four frontends", lambda: _services(c, NS), lambda s: len(s) == 4)
    assert {k: v["frontend"].split(":")[1] for k, v in svcs.items()} == {
        ("backend", "ClusterIP"): "80/TCP", ("database", "ClusterIP"): "5432/TCP",
        ("frontend", "ClusterIP"): "80/TCP", ("frontend", "NodePort"): "30080/TCP"}
    assert c.connect("deploy/frontend", NS, eps["backend"]["ipv4"], 8080) == "OK"
    return eps


def _curl(c: Cluster, url: str) -> int:
    """curl's exit code from the fqdn example's pod (its names resolved by kube-dns)."""
    res = c.cilia("exec", "external-client", "--", "curl", "-s", "-m", "3", url, timeout=60)
    return res.returncode


def _fqdn(c: Cluster) -> None:
    """The seed's Exercise 2: api.example.com only; then its DNS rule narrowed."""
    assert _apply(c, "fqdn") == ["pod/external-client created",
                                 "ciliumnetworkpolicy/external-client-fqdn created"]
    _until("the client enforced", lambda: _pods(c, "default"),
           lambda eps: bool(eps.get("external-client", {}).get("egress_enforcement")))
    _until("api.example.com answers", lambda: _curl(c, "http://api.example.com/"),
           lambda code: code == 0)
    assert _curl(c, "http://www.example.com/") == 28        # resolves; its address dropped
    assert _curl(c, "http://203.0.113.21/") == 28
    c.ok("apply", "-f", "examples/fqdn/narrow/")
    _until("other names refused", lambda: _curl(c, "http://www.example.com/"),
           lambda code: code == 6)                          # REFUSED: it does not resolve
    assert _curl(c, "http://api.example.com/") == 0
    assert _delete(c, "fqdn") == ["pod/external-client deleted",
                                  "ciliumnetworkpolicy/external-client-fqdn deleted"]


def _kube_dns(c: Cluster) -> None:
    """Apply kube-dns (and keep it): the cluster DNS at 10.96.0.10."""
    assert _apply(c, "kube-dns") == ["namespace/kube-system created",
                                     "service/kube-dns created", "deployment/coredns created"]
    svcs = _until("the kube-dns service with its pod", lambda: _services(c, "kube-system"),
                  lambda s: all(v["backends"] for v in s.values()) and len(s) == 1)
    assert {row["frontend"] for row in c.json("service", "list")
            if row["service"] == "kube-system/kube-dns"} == {"10.96.0.10:53/UDP",
                                                             "10.96.0.10:53/TCP"}
    assert svcs[("kube-dns", "ClusterIP")]["backends"][0]["pod"].startswith(
        "kube-system/coredns-")
    # names of the three tiers resolve (the pod's search path, then kube-dns)
    assert c.connect("deploy/frontend", NS, "backend", 80) == "OK"


def _seed_policies(c: Cluster, eps: dict[str, dict[str, Any]]) -> None:
    """The seed's three policies, on top of three-tier's two; then deleted."""
    assert _apply(c, "policies") == [
        "ciliumnetworkpolicy/allow-frontend-to-backend created",
        "ciliumnetworkpolicy/allow-monitoring-scrape created",
        "ciliumnetworkpolicy/backend-egress-policy created"]
    assert _until("five policies computed", lambda: _policies(c),
                  lambda p: len(p) == 5 and "Pending" not in p.values()) == dict.fromkeys(
        ("allow-frontend-to-backend", "allow-monitoring-scrape", "backend-allow-frontend",
         "backend-egress-policy", "database-allow-backend"), "OK")
    trace = c.json("policy", "trace", "--src", "app=prometheus", "--src-namespace",
                   "monitoring", "--dst", "app=backend", "--dst-namespace", NS,
                   "--dport", "9090/TCP")
    assert trace["verdict"] == "ALLOWED"
    _until("the backend's egress enforced", lambda: _apps(c)["backend"],
           lambda e: bool(e["egress_enforcement"]))
    # the database is a pod, not in the policy's 10.0.0.0/8 CIDR (Cilium's toCIDR): denied
    assert c.connect("deploy/backend", NS, eps["database"]["ipv4"], 5432) == "timeout"
    assert _delete(c, "policies") == [
        "ciliumnetworkpolicy/allow-frontend-to-backend deleted",
        "ciliumnetworkpolicy/allow-monitoring-scrape deleted",
        "ciliumnetworkpolicy/backend-egress-policy deleted"]


def _fail_closed(c: Cluster, eps: dict[str, dict[str, Any]]) -> None:
    """A pod forging production's labels gets none of them and is denied; then deleted."""
    assert _apply(c, "fail-closed") == ["namespace/intruder created", "pod/spoof created"]
    (spoof,) = c.json("endpoint", "get", "intruder/spoof")
    assert "k8s:io.kubernetes.pod.namespace=intruder" in spoof["status"]["identity"]["labels"]
    assert {(d["key"], d["value"]) for d in spoof["status"]["labels"]["dropped"]} == {
        ("io.kubernetes.pod.namespace", "production"),
        ("io.cilium.k8s.namespace.labels.env", "production")}
    assert c.connect("spoof", "intruder", eps["backend"]["ipv4"], 8080) == "timeout"
    assert _delete(c, "fail-closed") == ["namespace/intruder deleted", "pod/spoof deleted"]


def _services_folder(c: Cluster) -> None:
    """Three echo pods behind ClusterIP, LoadBalancer and NodePort services; then deleted."""
    assert _apply(c, "services") == [
        "deployment/echo created", "service/echo created", "service/echo-lb created",
        "service/echo-nodeport created"]
    svcs = _until("the echo services, three backends each", lambda: _services(c, "default"),
                  lambda s: len(s) == 6 and all(len(v["backends"]) == 3 for v in s.values()))
    assert {k: v["frontend"] for k, v in svcs.items() if k[1] != "ClusterIP"} == {
        ("echo-lb", "LoadBalancer"): "192.0.2.80:80/TCP",
        ("echo-lb", "NodePort"): svcs[("echo-lb", "NodePort")]["frontend"],   # allocated
        ("echo-nodeport", "NodePort"): "0.0.0.0:30081/TCP"}
    assert {k for k in svcs if k[1] == "ClusterIP"} == {
        ("echo", "ClusterIP"), ("echo-lb", "ClusterIP"), ("echo-nodeport", "ClusterIP")}
    lb = svcs[("echo-lb", "LoadBalancer")]
    assert lb["session_affinity"] and lb["external_traffic_policy"] == "Local"
    assert _delete(c, "services") == [
        "deployment/echo deleted", "service/echo deleted", "service/echo-lb deleted",
        "service/echo-nodeport deleted"]


@pytest.fixture(scope="module")
def lab() -> Iterator[Cluster]:
    with temp_cluster(nodes=1, prefix="cilia-examples-") as c:
        yield c


def test_every_example_folder_is_tested_here_and_has_a_readme() -> None:
    assert sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()) == sorted(FOLDERS)
    for name in FOLDERS:
        assert (EXAMPLES / name / "README.md").is_file(), name


def test_each_example_folder_applies_as_a_folder_and_deletes(lab: Cluster) -> None:
    eps = _three_tier(lab)
    _kube_dns(lab)
    _fqdn(lab)
    _seed_policies(lab, eps)
    _fail_closed(lab, eps)
    _services_folder(lab)
    assert _delete(lab, "kube-dns") == ["namespace/kube-system deleted",
                                        "service/kube-dns deleted", "deployment/coredns deleted"]
    assert len(_delete(lab, "three-tier")) == 9
    _until("no endpoint, service or policy left",
           lambda: (lab.endpoints(), lab.json("service", "list"), _policies(lab)),
           lambda left: left == ([], [], {}))
