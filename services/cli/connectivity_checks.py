"""``cilia connectivity test``: what it deploys, the scenarios and their checks (pure).

The test namespace ``cilia-test`` holds two clients and two echo servers: ``client``,
``client2`` and ``echo-same`` on the first node, ``echo-other`` on the second (on the first when
the lab has one node; the cross-node scenario is then skipped, and NodePort checks use the one
node). ``echo-same`` and
``echo-other`` are NodePort Services. Scenarios follow ``cilium connectivity test``: each is a
list of checks, each check a real connection (or DNS lookup) that must pass or must be dropped,
some under a policy applied for that scenario only.

Check targets are symbolic (``pod:echo-same``, ``svc:echo-other``, ``nodeport:1:echo-same``,
``world:0``, a DNS name) and resolved against the deployed :class:`Env` at run time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.world import EXTERNAL_DOMAIN, WORLD_IPS

NAMESPACE = "cilia-test"
ECHO_PORT = 8080            # the echo servers' port (HTTP + UDP echo) and their Services'
ECHO_OTHER_PORT = 8081      # a second port the echo servers serve, never allowed by L4 rules
EXTERNAL_PORT = 80          # the lab's external host serves HTTP here on every world address
EXTERNAL = "external"       # the source of checks made from the lab's external host
EXTERNAL_NAME = "external.cilia.test"
MISSING_NAME = "no-such-service"
CLIENT_LABELS = {"app": "client", "kind": "client"}
CLIENT2_LABELS = {"app": "client2", "kind": "client"}
PASS, DROP, NXDOMAIN = "pass", "drop", "nxdomain"
CONNECT, LOOKUP, HTTP = "connect", "lookup", "http"
EXTERNAL_BODY = "external"  # what the lab's external host answers over HTTP (pods: their name)

# pod name -> (labels, ports, node index)
PODS: dict[str, tuple[dict[str, str], tuple[int, ...], int]] = {
    "client": (CLIENT_LABELS, (), 0),
    "client2": (CLIENT2_LABELS, (), 0),
    "echo-same": ({"app": "echo-same", "kind": "echo"}, (ECHO_PORT, ECHO_OTHER_PORT), 0),
    "echo-other": ({"app": "echo-other", "kind": "echo"}, (ECHO_PORT, ECHO_OTHER_PORT), 1),
}
SERVICES = ("echo-same", "echo-other")


@dataclass(frozen=True)
class Check:
    """One connection or lookup.

    Attributes:
        src: the pod it is made from, or :data:`EXTERNAL`.
        target: ``pod:NAME``, ``svc:NAME``, ``nodeport:NODE:NAME``, ``world:I``, ``name:HOST``
            (connect to a DNS name) or, for lookups, the name looked up.
        expect: :data:`PASS`, :data:`DROP` or (lookups) :data:`NXDOMAIN`.
        kind: :data:`CONNECT` (TCP handshake or UDP echo), :data:`HTTP` (GET, the body names
            the server that answered) or :data:`LOOKUP`.
        want: lookups: the symbolic target whose address the answer must be; HTTP: the body
            (the pod name of the backend that must answer).
    """

    src: str
    target: str
    port: int = ECHO_PORT
    expect: str = PASS
    udp: bool = False
    kind: str = CONNECT
    want: str = ""

    @property
    def node(self) -> int:
        """The node index a NodePort target names (0 for every other target)."""
        return int(self.target.split(":")[1]) if self.target.startswith("nodeport:") else 0

    @property
    def label(self) -> str:
        """How the check is shown: ``client -> pod:echo-same:8080/TCP``."""
        if self.kind == LOOKUP:
            return f"{self.src} -> lookup {self.target}"
        # a NodePort target's port is the Service's node port, known once deployed
        port = "" if self.target.startswith("nodeport:") else f":{self.port}"
        if self.kind == HTTP:
            return f"{self.src} -> GET http://{self.target}{port}/"
        proto = "UDP" if self.udp else "TCP"
        return f"{self.src} -> {self.target}{port}/{proto}"


@dataclass(frozen=True)
class Scenario:
    name: str
    checks: tuple[Check, ...]
    policies: tuple[dict[str, Any], ...] = ()
    min_nodes: int = 1


@dataclass
class Env:
    """What the deployed test namespace and the lab look like (addresses, ports)."""

    pod_ips: dict[str, str]
    cluster_ips: dict[str, str]
    node_ports: dict[str, int]
    node_ips: list[str]
    world_ips: list[str]
    nodes: int = field(default=1)

    def address(self, target: str) -> str:
        """The IP (or DNS name) a symbolic target designates.

        Raises:
            KeyError: the target is unknown (its Service has no ClusterIP, ...).
        """
        kind, _, rest = target.partition(":")
        if kind == "pod":
            return self.pod_ips[rest]
        if kind == "svc":
            return self.cluster_ips[rest]
        if kind == "nodeport":
            node, _, _svc = rest.partition(":")
            return self.node_ips[int(node)]
        if kind == "world":
            return self.world_ips[int(rest)]
        if kind == "name":
            return rest
        raise KeyError(target)

    def port(self, check: Check) -> int:
        """The port a check connects to (a NodePort target: the Service's node port)."""
        if check.target.startswith("nodeport:"):
            return self.node_ports[check.target.rsplit(":", 1)[1]]
        return check.port


def _meta(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if labels:
        meta["labels"] = dict(labels)
    return meta


def objects(node_names: Sequence[str]) -> list[dict[str, Any]]:
    """The namespace, pods and Services of the test, in apply order."""
    out: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace",
                                  "metadata": {"name": NAMESPACE}}]
    for name, (labels, ports, node) in PODS.items():
        container: dict[str, Any] = {"name": name, "image": "cilia/workload"}
        if ports:
            container["ports"] = [{"containerPort": p, "protocol": "TCP"} for p in ports]
        out.append({"apiVersion": "v1", "kind": "Pod", "metadata": _meta(name, labels),
                    "spec": {"nodeName": node_names[min(node, len(node_names) - 1)],
                             "containers": [container]}})
    for name in SERVICES:
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": _meta(name),
                    "spec": {"type": "NodePort", "selector": {"app": name},
                             "ports": [{"name": "http", "port": ECHO_PORT, "protocol": "TCP",
                                        "targetPort": ECHO_PORT}]}})
    return out


