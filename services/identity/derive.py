"""Security-relevant labels of a pod, derived the way Cilium derives them. Pure code.

Trusted labels (Cilium's ``SanitizePodLabels``): the labels that say which namespace a pod is
in, which labels that namespace has, which service account the pod runs as and which cluster
it belongs to come only from the objects that own them (the Namespace object,
``spec.serviceAccountName``, the cluster's configuration). A pod label that claims one of them,
or that claims a label source other than ``k8s``, is dropped before anything else looks at the
pod's labels; :func:`derive_pod_labels` returns what it dropped and why, so that it can be
counted and shown (``cilia endpoint get``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.labels import SOURCE_K8S, Label, Labels, split_source

NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
SERVICEACCOUNT_LABEL = "io.cilium.k8s.policy.serviceaccount"
CLUSTER_LABEL = "io.cilium.k8s.policy.cluster"
# Every pod label key under this prefix belongs to Cilium (k8sConst.LabelPrefix), never to a pod.
CILIUM_LABEL_PREFIX = "io.cilium.k8s"
DEFAULT_SERVICEACCOUNT = "default"
DEFAULT_CLUSTER = "default"
CLUSTER_NAME_ENV = "CILIA_CLUSTER_NAME"
LABEL_FILTER_ENV = "CILIA_LABEL_FILTER"

# Pod label keys that are not security relevant (Cilium's default exclusions); anchored at the
# start of the key.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    r"io\.kubernetes",
    r"kubernetes\.io",
    r".*beta\.kubernetes\.io",
    r"k8s\.io",
    r"pod-template-generation",
    r"pod-template-hash",
    r"controller-revision-hash",
    r"statefulset\.kubernetes\.io/pod-name",
    r"annotation\.",
)


# Why a pod label was dropped (the ``reason`` label of the drop counter).
REASON_NAMESPACE = "namespace"                 # claims the pod's namespace
REASON_NAMESPACE_LABELS = "namespace-labels"   # claims a label of the pod's namespace
REASON_SERVICEACCOUNT = "serviceaccount"       # claims the pod's service account
REASON_CLUSTER = "cluster"                     # claims the pod's cluster
REASON_CILIUM = "cilium-reserved"              # any other key under Cilium's own prefix
REASON_SOURCE = "source"                       # claims a label source other than k8s


@dataclass(frozen=True, order=True)
class DroppedLabel:
    """A pod label that was not allowed into the pod's identity, and why."""

    key: str
    value: str
    reason: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}"

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "value": self.value, "reason": self.reason}


@dataclass(frozen=True)
class DerivedLabels:
    """A pod's identity labels and the pod labels dropped as untrusted."""

    labels: Labels
    dropped: tuple[DroppedLabel, ...]


def reserved_reason(key: str) -> str | None:
    """Why a pod label key may not come from a pod (None: it may).

    The key is as written in ``metadata.labels``; ``k8s:key`` is the same as ``key`` (the
    pod's own source), any other ``source:`` prefix is a claim to another source.
    """
    if ":" in key:
        source, rest = split_source(key)
        if source != SOURCE_K8S:
            return REASON_SOURCE
        key = rest
    if key == NAMESPACE_LABEL:
        return REASON_NAMESPACE
    if key.startswith(NAMESPACE_LABELS_PREFIX):
        return REASON_NAMESPACE_LABELS
    if key == SERVICEACCOUNT_LABEL:
        return REASON_SERVICEACCOUNT
    if key == CLUSTER_LABEL:
        return REASON_CLUSTER
    if key.startswith(CILIUM_LABEL_PREFIX):
        return REASON_CILIUM
    return None


