"""Cluster DNS with real packets: the kube-dns pod answers a client pod over its eth0, UDP and
TCP; the server listens only in the pod's netns; the pod's resolv.conf names kube-dns; the
lab's world (``lab up --external-name/--external-cname``) resolves and answers HTTP."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.lab import Kubelet, exec_in_pod
from tests.support.cluster import Cluster, cluster
from tests.support.procs import REPO

KUBE_DNS = REPO / "examples" / "kube-dns" / "kube-dns.yaml"
WORLD_ARGS = ("--external-name", "shop.example.net=198.51.100.7",
              "--external-name", "shop.example.net=198.51.100.8",
              "--external-name", "*.img.example.net=203.0.113.77",
              "--external-cname", "www.shop.example.net=shop.example.net",
              "--external-cname", "logo.example.com=a.img.example.net")
PY = sys.executable
CLIENT = """
apiVersion: v1
kind: Namespace
metadata: {name: dnstest}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: dnstest, labels: {app: client}}
spec:
  containers: [{name: c, image: cilia/workload}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: dnstest}
spec:
  selector: {app: client}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: direct, namespace: dnstest}
spec:
  clusterIP: None
  selector: {app: client}
  ports: [{port: 8080}]
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Cluster]:
    tmp = Path(tempfile.mkdtemp(prefix="cilia-dns-"))
    try:
        with cluster(tmp, nodes=1, lab_args=WORLD_ARGS) as c, \
                pytest.MonkeyPatch.context() as mp:
            for key in ("CILIA_STATE_DIR", "CILIA_RUN_DIR"):   # this process reads the lab
                mp.setenv(key, c.env[key])
            (tmp / "client.yaml").write_text(CLIENT)
            c.ok("apply", "-f", str(KUBE_DNS), "-f", str(tmp / "client.yaml"))
            yield c
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def dns_pod_ip(c: Cluster) -> str:
    pods = Kubelet(c.lab).list_pods("kube-system")
    assert len(pods) == 1 and pods[0]["status"]["phase"] == "Running"
    return str(pods[0]["status"]["podIP"])


def lookup(c: Cluster, name: str, *extra: str, pod: str = "client",
           namespace: str = "dnstest", timeout: str = "2") -> tuple[int, str]:
    """The lookup tool run in a pod, as `cilia exec` runs it (the pod's resolv.conf
    bind-mounted), from this process to save a CLI start per lookup."""
    res = exec_in_pod(pod, [PY, "-m", "services.dns", "lookup", name, "--timeout", timeout,
                            *extra], namespace=namespace, lab=c.lab, capture=True, timeout=30)
    return res.returncode, res.stdout.decode().strip()


def cluster_ip(c: Cluster, ref: str) -> str:
    rows = [r for r in c.json("service", "list") if r["service"] == ref and r["type"] ==
            "ClusterIP"]
    assert rows, f"no ClusterIP for {ref}"
    return str(rows[0]["frontend"].split(":")[0])


def test_pod_resolves_services_through_the_kube_dns_pod(lab: Cluster) -> None:
    server = dns_pod_ip(lab)
    web_ip = cluster_ip(lab, "dnstest/web")
    lab.wait("web in DNS", lambda: lookup(lab, "web.dnstest.svc.cluster.local",
                                          "--server", server) == (0, web_ip))
    assert lookup(lab, "kube-dns.kube-system.svc.cluster.local", "--server", server) == (
        0, "10.96.0.10")
    assert lookup(lab, "web.dnstest.svc.cluster.local", "--server", server, "--tcp") == (
        0, web_ip)
    assert lookup(lab, "external.cilia.test", "--server", server) == (0, "203.0.113.10")
    assert lookup(lab, "nothing.dnstest.svc.cluster.local", "--server", server) == (
        2, "NXDOMAIN")


def test_headless_service_answers_its_pods(lab: Cluster) -> None:
    client = Kubelet(lab.lab).get_pod("dnstest", "client")
    assert client is not None
    lab.wait("headless service in DNS",
             lambda: lookup(lab, "direct") == (0, client["status"]["podIP"]))


def test_dns_listens_in_the_pod_netns_only(lab: Cluster) -> None:
    import os

    pod = Kubelet(lab.lab).list_pods("kube-system")[0]
    pid = next(int(s["pid"]) for s in lab.json("status")["services"] if s["service"] == "dns")
    # the process stays in the root netns (for the bus) ...
    assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
    # ... and its port 53 sockets are in the pod's netns, not in the root netns
    in_pod = lab.ok("exec", pod["metadata"]["name"], "-n", "kube-system", "--", "ss", "-Hlntup",
                    "sport = :53")
    assert in_pod.count(f"pid={pid},") == 2, in_pod      # UDP and TCP
    root = subprocess.run(["ss", "-Hlntup"], capture_output=True, text=True, check=True).stdout
    assert f"pid={pid}," not in root