def _cnp(name: str, selector: dict[str, str], **rules: Any) -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": _meta(name),
            "spec": {"endpointSelector": {"matchLabels": selector} if selector else {},
                     **rules}}


def _l4(port: int, proto: str = "TCP") -> list[dict[str, Any]]:
    return [{"ports": [{"port": str(port), "protocol": proto}]}]


def _to(labels: dict[str, str]) -> list[dict[str, Any]]:
    return [{"matchLabels": labels}]


# Cilium's to-fqdns and dns-only policies: DNS to kube-dns, every name allowed by the DNS rule
# (the node's DNS proxy sees each query), and for to-fqdns one name's addresses besides.
TO_KUBE_DNS = {"toEndpoints": _to({"k8s:io.kubernetes.pod.namespace": "kube-system",
                                   "k8s:k8s-app": "kube-dns"}),
               "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}],
                            "rules": {"dns": [{"matchPattern": "*"}]}}]}


C = Check
DNS_CHECKS = (
    C("client", "echo-same", kind=LOOKUP, want="svc:echo-same"),
    C("client", f"echo-other.{NAMESPACE}.svc.cluster.local", kind=LOOKUP, want="svc:echo-other"),
    C("client", EXTERNAL_NAME, kind=LOOKUP, want="world:0"),
    C("client", MISSING_NAME, kind=LOOKUP, expect=NXDOMAIN),
    C("client", "name:echo-other", ECHO_PORT),
)

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("pod-to-pod-same-node", (C("client", "pod:echo-same"),
                                      C("client", "pod:echo-same", udp=True))),
    Scenario("pod-to-pod-cross-node", (C("client", "pod:echo-other"),
                                       C("client", "pod:echo-other", udp=True)), min_nodes=2),
    Scenario("pod-to-service", (C("client", "svc:echo-same", kind=HTTP, want="echo-same"),
                                C("client", "svc:echo-other", kind=HTTP, want="echo-other"))),
    Scenario("pod-to-nodeport", (C("client", "nodeport:0:echo-other", kind=HTTP,
                                   want="echo-other"),
                                 C("client", "nodeport:1:echo-same", kind=HTTP,
                                   want="echo-same"))),
    Scenario("pod-to-external", (C("client", "world:0", EXTERNAL_PORT, kind=HTTP,
                                   want=EXTERNAL_BODY),
                                 C("client", f"name:{EXTERNAL_NAME}", EXTERNAL_PORT, kind=HTTP,
                                   want=EXTERNAL_BODY))),
    Scenario("external-to-nodeport", (C(EXTERNAL, "nodeport:0:echo-same", kind=HTTP,
                                        want="echo-same"),
                                      C(EXTERNAL, "nodeport:1:echo-other", kind=HTTP,
                                        want="echo-other"))),
    Scenario("dns-resolution", DNS_CHECKS),
    Scenario("all-ingress-deny",
             (C("client", "pod:echo-same", expect=DROP), C("client", "pod:echo-other",
                                                             expect=DROP),
              C("client", "world:0", EXTERNAL_PORT)),
             (_cnp("all-ingress-deny", {}, ingress=[{}]),)),
    Scenario("all-egress-deny",
             (C("client", "pod:echo-same", expect=DROP),
              C("client", "world:0", EXTERNAL_PORT, expect=DROP),
              # ingress stays open, and replies are not egress: the world still gets in
              C(EXTERNAL, "nodeport:0:echo-same")),
             (_cnp("all-egress-deny", {}, egress=[{}]),)),
    Scenario("client-egress",
             (C("client", "pod:echo-same"), C("client", "svc:echo-other"),
              C("client", "pod:echo-same", ECHO_OTHER_PORT, expect=DROP),
              C("client", "world:0", EXTERNAL_PORT, expect=DROP)),
             (_cnp("client-egress-l4", CLIENT_LABELS,
                   egress=[{"toEndpoints": _to({"kind": "echo"}),
                            "toPorts": _l4(ECHO_PORT)}]),)),
    Scenario("echo-ingress",
             (C("client", "pod:echo-same"), C("client", "svc:echo-other"),
              C("client2", "pod:echo-same", expect=DROP),
              C("client", "pod:echo-same", ECHO_OTHER_PORT, expect=DROP)),
             (_cnp("echo-ingress-from-client", {"kind": "echo"},
                   ingress=[{"fromEndpoints": _to({"app": "client"}),
                             "toPorts": _l4(ECHO_PORT)}]),)),
    Scenario("to-entities-world",
             (C("client", "world:0", EXTERNAL_PORT),
              C("client", "pod:echo-same", expect=DROP)),
             (_cnp("client-egress-to-world", CLIENT_LABELS,
                   egress=[{"toEntities": ["world"]}]),)),
    Scenario("to-cidr-external",
             (C("client", "world:0", EXTERNAL_PORT),
              C("client", "world:1", EXTERNAL_PORT, expect=DROP)),
             (_cnp("client-egress-to-cidr", CLIENT_LABELS,
                   egress=[{"toCIDR": [f"{WORLD_IPS[0]}/32"]}]),)),
    Scenario("to-fqdns",
             (C("client", f"name:{EXTERNAL_NAME}", EXTERNAL_PORT, kind=HTTP,
                want=EXTERNAL_BODY),
              # another name resolves (the DNS rule allows it), its address stays dropped
              C("client", f"world1.{EXTERNAL_DOMAIN}", kind=LOOKUP, want="world:1"),
              C("client", "world:1", EXTERNAL_PORT, expect=DROP)),
             (_cnp("client-egress-to-fqdns", CLIENT_LABELS,
                   egress=[TO_KUBE_DNS, {"toFQDNs": [{"matchName": EXTERNAL_NAME}],
                                         "toPorts": _l4(EXTERNAL_PORT)}]),)),
    Scenario("dns-only",
             (C("client", EXTERNAL_NAME, kind=LOOKUP, want="world:0"),
              C("client", "world:0", EXTERNAL_PORT, expect=DROP),
              C("client", "pod:echo-same", expect=DROP)),
             (_cnp("client-egress-only-dns", CLIENT_LABELS, egress=[TO_KUBE_DNS]),)),
    Scenario("client-egress-to-echo-deny",
             (C("client", "pod:echo-other", expect=DROP), C("client", "pod:echo-same"),
              C("client", "world:0", EXTERNAL_PORT)),
             (_cnp("client-egress-to-echo-deny", CLIENT_LABELS,
                   egress=[{"toEntities": ["all"]}],
                   egressDeny=[{"toEndpoints": _to({"app": "echo-other"}),
                                "toPorts": _l4(ECHO_PORT)}]),)),
)


