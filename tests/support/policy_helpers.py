"""Shared helpers of the policy tests: pod label sets as the identity service builds them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from services.common.identities import RESERVED, reserved_labels
from services.common.labels import Label, Labels
from services.common.policytypes import PROTO_TCP, Verdict
from services.policy import Repository, trace

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"


def pod(namespace: str = "production", ns_labels: dict[str, str] | None = None,
        sa: str = "default", **labels: str) -> Labels:
    """A pod identity's labels, shaped like ``services.identity.derive.pod_identity_labels``."""
    lbls = [Label("k8s", k.replace("__", "-"), v) for k, v in labels.items()]
    lbls.append(Label("k8s", "io.kubernetes.pod.namespace", namespace))
    lbls += [Label("k8s", "io.cilium.k8s.namespace.labels." + k, v)
             for k, v in (ns_labels or {}).items()]
    lbls.append(Label("k8s", "io.cilium.k8s.policy.serviceaccount", sa))
    lbls.append(Label("k8s", "io.cilium.k8s.policy.cluster", "default"))
    return Labels(lbls)


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def with_reserved(repo: Repository) -> Repository:
    """Tell the repository about every reserved identity (as the identity service does)."""
    for ident in RESERVED:
        repo.add_identity(ident, reserved_labels(ident))
    return repo


def build(policy_docs: list[dict[str, Any]], identities: dict[int, Labels]) -> Repository:
    repo = with_reserved(Repository())
    for ident, lbls in identities.items():
        repo.add_identity(ident, lbls)
    for doc in policy_docs:
        repo.apply(doc)
    return repo


def verdict(repo: Repository, src: Labels | int, dst: Labels | int, port: int,
            proto: int = PROTO_TCP) -> Verdict:
    return trace(src, dst, port, proto, repo).verdict
