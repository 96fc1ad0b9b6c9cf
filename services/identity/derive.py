"""Security-relevant labels of a pod, derived the way Cilium derives them. Pure code."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.labels import SOURCE_K8S, Label, Labels

NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
SERVICEACCOUNT_LABEL = "io.cilium.k8s.policy.serviceaccount"
CLUSTER_LABEL = "io.cilium.k8s.policy.cluster"
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
    """The identity label set of a pod.

    Args:
        pod: the Pod object (``metadata.labels``, ``metadata.namespace``,
            ``spec.serviceAccountName``).
        ns_labels: the labels of the pod's Namespace object (empty if unknown).
    """
    flt = label_filter or LabelFilter()
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    namespace = meta.get("namespace") or "default"
    labels = [Label(SOURCE_K8S, k, str(v)) for k, v in (meta.get("labels") or {}).items()
              if flt.keeps(k)]
    labels.append(Label(SOURCE_K8S, NAMESPACE_LABEL, namespace))
    labels.extend(namespace_identity_labels(ns_labels))
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or DEFAULT_SERVICEACCOUNT
    labels.append(Label(SOURCE_K8S, SERVICEACCOUNT_LABEL, sa))
    labels.append(Label(SOURCE_K8S, CLUSTER_LABEL,
                        cluster or os.environ.get(CLUSTER_NAME_ENV, DEFAULT_CLUSTER)))
    return Labels(labels)
