"""toFQDNs and DNS rules on real packets: the seed's Exercise 2, wildcards, CNAME chains, TCP
DNS, a DNS rule that narrows names (REFUSED), pods on two nodes, a name whose address moves,
and the DNS proxy restarting while a pod resolves.

Pods keep asking kube-dns's ClusterIP (or any server they choose); the datapath hands their
DNS to the node's proxy, which answers only once the node's maps allow what the name resolved
to, so the first connection after a lookup is never dropped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.lab import Kubelet, exec_in_pod
from tests.support.cluster import Cluster, cluster
from tests.support.fakedns import FakeDns
from tests.support.fqdn import EXERCISE_2, fqdn_policy, node_pod, write_yaml
from tests.support.procs import REPO

KUBE_DNS = REPO / "examples" / "kube-dns" / "kube-dns.yaml"
PY = sys.executable
GRACE_S = 2             # CILIA_TOFQDNS_GRACE_S of this lab's agents
MOVING_TTL_S = 2        # the TTL the test's own DNS server gives
CURL_TIMEOUT = 28       # curl's exit code when the connection is dropped
CURL_NO_HOST = 6        # ... when the name does not resolve

NARROW = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: narrow-dns, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: narrow}}
  egress:
    - toEndpoints:
        - matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s:k8s-app: kube-dns}
      toPorts:
        - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
          rules:
            dns:
              - matchPattern: "**.cluster.local"
              - matchName: api.example.com
              - matchName: assets.example.com
              - matchPattern: "*.cdn.example.net"
    - toFQDNs:
        - matchName: api.example.com
        - matchName: assets.example.com
        - matchPattern: "*.cdn.example.net"
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
"""

@pytest.fixture(scope="module")
def lab() -> Iterator[Cluster]:
    tmp = Path(tempfile.mkdtemp(prefix="cilia-fqdn-"))
    try:
        with cluster(tmp, nodes=2, extra_env={"CILIA_TOFQDNS_GRACE_S": str(GRACE_S)}) as c, \
                pytest.MonkeyPatch.context() as mp:
            for key in ("CILIA_STATE_DIR", "CILIA_RUN_DIR"):   # this process reads the lab
                mp.setenv(key, c.env[key])
            n1, n2 = f"{c.lab}-node1", f"{c.lab}-node2"
            pods = [node_pod("ext-a", "external-client", n1),
                    node_pod("ext-b", "external-client", n2), node_pod("narrow", "narrow", n1),
                    node_pod("mover", "mover", n2), node_pod("fakedns", "fakedns", n1),
                    node_pod("restarter", "restarter", n1)]
            policies = [fqdn_policy("mover", "mover", ["moving.example.org"],
                                    dns_server={"app": "fakedns"}),
                        fqdn_policy("restart", "restarter", ["world3.cilia.test"])]
            c.ok("apply", "-f", str(KUBE_DNS), "-f", str(write_yaml(tmp / "pods.yaml", pods)))
            (tmp / "narrow.yaml").write_text(NARROW)
            c.ok("apply", "-f", str(EXERCISE_2), "-f", str(tmp / "narrow.yaml"), "-f",
                 str(write_yaml(tmp / "policies.yaml", policies)))
            c.settle()
            yield c
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def curl(c: Cluster, pod_name: str, url: str, timeout: int = 3) -> tuple[int, str]:
    """curl from a pod (names resolved through the pod's resolv.conf: kube-dns)."""
    res = exec_in_pod(pod_name, ["curl", "-s", "-m", str(timeout), "-w", " %{http_code}", url],
                      lab=c.lab, capture=True, timeout=60)
    return res.returncode, " ".join(res.stdout.decode().split())


def lookup(c: Cluster, pod_name: str, name: str, *extra: str) -> tuple[int, str]:
    res = exec_in_pod(pod_name, [PY, "-m", "services.dns", "lookup", name, "--timeout", "3",
                                 *extra], lab=c.lab, capture=True, timeout=60)
    return res.returncode, res.stdout.decode().strip() + res.stderr.decode().strip()


def seen(c: Cluster, what: str, pod_name: str, check: Callable[[dict[str, Any]], bool],
         dns_only: bool = True) -> None:
    """Wait until a flow of the pod passes ``check`` (flows reach observe in batches)."""
    args = ["observe", "--pod", f"default/{pod_name}", "--last", "500"]
    if dns_only:
        args += ["--type", "dns"]
    c.wait(what, lambda: any(check(f) for f in c.json(*args)), timeout=10)


def cache(c: Cluster, node: str | None = None) -> dict[tuple[str, str], dict[str, object]]:
    args = ["--node", node] if node else []
    return {(r["fqdn"], r["ip"]): r for r in c.json("fqdn", "cache", "list", *args)}