def select(scenarios: Sequence[Scenario], patterns: Sequence[str]) -> list[Scenario]:
    """Scenarios whose name matches any pattern (regular expressions, searched; a leading
    ``!`` excludes), like ``cilium connectivity test --test``.

    Raises:
        ValueError: a pattern is not a valid regular expression.
    """
    if not patterns:
        return list(scenarios)
    include = [p for p in patterns if not p.startswith("!")]
    exclude = [p[1:] for p in patterns if p.startswith("!")]
    try:
        inc = [re.compile(p) for p in include]
        exc = [re.compile(p) for p in exclude]
    except re.error as err:
        raise ValueError(f"--test: invalid pattern: {err}") from err
    return [s for s in scenarios
            if (not inc or any(r.search(s.name) for r in inc))
            and not any(r.search(s.name) for r in exc)]


@dataclass
class CheckResult:
    check: Check
    ok: bool
    outcome: str          # OK / timeout / refused / NXDOMAIN / addresses / error: ...
    detail: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        c = self.check
        return {"check": c.label, "src": c.src, "target": c.target, "kind": c.kind,
                "expect": c.expect, "ok": self.ok, "outcome": self.outcome,
                "detail": self.detail, "seconds": round(self.seconds, 3)}


@dataclass
class ScenarioResult:
    name: str
    checks: list[CheckResult]
    seconds: float
    skipped: str = ""     # why it was skipped ("" when it ran)
    error: str = ""       # a failure outside the checks (policy not realized, ...)

    @property
    def ok(self) -> bool:
        return not self.error and all(c.ok for c in self.checks)

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else ("pass" if self.ok else "fail")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "result": self.status, "seconds": round(self.seconds, 3),
                "skipped": self.skipped, "error": self.error,
                "checks": [c.to_json() for c in self.checks]}


