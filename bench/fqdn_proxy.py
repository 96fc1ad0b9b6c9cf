"""The DNS proxy and toFQDNs: what the proxy adds to a lookup, how long an answer waits for the
maps, and whether the first connection after a lookup is ever dropped.

Run: .venv/bin/python -m bench.fqdn_proxy [--lookups 1000] [--latency 500]

One 1-node cluster with kube-dns, the lab's world given ``--addresses`` extra addresses (the
external host answers HTTP on each), and four pods:

- ``plain`` (no policy: its DNS goes straight to kube-dns) and ``proxied`` (a DNS rule
  ``matchPattern: "*"``: its DNS goes through the node's proxy) ask kube-dns's ClusterIP for
  ``kube-dns.kube-system.svc.cluster.local`` (a name no toFQDNs selects: nothing to learn),
  alternately, ``--latency`` times each. The proxy's cost is the difference.
- ``fqdn`` (toFQDNs ``matchName: moving.bench.test`` on port 80) asks the bench's own DNS
  server (in the ``fakedns`` pod) for that name ``--lookups`` times; each answer is another
  address of the pool (TTL 1 s, so an address is forgotten before it comes round again and
  every lookup makes the node learn it anew). Per lookup: from the moment the server sent its
  answer to the moment the pod got it (the proxy releases it once the agent has written the
  address's ipcache and policy entries to the kernel maps: an upper bound of answer -> kernel
  entry), and then one TCP connection to the address, at once: answered or dropped.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import time
from typing import Any

import dns.message
import dns.rdatatype

from bench._common import summary_ms, write
from services.common.clusterdns import KUBE_DNS_IP
from services.lab import Kubelet
from tests.support.cluster import Cluster, temp_cluster
from tests.support.fakedns import FakeDns
from tests.support.fqdn import fqdn_policy, node_pod, write_yaml
from tests.support.netlab import in_netns
from tests.support.procs import REPO

KUBE_DNS = REPO / "examples" / "kube-dns" / "kube-dns.yaml"
NAME = "moving.bench.test"
TTL_S = 1
CONNECT_TIMEOUT_S = 1.0
POOL = [str(ipaddress.IPv4Address("203.0.113.100") + i) for i in range(150)] + \
    [str(ipaddress.IPv4Address("198.51.100.100") + i) for i in range(150)]

def _objects(node: str) -> list[dict[str, Any]]:
    return [*(node_pod(app, app, node) for app in ("plain", "proxied", "fqdn", "fakedns")),
            fqdn_policy("proxied", "proxied"),
            fqdn_policy("fqdn", "fqdn", [NAME], dns_server={"app": "fakedns"})]


def _udp_client(netns: str) -> socket.socket:
    sock = in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.settimeout(3)
    return sock


def _ask(sock: socket.socket, server: str, name: str) -> tuple[dns.message.Message, float]:
    query = dns.message.make_query(name, dns.rdatatype.A)
    t0 = time.perf_counter()
    sock.sendto(query.to_wire(), (server, 53))
    while True:
        wire, _ = sock.recvfrom(4096)
        answer = dns.message.from_wire(wire)
        if answer.id == query.id:
            return answer, t0


def latency(c: Cluster, rounds: int) -> dict[str, Any]:
    kubelet = Kubelet(c.lab)
    socks = {app: _udp_client(kubelet.pod_netns("default", app)) for app in ("plain", "proxied")}
    samples: dict[str, list[float]] = {"plain": [], "proxied": []}
    name = "kube-dns.kube-system.svc.cluster.local"
    for i in range(rounds + 20):
        for app, sock in socks.items():
            answer, t0 = _ask(sock, KUBE_DNS_IP, name)
            took = time.perf_counter() - t0
            assert answer.answer, f"{app}: no answer"
            if i >= 20:                 # warm-up left out
                samples[app].append(took)
    plain, proxied = summary_ms(samples["plain"]), summary_ms(samples["proxied"])
    return {"no_dns_rule": plain, "through_proxy": proxied,
            "added_p50_ms": round(proxied["p50_ms"] - plain["p50_ms"], 3),
            "added_p99_ms": round(proxied["p99_ms"] - plain["p99_ms"], 3)}


def first_connections(c: Cluster, lookups: int) -> dict[str, Any]:
    kubelet = Kubelet(c.lab)
    server = kubelet.get_pod("default", "fakedns")["status"]["podIP"]   # type: ignore[index]
    fake = FakeDns(kubelet.pod_netns("default", "fakedns"), server, NAME, POOL[0], TTL_S)
    netns = kubelet.pod_netns("default", "fqdn")
    sock = _udp_client(netns)
    released: list[float] = []
    dropped: list[str] = []
    try:
        for i in range(lookups):
            ip = POOL[i % len(POOL)]
            fake.address = ip
            answer, _ = _ask(sock, server, NAME)
            got = time.perf_counter()
            got_ip = answer.answer[0][0].address if answer.answer else "(none)"
            assert got_ip == ip, f"lookup {i}: {answer.rcode()} {got_ip}, wanted {ip}"
            released.append(got - fake.answered[answer.id])
            conn = in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            conn.settimeout(CONNECT_TIMEOUT_S)
            try:
                conn.connect((ip, 80))
            except OSError:
                dropped.append(ip)
            finally:
                conn.close()
    finally:
        fake.close()
        sock.close()
    return {"lookups": lookups, "answer_to_release": summary_ms(released),
            "first_connections_dropped": len(dropped), "dropped": dropped[:20]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--latency", type=int, default=500)
    args = parser.parse_args()
    world = [a for i, ip in enumerate(POOL) for a in ("--external-name", f"b{i}.bench.test={ip}")]
    with temp_cluster(nodes=1, prefix="cilia-bench-fqdn-", lab_args=world) as c:
        for key in ("CILIA_STATE_DIR", "CILIA_RUN_DIR"):    # this process reads the lab
            os.environ[key] = c.env[key]
        objects = write_yaml(c.state_dir.parent / "objects.yaml", _objects(f"{c.lab}-node1"))
        c.ok("apply", "-f", str(KUBE_DNS), "-f", str(objects))
        c.settle()
        lat = latency(c, args.latency)
        first = first_connections(c, args.lookups)
    out = {"lookup_latency": lat, **first}
    print(f"DNS lookup p50/p99: no DNS rule {lat['no_dns_rule']['p50_ms']}/"
          f"{lat['no_dns_rule']['p99_ms']} ms, through the proxy "
          f"{lat['through_proxy']['p50_ms']}/{lat['through_proxy']['p99_ms']} ms "
          f"(added at p50: {lat['added_p50_ms']} ms)")
    rel = first["answer_to_release"]
    print(f"upstream answer -> released once the maps allow it: p50 {rel['p50_ms']} ms, "
          f"p99 {rel['p99_ms']} ms")
    print(f"first connections dropped: {first['first_connections_dropped']} of {args.lookups}")
    write("fqdn_proxy", out)


if __name__ == "__main__":
    main()
