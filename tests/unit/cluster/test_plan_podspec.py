"""Pure parts of the lab: the address plan, names, Pod/Deployment handling."""

from __future__ import annotations

import re

import pytest

from services.common.objects import KINDS
from services.lab import CLUSTER_POD_CIDR, UNDERLAY_CIDR, WORLD_IP, plan_lab
from services.lab.errors import LabConfigError, PodSpecError
from services.lab.plan import MAX_NETNS_NAME, pod_netns_name
from services.lab.podspec import (
    TEMPLATE_HASH_LABEL,
    deployment_pod,
    owner_deployment,
    parse_deployment,
    parse_pod,
    pick_node,
    random_suffix,
)
from services.nodeagent.endpoints import IFNAMSIZ, host_ifname

DEPLOY = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "backend", "namespace": "production"},
    "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "backend"}},
             "template": {"metadata": {"labels": {"app": "backend", "tier": "api"}},
                          "spec": {"containers": [{"name": "c",
                                                   "ports": [{"containerPort": 8080}]}]}}},
}


def test_plan_three_nodes_addresses_are_disjoint_and_outside_world() -> None:
    plan = plan_lab("demo", 3)
    assert [n.name for n in plan.nodes] == ["demo-node1", "demo-node2", "demo-node3"]
    assert [n.netns for n in plan.nodes] == [f"cilia-demo-node{i}" for i in (1, 2, 3)]
    assert [str(n.node_ip) for n in plan.nodes] == ["172.31.0.11", "172.31.0.12", "172.31.0.13"]
    assert [str(n.pod_cidr) for n in plan.nodes] == ["10.244.1.0/24", "10.244.2.0/24",
                                                     "10.244.3.0/24"]
    assert all(n.node_ip in UNDERLAY_CIDR and n.pod_cidr.subnet_of(CLUSTER_POD_CIDR)
               for n in plan.nodes)
    assert str(plan.nodes[0].gateway) == "10.244.1.1"
    assert WORLD_IP not in UNDERLAY_CIDR and WORLD_IP not in CLUSTER_POD_CIDR
    assert all(name.startswith("cilia-demo-") for name in
               [plan.underlay_netns, plan.external_netns, *(n.netns for n in plan.nodes)])


@pytest.mark.parametrize("name", ["", "Demo", "a-b", "1lab", "x" * 17])
def test_bad_lab_names_are_refused(name: str) -> None:
    with pytest.raises(LabConfigError, match="lab name"):
        plan_lab(name, 1)


def test_node_count_bounds() -> None:
    with pytest.raises(LabConfigError, match="nodes must be"):
        plan_lab("demo", 0)


def test_pod_netns_names_are_unique_and_bounded() -> None:
    assert pod_netns_name("demo", "default", "a-b") != pod_netns_name("demo", "default-a", "b")
    long_a = pod_netns_name("demo", "ns", "p" * 200)
    long_b = pod_netns_name("demo", "ns", "p" * 199 + "q")
    assert len(long_a) <= MAX_NETNS_NAME and len(long_b) <= MAX_NETNS_NAME
    assert long_a != long_b and long_a.startswith("cilia-demo-ns_")


def test_host_ifname_is_cilium_style_and_fits() -> None:
    name = host_ifname("0123456789abcdef" * 4)
    assert re.fullmatch(r"lxc[0-9a-f]{12}", name) and len(name) == IFNAMSIZ
    assert host_ifname("a") != host_ifname("b")


def test_parse_pod_defaults_and_ports() -> None:
    spec = parse_pod({"metadata": {"name": "web", "labels": {"app": "web"}},
                      "spec": {"containers": [{"ports": [{"containerPort": 80},
                                                         {"containerPort": 53,
                                                          "protocol": "UDP"}]}]}})
    assert (spec.namespace, spec.name, spec.labels) == ("default", "web", {"app": "web"})
    assert [(p.port, p.protocol) for p in spec.ports] == [(80, "TCP"), (53, "UDP")]


@pytest.mark.parametrize(("pod", "field"), [
    ({"metadata": {"name": "Bad_Name"}, "spec": {"containers": [{}]}}, "metadata.name"),
    ({"metadata": {"name": "p"}, "spec": {"containers": []}}, "spec.containers"),
    ({"metadata": {"name": "p"}, "spec": {"containers": [{"ports": [{"containerPort": 0}]}]}},
     r"spec.containers\[0\].ports\[0\].containerPort"),
    ({"metadata": {"name": "p"},
      "spec": {"containers": [{"ports": [{"containerPort": 80, "protocol": "ICMP"}]}]}},
     r"spec.containers\[0\].ports\[0\].protocol"),
    ({"metadata": {"name": "p", "namespace": "No"}, "spec": {"containers": [{}]}},
     "metadata.namespace"),
])
def test_bad_pods_name_the_field(pod: dict, field: str) -> None:
    with pytest.raises(PodSpecError, match=field):
        parse_pod(pod)


def test_deployment_pods_are_named_and_labelled_like_kubernetes() -> None:
    spec = parse_deployment(DEPLOY)
    pod = deployment_pod(spec, random_suffix())
    name = pod["metadata"]["name"]
    assert re.fullmatch(rf"backend-{spec.template_hash}-[bcdfghjklmnpqrstvwxz2456789]{{5}}",
                        name)
    assert pod["metadata"]["labels"] == {"app": "backend", "tier": "api",
                                         TEMPLATE_HASH_LABEL: spec.template_hash}
    assert owner_deployment(pod) == "backend"
    parse_pod(pod)  # a valid pod
    changed = {**DEPLOY, "spec": {**DEPLOY["spec"], "template": {
        **DEPLOY["spec"]["template"], "metadata": {"labels": {"app": "backend", "v": "2"}}}}}
    assert parse_deployment(changed).template_hash != spec.template_hash


def test_deployment_selector_must_match_template() -> None:
    bad = {**DEPLOY, "spec": {**DEPLOY["spec"], "selector": {"matchLabels": {"app": "x"}}}}
    with pytest.raises(PodSpecError, match=r"Deployment production/backend: "
                                           r"spec.selector.matchLabels.app"):
        parse_deployment(bad)
    with pytest.raises(PodSpecError, match=r"spec\.replicas"):
        parse_deployment({**DEPLOY, "spec": {**DEPLOY["spec"], "replicas": -1}})


def test_pick_node_least_pods_then_first() -> None:
    nodes = ["n1", "n2", "n3"]
    assert pick_node(nodes, {}) == "n1"
    assert pick_node(nodes, {"n1": 1}) == "n2"
    assert pick_node(nodes, {"n1": 1, "n2": 1, "n3": 0}) == "n3"


def test_node_objects_are_valid_kubernetes_nodes() -> None:
    objs = plan_lab("demo", 2).node_objects()
    for obj in objs:
        KINDS["Node"].validate(obj)
    assert objs[1]["metadata"]["name"] == "demo-node2"
    assert objs[1]["spec"]["podCIDR"] == "10.244.2.0/24"
    assert {"type": "InternalIP", "address": "172.31.0.12"} in objs[1]["status"]["addresses"]