def test_exec_sees_the_pod_resolv_conf(lab: Cluster) -> None:
    out = lab.ok("exec", "client", "-n", "dnstest", "--", "cat", "/etc/resolv.conf")
    assert "nameserver 10.96.0.10" in out
    assert "search dnstest.svc.cluster.local svc.cluster.local cluster.local" in out
    assert "nameserver 10.96.0.10" not in Path("/etc/resolv.conf").read_text()


def test_dns_status_heartbeat(lab: Cluster) -> None:
    replies = [s for s in lab.json("status")["services"] if s["service"] == "dns"]
    pod = Kubelet(lab.lab).list_pods("kube-system")[0]["metadata"]["name"]
    assert [r["replica"] for r in replies] == [f"kube-system/{pod}"]
    assert replies[0]["state"] == "ok" and replies[0]["stats"]["names"] >= 2


def test_short_names_through_resolv_conf_and_the_cluster_ip(lab: Cluster) -> None:
    web_ip = cluster_ip(lab, "dnstest/web")
    # resolv.conf: nameserver 10.96.0.10 (translated to the kube-dns pod), search list
    lab.wait("web via the ClusterIP", lambda: lookup(lab, "web") == (0, web_ip))
    assert lookup(lab, "web.dnstest") == (0, web_ip)
    assert lookup(lab, "kube-dns.kube-system") == (0, "10.96.0.10")
    assert lookup(lab, "web", "--tcp") == (0, web_ip)
    assert lookup(lab, "absent")[0] == 2


SEED_POLICY = REPO / "examples" / "policies" / "seed-backend-egress-policy.yaml"
BACKEND = """
apiVersion: v1
kind: Namespace
metadata: {name: production}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: production, labels: {app: backend}}
spec:
  containers: [{name: c, image: cilia/workload, ports: [{containerPort: 8080}]}]
"""


def test_seed_egress_policy_allows_dns_over_udp_only(lab: Cluster, tmp_path: Path) -> None:
    (tmp_path / "backend.yaml").write_text(BACKEND)
    lab.ok("apply", "-f", str(tmp_path / "backend.yaml"))
    lab.ok("apply", "-f", str(SEED_POLICY))
    lab.settle()

    def ask(*extra: str) -> tuple[int, str]:
        return lookup(lab, "web.dnstest", *extra, pod="backend", namespace="production",
                      timeout="1")

    web_ip = cluster_ip(lab, "dnstest/web")
    assert ask() == (0, web_ip)                       # UDP 53 to kube-dns: allowed
    assert ask("--tcp")[0] == 1                       # TCP 53 is not in the policy: dropped
    drops = [f for f in lab.json("observe", "--verdict", "DROPPED", "--last", "500")
             if f.get("dst_port") == 53 and f.get("src_ip") == backend_ip(lab)]
    assert drops, "the TCP DNS drop is not in the flow events"


def backend_ip(lab: Cluster) -> str:
    pod = Kubelet(lab.lab).get_pod("production", "backend")
    assert pod is not None
    return str(pod["status"]["podIP"])


def curl(c: Cluster, url: str) -> tuple[int, str]:
    """curl from the client pod (names resolved by the pod's resolv.conf: kube-dns)."""
    res = exec_in_pod("client", ["curl", "-s", "-m", "3", "-w", " %{http_code}", url],
                      namespace="dnstest", lab=c.lab, capture=True, timeout=30)
    return res.returncode, " ".join(res.stdout.decode().split())


def test_the_labs_world_names_resolve_and_answer(lab: Cluster) -> None:
    server = dns_pod_ip(lab)
    # the defaults every lab has, and the names this lab was given
    assert lookup(lab, "api.example.com", "--server", server) == (0, "203.0.113.20")
    code, out = lookup(lab, "shop.example.net", "--server", server)
    assert code == 0 and sorted(out.split()) == ["198.51.100.7", "198.51.100.8"]
    assert lookup(lab, "x.img.example.net", "--server", server) == (0, "203.0.113.77")
    # a CNAME chain ends at the addresses of its last name; TCP too
    code, out = lookup(lab, "www.shop.example.net", "--server", server, "--tcp")
    assert code == 0 and sorted(out.split()) == ["198.51.100.7", "198.51.100.8"]
    assert lookup(lab, "logo.example.com", "--server", server) == (0, "203.0.113.77")
    assert lookup(lab, "nothing.example.net", "--server", server) == (2, "NXDOMAIN")
    # the external host answers on every address a name has, reached by name from a pod
    for url in ("http://api.example.com/", "http://www.shop.example.net/",
                "http://logo.example.com/", "http://198.51.100.8/"):
        assert curl(lab, url) == (0, "external 200"), url
    assert curl(lab, "http://nothing.example.net/")[0] == 6     # curl: could not resolve


def test_lab_up_refuses_a_bad_external_name_whole(lab: Cluster) -> None:
    res = lab.cilia("lab", "up", "--name", "bad1", "--nodes", "1",
                    "--external-name", "api.example.com=8.8.8.8")
    assert res.returncode != 0
    assert "api.example.com=8.8.8.8" in res.stderr and "outside the lab's internet" in res.stderr
    assert "bad1" not in lab.ok("lab", "status")