def test_exercise_2_reaches_api_example_com_and_nothing_else(lab: Cluster) -> None:
    assert curl(lab, "ext-a", "http://api.example.com/") == (0, "external 200")
    # what the node learned (for its TTL: 60 s for the lab's world names)
    rows = cache(lab, f"{lab.lab}-node1")
    assert ("api.example.com", "203.0.113.20") in rows
    assert "default/ext-a" in str(rows[("api.example.com", "203.0.113.20")]["endpoints"])
    # the name resolves (the DNS rule allows every name), the connection is dropped
    assert curl(lab, "ext-a", "http://www.example.com/")[0] == CURL_TIMEOUT
    # its address directly: dropped as well
    assert curl(lab, "ext-a", "http://203.0.113.21/")[0] == CURL_TIMEOUT
    # what the proxy saw and what the datapath dropped, in observe
    seen(lab, "the DNS answer in observe", "ext-a",
         lambda f: f["dns"]["query"] == "api.example.com" and f["verdict"] == "FORWARDED"
         and "203.0.113.20" in f["dns"]["ips"])
    seen(lab, "the drop in observe", "ext-a",
         lambda f: f["verdict"] == "DROPPED" and f["dst_ip"] == "203.0.113.21"
         and f["dst_port"] == 80, dns_only=False)


def test_replay_explains_an_fqdn_verdict_by_the_lookup_behind_it(lab: Cluster) -> None:
    assert curl(lab, "ext-a", "http://api.example.com/") == (0, "external 200")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
    time.sleep(1.1)
    doc = lab.json("replay", "explain", "--at", now, "--from", "default/ext-a",
                   "--to", "203.0.113.20", "--dport", "80/TCP")
    assert doc["verdict"] == "ALLOWED"
    [learned] = [x for x in doc["learned"] if x["node"] == f"{lab.lab}-node1"]
    assert (learned["name"], learned["address"], learned["held"]) == (
        "api.example.com", "203.0.113.20", True)
    assert "default/ext-a" in learned["endpoints"]
    assert learned["event"]["type"] == "fqdn.names"
    assert [r["rule"] for r in learned["rules"] if r["deciding"]] == [
        "CiliumNetworkPolicy/default/external-client-fqdn rule 0 egress[1]"]
    # the other name's address: nothing learned selects it
    other = lab.json("replay", "explain", "--at", now, "--from", "default/ext-a",
                     "--to", "203.0.113.21", "--dport", "80/TCP")
    assert other["verdict"] == "DENIED" and not other.get("learned")


def test_pods_on_two_nodes_under_one_fqdn_policy(lab: Cluster) -> None:
    assert curl(lab, "ext-b", "http://api.example.com/") == (0, "external 200")
    assert ("api.example.com", "203.0.113.20") in cache(lab, f"{lab.lab}-node2")
    assert curl(lab, "ext-b", "http://api.example.org/")[0] == CURL_TIMEOUT


def test_a_dns_rule_that_narrows_names_refuses_the_others(lab: Cluster) -> None:
    assert curl(lab, "narrow", "http://api.example.com/") == (0, "external 200")
    code, out = lookup(lab, "narrow", "www.example.com.")
    assert code != 0 and "REFUSED" in out, out
    assert curl(lab, "narrow", "http://www.example.com/")[0] == CURL_NO_HOST
    seen(lab, "the refused query in observe", "narrow",
         lambda f: f["dns"]["query"] == "www.example.com" and f["dns"]["rcode"] == "REFUSED"
         and f["verdict"] == "DROPPED")


def test_match_pattern_wildcards_and_cname_chains(lab: Cluster) -> None:
    # *.cdn.example.net selects what static.cdn.example.net resolves to
    assert curl(lab, "narrow", "http://static.cdn.example.net/") == (0, "external 200")
    # assets.example.com is a CNAME of static.cdn.example.net: the chain's first name selects
    assert curl(lab, "narrow", "http://assets.example.com/") == (0, "external 200")
    rows = cache(lab, f"{lab.lab}-node1")
    assert ("assets.example.com", "203.0.113.40") in rows
    assert ("static.cdn.example.net", "203.0.113.40") in rows
    selectors = lab.json("policy", "selectors")
    fqdn = {s["selector"]: s for s in selectors if s.get("fqdn")}
    assert "203.0.113.40" in fqdn["MatchPattern: *.cdn.example.net"]["ips"]


