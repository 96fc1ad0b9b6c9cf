"""The seed's three-tier example spread over two nodes, and its verdict matrix."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.nodeagent.agent import DRIFT_INTERVAL_ENV
from tests.support.cluster import Cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "three-tier"
NS = "production"
APPS = ("frontend", "backend", "database")


def backend_allows_frontend(name: str, port: int) -> str:
    """A CiliumNetworkPolicy (YAML) letting only the frontend reach the backend, on ``port``
    (TCP): every other ingress of the backend is then denied."""
    return f"""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: {name}
  namespace: {NS}
spec:
  endpointSelector:
    matchLabels:
      app: backend
  ingress:
    - fromEndpoints:
        - matchLabels:
            app: frontend
      toPorts:
        - ports:
            - port: "{port}"
              protocol: TCP
"""
PORTS = {"frontend": 80, "backend": 8080, "database": 5432}
PROBE_TIMEOUT = 1.0
PROBE_WORKERS = 4
# The tunnel tests remove ipcache entries behind the agents' backs on purpose
# (ipcache_without): the agents' drift check, which would put them back, waits longer than
# any test here.
NO_DRIFT_CHECK = {DRIFT_INTERVAL_ENV: "86400"}
# What the seed's Exercise 1 policy means for every pair (TCP to the target's port, and UDP
# where the target is open or the policy allows TCP only).
EXPECTED = {
    ("frontend", "backend", "tcp"): "OK",
    ("frontend", "database", "tcp"): "timeout",
    ("backend", "frontend", "tcp"): "OK",
    ("backend", "database", "tcp"): "OK",
    ("database", "frontend", "tcp"): "OK",
    ("database", "backend", "tcp"): "timeout",
    ("frontend", "backend", "udp"): "timeout",
    ("backend", "frontend", "udp"): "OK",
}


@dataclass(frozen=True)
class Placement:
    """Where the apps run: app -> (pod IP, node, identity)."""

    ips: dict[str, str]
    nodes: dict[str, str]
    identities: dict[str, int]


def deploy(lab: Cluster) -> Placement:
    """Apply the example's namespace and deployments; wait for identities."""
    lab.ok("apply", "-f", str(EXAMPLES / "00-namespace.yaml"), "-f",
           str(EXAMPLES / "deployments.yaml"))
    lab.wait("three endpoints with identities", lambda: len(
        [e for e in lab.endpoints() if e["identity"] >= 256]) == 3)
    return placement(lab)


def placement(lab: Cluster) -> Placement:
    eps: dict[str, dict[str, Any]] = {}
    for ep in lab.endpoints():
        for app in APPS:
            if f"k8s:app={app}" in ep["labels"]:
                eps[app] = ep
    return Placement({a: e["ipv4"] for a, e in eps.items()},
                     {a: e["node"] for a, e in eps.items()},
                     {a: e["identity"] for a, e in eps.items()})


def enforced(lab: Cluster, app: str) -> bool:
    return any(f"k8s:app={app}" in ep["labels"] and ep["ingress_enforcement"]
               for ep in lab.endpoints())


def apply_policy(lab: Cluster) -> None:
    lab.ok("apply", "-f", str(EXAMPLES / "policy.yaml"))
    lab.wait("policy enforced", lambda: enforced(lab, "backend") and enforced(lab, "database"))
    lab.settle()


def remove_policy(lab: Cluster) -> None:
    """Delete the example's policy (if it is there) and wait until the maps are open again."""
    lab.cilia("delete", "-f", str(EXAMPLES / "policy.yaml"))
    lab.wait("policy gone", lambda: not enforced(lab, "backend")
             and not enforced(lab, "database"))
    lab.settle()


def verdicts(lab: Cluster, where: Placement) -> dict[tuple[str, str, str], str]:
    """Probe every pair of :data:`EXPECTED` with a real connection from the source pod
    (probes run side by side: most of their time is the CLI starting and the timeouts)."""

    def probe(case: tuple[str, str, str]) -> str:
        src, dst, proto = case
        return lab.connect(f"deploy/{src}", NS, where.ips[dst], PORTS[dst],
                           timeout=PROBE_TIMEOUT, udp=proto == "udp")

    with ThreadPoolExecutor(max_workers=PROBE_WORKERS) as pool:
        return dict(zip(EXPECTED, pool.map(probe, EXPECTED), strict=True))
