"""What of a Kubernetes object the watcher compares and publishes (services.k8s.view)."""

from __future__ import annotations

import copy
from typing import Any

from services.common.contract import ObjectEvent, source_subject
from services.k8s.resources import BY_KIND, RESOURCES
from services.k8s.view import (
    delete,
    delete_msg_id,
    differs,
    event_data,
    plan,
    published_form,
    relevant_view,
    upsert_msg_id,
)


def pod(name: str = "web", rv: str = "10", ip: str = "10.0.0.5", **status: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}",
                         "resourceVersion": rv, "generation": 1, "labels": {"app": "web"},
                         "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"containers": [{"name": "c", "image": "x"}], "nodeName": "n1"},
            "status": {"podIP": ip, "hostIP": "192.168.0.2", "phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True"}], **status}}


def node(rv: str = "3", heartbeat: str = "t1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "uid": "uid-n1", "resourceVersion": rv},
            "spec": {"podCIDR": "10.0.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}],
                       "conditions": [{"type": "Ready", "lastHeartbeatTime": heartbeat}]}}


def test_view_drops_bookkeeping_and_keeps_the_status_cilia_reads() -> None:
    view = relevant_view(pod())
    assert set(view["metadata"]) == {"name", "namespace", "uid", "labels"}
    assert view["status"] == {"podIP": "10.0.0.5", "hostIP": "192.168.0.2", "phase": "Running"}
    assert relevant_view(node())["status"] == {
        "addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}


def test_view_drops_the_status_of_other_kinds_and_leaves_the_object_alone() -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "d"},
           "spec": {"ports": [{"port": 80}]},
           "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}}
    before = copy.deepcopy(svc)
    assert "status" not in relevant_view(svc)
    assert svc == before


def test_view_is_idempotent_and_the_published_form_keeps_uid_and_version() -> None:
    form = published_form(pod())
    assert form["metadata"]["resourceVersion"] == "10" and form["metadata"]["uid"] == "uid-web"
    assert "managedFields" not in form["metadata"] and "conditions" not in form["status"]
    assert relevant_view(relevant_view(pod())) == relevant_view(pod())
    assert relevant_view(form) == relevant_view(pod())


def test_a_status_only_or_version_only_update_does_not_differ() -> None:
    held = published_form(pod(rv="10"))
    assert not differs(pod(rv="11"), held)
    assert not differs(pod(rv="12", conditions=[{"type": "Ready", "status": "False"}]), held)
    assert not differs(node(rv="9", heartbeat="t2"), published_form(node()))
    assert differs(pod(rv="13", ip="10.0.0.6"), held)
    assert differs(pod(), None)


def test_message_ids_name_the_version_and_the_deletion() -> None:
    assert upsert_msg_id(pod(rv="42")) == "k8s/uid-web/42"
    assert delete_msg_id(pod(rv="42")) == "k8s/uid-web/deleted"
    assert delete_msg_id(pod(rv="43")) == delete_msg_id(pod(rv="42"))


def test_event_data_is_shaped_as_cilia_apply_publishes_it() -> None:
    data = event_data(published_form(pod()))
    assert (data["kind"], data["namespace"], data["name"]) == ("Pod", "default", "web")
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}
    assert event_data(ns)["namespace"] == ""


def test_plan_publishes_only_the_difference() -> None:
    held = {("Pod", "default", "web"): published_form(pod("web")),
            ("Pod", "default", "gone"): published_form(pod("gone")),
            ("Pod", "default", "bad"): published_form(pod("bad")),
            ("Node", "", "n1"): published_form(node())}
    desired = [published_form(pod("web", rv="20")),            # status-only: nothing
               published_form(pod("new", rv="21")),            # new: upsert
               published_form(pod("moved", rv="22"))]
    changes = plan(desired, held, ["Pod"], keep=[("Pod", "default", "bad")])
    assert [(c.event_type, c.key[2]) for c in changes] == [
        (ObjectEvent.DELETE, "gone"), (ObjectEvent.UPSERT, "moved"), (ObjectEvent.UPSERT, "new")]
    assert changes[0].msg_id == "k8s/uid-gone/deleted"
    assert changes[1].msg_id == "k8s/uid-moved/22"
    assert changes[1].subject == source_subject("Pod", "default", "moved")
    # the Node is out of scope: neither deleted nor compared
    assert all(c.key[0] == "Pod" for c in changes)
    assert delete(pod("x")).obj["metadata"]["resourceVersion"] == "10"


def test_resources_name_their_collections() -> None:
    assert BY_KIND["Pod"].path == "/api/v1/pods"
    assert BY_KIND["EndpointSlice"].path == "/apis/discovery.k8s.io/v1/endpointslices"
    assert BY_KIND["CiliumClusterwideNetworkPolicy"].path == \
        "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies"
    assert len(RESOURCES) == 8 and not BY_KIND["CiliumClusterwideNetworkPolicy"].namespaced