def test_tcp_dns_goes_through_the_proxy(lab: Cluster) -> None:
    assert lookup(lab, "narrow", "api.example.com.", "--tcp") == (0, "203.0.113.20")
    code, out = lookup(lab, "narrow", "www.example.com.", "--tcp")
    assert code != 0 and "REFUSED" in out, out
    seen(lab, "the TCP query in observe", "narrow",
         lambda f: f["proto_name"] == "TCP" and f["dns"]["query"] == "www.example.com")


def _blocked_since(lab: Cluster, pod_name: str, url: str, timeout: float) -> float:
    """Seconds until connections to ``url`` are dropped (polled; each probe is a new
    connection, and a closed one does not keep an address alive)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if curl(lab, pod_name, url, timeout=1)[0] == CURL_TIMEOUT:
            return time.monotonic() - start
        time.sleep(0.3)
    raise AssertionError(f"{url} still reachable after {timeout}s")


def test_a_name_whose_address_moves(lab: Cluster) -> None:
    kubelet = Kubelet(lab.lab)
    dns_pod = kubelet.get_pod("default", "fakedns")
    assert dns_pod is not None
    server_ip = dns_pod["status"]["podIP"]
    fake = FakeDns(kubelet.pod_netns("default", "fakedns"), server_ip, "moving.example.org",
                   "203.0.113.11", MOVING_TTL_S)
    try:
        assert curl(lab, "mover", "http://203.0.113.11/", timeout=1)[0] == CURL_TIMEOUT
        assert lookup(lab, "mover", "moving.example.org.", "--server", server_ip) == (
            0, "203.0.113.11")
        learned_at = time.monotonic()
        assert curl(lab, "mover", "http://203.0.113.11/") == (0, "external 200")
        fake.address = "203.0.113.12"
        assert lookup(lab, "mover", "moving.example.org.", "--server", server_ip) == (
            0, "203.0.113.12")
        # the new address is allowed at once, the old one until its TTL and grace ran out
        assert curl(lab, "mover", "http://203.0.113.12/") == (0, "external 200")
        assert {("moving.example.org", "203.0.113.11"),
                ("moving.example.org", "203.0.113.12")} <= set(cache(lab))
        _blocked_since(lab, "mover", "http://203.0.113.11/", 30)
        elapsed = time.monotonic() - learned_at
        assert elapsed >= MOVING_TTL_S + GRACE_S, elapsed
        assert ("moving.example.org", "203.0.113.11") not in cache(lab)
    finally:
        fake.close()


# The pod's system resolver (its resolv.conf), then one connection: exit 6 when the name does
# not resolve, 28 when the connection to the answer is dropped, 0 when it is answered.
RESOLVE_THEN_CONNECT = """
import socket, sys
try:
    ip = socket.gethostbyname(sys.argv[1])
except OSError:
    sys.exit(6)
try:
    socket.create_connection((ip, 80), timeout=2).close()
except OSError:
    sys.exit(28)
"""


def _agent(lab: Cluster, verb: str, node: str) -> None:
    code = f"import sys; from services.lab import {verb}; {verb}(sys.argv[1], sys.argv[2])"
    res = subprocess.run([PY, "-c", code, lab.lab, node], env=lab.env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_the_proxy_restarting_while_a_pod_resolves(lab: Cluster) -> None:
    """The node's agent (and its proxy) is down while the pod resolves a name it never asked
    before: its queries are dropped, never let past the proxy; once the agent is back the pod's
    retries succeed, and every answer it got was followed by a connection that went through
    (no answer was released before the maps allowed its address)."""
    node = f"{lab.lab}-node1"
    outcomes: list[int] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            res = exec_in_pod("restarter", [PY, "-c", RESOLVE_THEN_CONNECT, "world3.cilia.test"],
                              lab=lab.lab, capture=True, timeout=60)
            outcomes.append(res.returncode)
            time.sleep(0.2)

    worker = threading.Thread(target=client, daemon=True)
    _agent(lab, "stop_agent", node)
    try:
        worker.start()
        time.sleep(2.5)                 # the pod's first queries find no proxy
        _agent(lab, "start_agent", node)
        lab.wait("a lookup and connection after the restart", lambda: outcomes[-1:] == [0],
                 timeout=40)
    finally:
        stop.set()
        worker.join(timeout=30)
        if not outcomes:
            _agent(lab, "start_agent", node)
    # failures are failed lookups (6), never a released answer whose connection dropped (28)
    assert outcomes[0] == CURL_NO_HOST and outcomes[-1] == 0, outcomes
    assert CURL_TIMEOUT not in outcomes, outcomes
    # the datapath dropped the queries it had no proxy for (its flows outlive the agent)
    seen(lab, "queries dropped without a proxy", "restarter",
         lambda f: f["verdict"] == "DROPPED" and f["reason_name"] == "proxy lookup failed"
         and f["dst_port"] == 53, dns_only=False)
