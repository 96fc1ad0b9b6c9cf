"""Identity labels derived from pods, as Cilium derives them (pure)."""

from __future__ import annotations

import pytest

from services.identity.derive import (
    REASON_CILIUM,
    REASON_CLUSTER,
    REASON_NAMESPACE,
    REASON_NAMESPACE_LABELS,
    REASON_SERVICEACCOUNT,
    REASON_SOURCE,
    LabelFilter,
    derive_pod_labels,
    pod_identity_labels,
    reserved_reason,
)
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


def test_pod_labels_that_claim_what_other_objects_own_are_dropped() -> None:
    obj = pod("spoof", "other", {
        "app": "x",
        "io.kubernetes.pod.namespace": "kube-system",
        "io.cilium.k8s.namespace.labels.team": "a",
        "io.cilium.k8s.policy.serviceaccount": "robot",
        "io.cilium.k8s.policy.cluster": "prod",
        "io.cilium.k8s.policy.name": "p",
        "reserved:host": "",
        "k8s:io.cilium.k8s.policy.serviceaccount": "admin",
        "k8s:tier": "web"})
    derived = derive_pod_labels(obj, {"env": "dev"}, cluster="c1")
    assert derived.labels.strings() == [
        "k8s:app=x",
        "k8s:io.cilium.k8s.namespace.labels.env=dev",      # from the Namespace object
        "k8s:io.cilium.k8s.policy.cluster=c1",             # from the configuration
        "k8s:io.cilium.k8s.policy.serviceaccount=default",  # from the spec (none: default)
        "k8s:io.kubernetes.pod.namespace=other",           # from metadata.namespace
        "k8s:tier=web",                                     # k8s: is the pod's own source
    ]
    assert [(d.key, d.reason) for d in derived.dropped] == [
        ("io.cilium.k8s.namespace.labels.team", REASON_NAMESPACE_LABELS),
        ("io.cilium.k8s.policy.cluster", REASON_CLUSTER),
        ("io.cilium.k8s.policy.name", REASON_CILIUM),
        ("io.cilium.k8s.policy.serviceaccount", REASON_SERVICEACCOUNT),
        ("io.kubernetes.pod.namespace", REASON_NAMESPACE),
        ("k8s:io.cilium.k8s.policy.serviceaccount", REASON_SERVICEACCOUNT),
        ("reserved:host", REASON_SOURCE),
    ]
    assert pod_identity_labels(obj, {"env": "dev"}, cluster="c1") == derived.labels


def test_the_owners_still_set_namespace_serviceaccount_and_cluster() -> None:
    obj = pod("honest", "team-a", {"app": "x"})
    obj["spec"]["serviceAccountName"] = "robot"
    derived = derive_pod_labels(obj, {"team": "a"}, cluster="c1")
    assert derived.dropped == ()
    assert {"k8s:io.cilium.k8s.namespace.labels.team=a",
            "k8s:io.cilium.k8s.policy.serviceaccount=robot",
            "k8s:io.kubernetes.pod.namespace=team-a"} <= set(derived.labels.strings())


def test_a_user_include_pattern_cannot_let_a_claim_through() -> None:
    flt = LabelFilter.parse("io.cilium.k8s,app")
    obj = pod("x", "other", {"app": "a", "io.cilium.k8s.namespace.labels.team": "a"})
    derived = derive_pod_labels(obj, {}, flt)
    assert "k8s:io.cilium.k8s.namespace.labels.team=a" not in derived.labels.strings()
    assert [d.reason for d in derived.dropped] == [REASON_NAMESPACE_LABELS]


@pytest.mark.parametrize("key,reason", [
    ("app", None), ("app.kubernetes.io/name", None), ("io.cilium.k8sfoo", REASON_CILIUM),
    ("cidr:10.0.0.0/8", REASON_SOURCE), ("any:app", REASON_SOURCE),
    ("k8s:io.kubernetes.pod.namespace", REASON_NAMESPACE)])
def test_reserved_reason(key: str, reason: str | None) -> None:
    assert reserved_reason(key) == reason