def sanitize_pod_labels(labels: Mapping[str, Any]) -> tuple[dict[str, str],
                                                            tuple[DroppedLabel, ...]]:
    """Split a pod's ``metadata.labels`` into the labels a pod may carry and the dropped ones.

    Returns:
        (kept labels with a ``k8s:`` prefix removed from their keys, dropped labels sorted).
    """
    kept: dict[str, str] = {}
    dropped: list[DroppedLabel] = []
    for key, value in labels.items():
        reason = reserved_reason(str(key))
        if reason is not None:
            dropped.append(DroppedLabel(str(key), str(value), reason))
            continue
        kept[split_source(key, SOURCE_K8S)[1]] = str(value)
    return kept, tuple(sorted(dropped))


@dataclass(frozen=True)
class LabelFilter:
    """Which pod label keys become identity labels.

    A key is dropped if an exclude pattern matches it; if include patterns exist, a key must
    also match one of them.
    """

    excludes: tuple[str, ...] = DEFAULT_EXCLUDES
    includes: tuple[str, ...] = ()
    _ex: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _in: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ex", tuple(re.compile(p) for p in self.excludes))
        object.__setattr__(self, "_in", tuple(re.compile(p) for p in self.includes))

    @classmethod
    def parse(cls, spec: str | Iterable[str]) -> LabelFilter:
        """Patterns as Cilium's ``--labels`` takes them: ``!pat`` excludes, ``pat`` includes.

        User excludes add to the defaults.
        """
        items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
        excludes = [p[1:] for p in items if p.startswith("!") and len(p) > 1]
        includes = [p for p in items if p and not p.startswith("!")]
        return cls(DEFAULT_EXCLUDES + tuple(excludes), tuple(includes))

    @classmethod
    def from_env(cls) -> LabelFilter:
        spec = os.environ.get(LABEL_FILTER_ENV, "")
        return cls.parse(spec) if spec else cls()

    def keeps(self, key: str) -> bool:
        if any(p.match(key) for p in self._ex):
            return False
        return not self._in or any(p.match(key) for p in self._in)


def namespace_identity_labels(ns_labels: Mapping[str, str]) -> list[Label]:
    return [Label(SOURCE_K8S, NAMESPACE_LABELS_PREFIX + k, v) for k, v in ns_labels.items()]


def pod_identity_labels(pod: Mapping[str, Any], ns_labels: Mapping[str, str],
                        label_filter: LabelFilter | None = None,
                        cluster: str | None = None) -> Labels:
    """The identity label set of a pod (see :func:`derive_pod_labels`)."""
    return derive_pod_labels(pod, ns_labels, label_filter, cluster).labels


def derive_pod_labels(pod: Mapping[str, Any], ns_labels: Mapping[str, str],
                      label_filter: LabelFilter | None = None,
                      cluster: str | None = None) -> DerivedLabels:
    """The identity label set of a pod, and the pod labels dropped as untrusted.

    Args:
        pod: the Pod object (``metadata.labels``, ``metadata.namespace``,
            ``spec.serviceAccountName``).
        ns_labels: the labels of the pod's Namespace object (empty if unknown).
        label_filter: which of the remaining pod labels are security relevant.
        cluster: the cluster's name (default ``$CILIA_CLUSTER_NAME`` or ``default``).
    """
    flt = label_filter or LabelFilter()
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    namespace = meta.get("namespace") or "default"
    kept, dropped = sanitize_pod_labels(meta.get("labels") or {})
    labels = [Label(SOURCE_K8S, k, v) for k, v in kept.items() if flt.keeps(k)]
    labels.append(Label(SOURCE_K8S, NAMESPACE_LABEL, namespace))
    labels.extend(namespace_identity_labels(ns_labels))
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or DEFAULT_SERVICEACCOUNT
    labels.append(Label(SOURCE_K8S, SERVICEACCOUNT_LABEL, sa))
    labels.append(Label(SOURCE_K8S, CLUSTER_LABEL,
                        cluster or os.environ.get(CLUSTER_NAME_ENV, DEFAULT_CLUSTER)))
    return DerivedLabels(Labels(labels), dropped)
