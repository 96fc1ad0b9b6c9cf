"""Identity labels derived from pods, as Cilium derives them (pure)."""

from __future__ import annotations

from services.identity.derive import LabelFilter, pod_identity_labels
from tests.support.objects import pod


def test_pod_namespace_serviceaccount_and_namespace_labels() -> None:
    obj = pod("web-1", "production", {"app": "frontend", "tier": "web"})
    obj["spec"]["serviceAccountName"] = "web"
    labels = pod_identity_labels(obj, {"env": "prod"})
    assert labels.strings() == [
        "k8s:app=frontend",
        "k8s:io.cilium.k8s.namespace.labels.env=prod",
        "k8s:io.cilium.k8s.policy.cluster=default",
        "k8s:io.cilium.k8s.policy.serviceaccount=web",
        "k8s:io.kubernetes.pod.namespace=production",
        "k8s:tier=web",
    ]


def test_default_exclusions_drop_non_security_labels() -> None:
    obj = pod("x", labels={
        "app": "a", "pod-template-hash": "abc", "controller-revision-hash": "1",
        "pod-template-generation": "2", "statefulset.kubernetes.io/pod-name": "x-0",
        "io.kubernetes.container.name": "c", "kubernetes.io/os": "linux",
        "failure-domain.beta.kubernetes.io/zone": "z", "k8s.io/foo": "1",
        "app.kubernetes.io/name": "shop"})
    keys = {lbl.key for lbl in pod_identity_labels(obj, {})}
    assert "app" in keys and "app.kubernetes.io/name" in keys
    for gone in ("pod-template-hash", "controller-revision-hash", "pod-template-generation",
                 "statefulset.kubernetes.io/pod-name", "io.kubernetes.container.name",
                 "kubernetes.io/os", "failure-domain.beta.kubernetes.io/zone", "k8s.io/foo"):
        assert gone not in keys


def test_configurable_include_and_exclude_patterns() -> None:
    flt = LabelFilter.parse("app,!version")
    obj = pod("x", labels={"app": "a", "version": "1", "team": "t"})
    keys = {lbl.key for lbl in pod_identity_labels(obj, {}, flt)}
    assert "app" in keys and "version" not in keys and "team" not in keys
    # The namespace label is not a pod label and is always there.
    assert "io.kubernetes.pod.namespace" in keys


def test_same_labels_in_any_order_give_the_same_set() -> None:
    a = pod_identity_labels(pod("a", labels={"x": "1", "y": "2"}), {})
    b = pod_identity_labels(pod("b", labels={"y": "2", "x": "1"}), {})
    assert a == b and a.digest() == b.digest()