def summary(results: Sequence[ScenarioResult]) -> dict[str, Any]:
    """Counts of a run (what ``-o json`` prints as ``summary``)."""
    ran = [r for r in results if not r.skipped]
    failed = [r for r in ran if not r.ok]
    checks = [c for r in ran for c in r.checks]
    return {"tests": len(results), "passed": len(ran) - len(failed), "failed": len(failed),
            "skipped": len(results) - len(ran), "checks": len(checks),
            "failed_checks": sum(not c.ok for c in checks),
            "failed_tests": [r.name for r in failed]}


def render_result(r: ScenarioResult) -> list[str]:
    """The line(s) printed when a scenario ends."""
    if r.skipped:
        return [f"⏭️  [{r.name}] skipped: {r.skipped}"]
    n = len(r.checks)
    if r.ok:
        return [f"✅ [{r.name}] {n} check{'s' if n != 1 else ''}, {r.seconds:.2f}s"]
    bad = [c for c in r.checks if not c.ok]
    lines = [f"❌ [{r.name}] {len(bad)}/{n} checks failed, {r.seconds:.2f}s"]
    if r.error:
        lines.append(f"   ❌ {r.error}")
    for c in bad:
        want = {PASS: "expected to pass", DROP: "expected to be dropped",
                NXDOMAIN: "expected NXDOMAIN"}[c.check.expect]
        lines.append(f"   ❌ {c.check.label}: {want}, got {c.outcome}"
                     + (f" ({c.detail})" if c.detail else ""))
    return lines


def render_summary(results: Sequence[ScenarioResult]) -> list[str]:
    """The report printed at the end of a run."""
    s = summary(results)
    lines = ["", "📋 Test Report"]
    if s["failed"]:
        lines.append(f"❌ {s['failed']}/{s['tests']} tests failed "
                     f"({s['failed_checks']}/{s['checks']} checks), {s['skipped']} skipped")
        lines += [f"   {name}" for name in s["failed_tests"]]
    else:
        lines.append(f"✅ All {s['passed']} tests ({s['checks']} checks) successful, "
                     f"{s['skipped']} tests skipped.")
    return lines
