"""toFQDNs test objects shared by the lab tests and the DNS proxy's bench: a workload pod on a
chosen node, and the policy Cilium users write (DNS to a server with a DNS rule allowing every
name, then ``toFQDNs`` on port 80)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from services.cli.connectivity_checks import TO_KUBE_DNS
from tests.support.procs import REPO

EXERCISE_2 = REPO / "examples" / "fqdn" / "policy.yaml"   # the seed's Exercise 2, as shipped


def node_pod(name: str, app: str, node: str, namespace: str = "default") -> dict[str, Any]:
    """A workload pod labelled ``app``, bound to ``node``."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "cilia/workload"}]}}


def fqdn_policy(name: str, app: str, fqdns: Sequence[str] = (),
                dns_server: dict[str, str] | None = None,
                dns_protocol: str = "UDP") -> dict[str, Any]:
    """app=``app`` may ask any name of kube-dns (or of the pods labelled ``dns_server``, over
    ``dns_protocol``) and reach, on port 80, what the names ``fqdns`` resolve to."""
    to_dns = TO_KUBE_DNS if dns_server is None else {
        "toEndpoints": [{"matchLabels": dns_server}],
        "toPorts": [{"ports": [{"port": "53", "protocol": dns_protocol}],
                     "rules": {"dns": [{"matchPattern": "*"}]}}]}
    egress: list[dict[str, Any]] = [to_dns]
    if fqdns:
        egress.append({"toFQDNs": [{"matchName": n} for n in fqdns],
                       "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]})
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"endpointSelector": {"matchLabels": {"app": app}}, "egress": egress}}


def write_yaml(path: Path, objs: Sequence[dict[str, Any]]) -> Path:
    """The objects as one multi-document YAML file, as `cilia apply -f` reads it."""
    path.write_text(yaml.safe_dump_all(objs, sort_keys=False))
    return path
