"""Real packets between lab pods: same node, across nodes (native routing), to and from the
world, and never into the root namespace. Plus kubelet behaviour users see (deployments,
exec, clean failure)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from services.common.objects import KINDS
from services.common.processes import ProcRef, is_alive
from services.lab import (
    CLUSTER_POD_CIDR,
    UNDERLAY_CIDR,
    WORLD_IP,
    WORLD_IPS,
    CniInvokeError,
    Kubelet,
    LabState,
    PodNotFoundError,
    PodSpecError,
    exec_in_netns,
    exec_in_pod,
    start_agent,
    stop_agent,
)
from services.lab import netns as ns
from services.lab.state import lab_dir
from tests.lab.cluster.conftest import CNI_PLUGIN, CONNECT, RootSnapshot, root_snapshot

HTTP_PORT = 8080
UDP_PORT = 5353
CURL = ["curl", "-s", "-m", "3", "-w", " %{http_code}"]


@pytest.fixture(scope="module")
def root_before() -> RootSnapshot:
    return root_snapshot()


@pytest.fixture(scope="module")
def pods(root_before: RootSnapshot, lab2: LabState) -> dict[str, dict[str, Any]]:
    kubelet = Kubelet(lab2.name)
    n1, n2 = (n.name for n in lab2.plan.nodes)
    out = {}
    for name, node in (("a1", n1), ("a2", n1), ("b1", n2)):
        out[name] = kubelet.create_pod({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "traffic", "labels": {"app": name}},
            "spec": {"nodeName": node, "containers": [{"name": "w", "ports": [
                {"containerPort": HTTP_PORT},
                {"containerPort": UDP_PORT, "protocol": "UDP"}]}]}})
    return out


def run(lab: LabState, pod: str, argv: list[str]) -> tuple[int, str]:
    proc = exec_in_pod(pod, argv, namespace="traffic", lab=lab.name, capture=True, timeout=20)
    return proc.returncode, proc.stdout.decode().strip()


def curl(lab: LabState, pod: str, url: str) -> tuple[int, str]:
    """curl from a pod: (exit code, "<body> <status>") with whitespace collapsed."""
    code, out = run(lab, pod, [*CURL, url])
    return code, " ".join(out.split())


def ip_of(pod: dict[str, Any]) -> str:
    return str(pod["status"]["podIP"])


def test_pods_have_status_from_their_node(lab2: LabState, pods: dict[str, Any]) -> None:
    n1, n2 = lab2.plan.nodes
    assert pods["a1"]["spec"]["nodeName"] == n1.name
    assert pods["a1"]["status"]["hostIP"] == str(n1.node_ip)
    assert ipaddress.ip_address(ip_of(pods["a1"])) in n1.pod_cidr
    assert ipaddress.ip_address(ip_of(pods["b1"])) in n2.pod_cidr
    assert pods["b1"]["status"]["phase"] == "Running" and pods["b1"]["metadata"]["uid"]
    for pod in pods.values():       # what the source publishes is a valid Pod
        KINDS["Pod"].validate(pod)


def test_same_node_http_and_udp(lab2: LabState, pods: dict[str, Any]) -> None:
    target = ip_of(pods["a2"])
    assert curl(lab2, "a1", f"http://{target}:{HTTP_PORT}/") == (0, "a2 200")
    # by name: exec finds cilia-connect beside the interpreter even off $PATH
    assert run(lab2, "a1", ["cilia-connect", target, str(UDP_PORT), "--udp"]) == (0, "OK")


def test_cross_node_http_and_udp(lab2: LabState, pods: dict[str, Any]) -> None:
    target = ip_of(pods["b1"])
    assert curl(lab2, "a1", f"http://{target}:{HTTP_PORT}/") == (0, "b1 200")
    assert curl(lab2, "b1", f"http://{ip_of(pods['a2'])}:{UDP_PORT}/") == (0, "a2 200")
    assert run(lab2, "b1", [CONNECT, ip_of(pods["a1"]), str(HTTP_PORT), "--udp",
                            "--payload", "ping-across"]) == (0, "OK")


def test_closed_port_is_refused_by_the_real_stack(lab2: LabState,
                                                   pods: dict[str, Any]) -> None:
    assert run(lab2, "a1", [CONNECT, ip_of(pods["b1"]), "9"]) == (2, "refused")


def test_unallocated_pod_address_is_unreachable_not_leaked(lab2: LabState,
                                                           pods: dict[str, Any]) -> None:
    free = str(lab2.plan.nodes[0].pod_cidr.network_address + 200)
    code, out = run(lab2, "a1", [CONNECT, free, "80", "--timeout", "2"])
    assert code == 3 and out.startswith("error:"), out


def test_world_both_ways(lab2: LabState, pods: dict[str, Any]) -> None:
    for world in (WORLD_IP, WORLD_IPS[-1]):
        assert curl(lab2, "a1", f"http://{world}/") == (0, "external 200")
    proc = exec_in_netns(lab2.plan.external_netns, [CONNECT, ip_of(pods["b1"]),
                                                    str(HTTP_PORT)], timeout=10)
    assert (proc.returncode, proc.stdout.decode().strip()) == (0, "OK")


def root_addresses() -> list[str]:
    lab_ranges = (UNDERLAY_CIDR, CLUSTER_POD_CIDR,
                  *(ipaddress.IPv4Network(f"{ip}/32") for ip in WORLD_IPS))
    with IPRoute() as ipr:
        found = [str(a.get("address")) for a in ipr.get_addr(family=socket.AF_INET)]
    return [a for a in found if not ipaddress.ip_address(a).is_loopback
            and not any(ipaddress.ip_address(a) in r for r in lab_ranges)]


def test_nothing_in_the_root_namespace_is_reachable(lab2: LabState,
                                                    pods: dict[str, Any]) -> None:
    targets = root_addresses()
    assert targets, "the root namespace has no address to probe"
    for address in targets:
        proc = exec_in_netns(lab2.plan.external_netns, [CONNECT, address, "22", "--timeout",
                                                        "1"], timeout=10)
        out = proc.stdout.decode().strip()
        assert proc.returncode == 3 and "unreachable" in out, (address, out)
        code, out = run(lab2, "a1", [CONNECT, address, "22", "--timeout", "1"])
        assert code != 0 and out != "OK", (address, out)


def test_root_namespace_links_and_routes_untouched(root_before: RootSnapshot,
                                                   pods: dict[str, Any]) -> None:
    now = root_snapshot()
    assert now.links == root_before.links
    assert now.routes == root_before.routes


def test_exec_targets_and_exit_codes(lab2: LabState, pods: dict[str, Any]) -> None:
    assert run(lab2, "pod/a2", ["sh", "-c", "exit 7"]) == (7, "")
    with pytest.raises(PodNotFoundError, match="traffic/nope"):
        run(lab2, "nope", ["true"])
    with pytest.raises(PodNotFoundError, match="deployment traffic/none"):
        run(lab2, "deploy/none", ["true"])


DEPLOY: dict[str, Any] = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "traffic"},
    "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
             "template": {"metadata": {"labels": {"app": "web"}},
                          "spec": {"containers": [{"name": "w", "ports": [
                              {"containerPort": HTTP_PORT}]}]}}},
}


@pytest.fixture
def kubelet(lab2: LabState) -> Iterator[Kubelet]:
    kube = Kubelet(lab2.name)
    try:
        yield kube
    finally:
        kube.delete_deployment("traffic", "web")


def test_deployment_replicas_scale_and_rollout(lab2: LabState, pods: dict[str, Any],
                                               kubelet: Kubelet) -> None:
    first = kubelet.apply(DEPLOY)
    created = first.pods
    assert len(created) == 3 and first.deleted == []
    hashes = {p["metadata"]["labels"]["pod-template-hash"] for p in created}
    assert len(hashes) == 1
    for pod in created:
        assert re.fullmatch(rf"web-{next(iter(hashes))}-[a-z0-9]{{5}}", pod["metadata"]["name"])
        assert pod["metadata"]["labels"]["app"] == "web"
        KINDS["Pod"].validate(pod)
    # 3 standalone pods sit on node1 (2) and node2 (1): the least loaded node fills first
    per_node = sorted(p["spec"]["nodeName"] for p in created)
    assert per_node == sorted([lab2.plan.nodes[1].name] * 2 + [lab2.plan.nodes[0].name])
    target = ip_of(created[0])
    assert curl(lab2, "deploy/web", f"http://{target}:{HTTP_PORT}/") == (
        0, f"{created[0]['metadata']['name']} 200")

    assert kubelet.apply(DEPLOY).pods == created           # converged: nothing changes
    result = kubelet.apply({**DEPLOY, "spec": {**DEPLOY["spec"], "replicas": 1}})
    scaled = result.pods
    assert len(scaled) == 1 and scaled[0] in created
    gone = {p["metadata"]["name"] for p in created} - {scaled[0]["metadata"]["name"]}
    assert {p["metadata"]["name"] for p in result.deleted} == gone
    assert not [n for n in ns.list_netns(lab2.plan.prefix) if n.split("_", 1)[-1] in gone]

    relabelled = json.loads(json.dumps(DEPLOY))
    relabelled["spec"]["template"]["metadata"]["labels"]["version"] = "2"
    rollout = kubelet.apply(relabelled)
    rolled = rollout.pods
    assert len(rolled) == 3 and scaled[0] not in rolled and rollout.deleted == scaled
    assert all(p["metadata"]["labels"]["version"] == "2" for p in rolled)
    assert len(kubelet.deployment_pods("traffic", "web")) == 3

    assert sorted(kubelet.delete_deployment("traffic", "web")) == sorted(
        p["metadata"]["name"] for p in rolled)
    assert kubelet.deployment_pods("traffic", "web") == []


def test_bad_pod_and_failed_cni_leave_nothing(lab2: LabState, pods: dict[str, Any]) -> None:
    kubelet = Kubelet(lab2.name)
    before = set(ns.list_netns(lab2.plan.prefix))
    with pytest.raises(PodSpecError, match=r"Pod traffic/x: spec.nodeName: 'nowhere'"):
        kubelet.create_pod({"metadata": {"name": "x", "namespace": "traffic"},
                            "spec": {"nodeName": "nowhere", "containers": [{}]}})
    node2 = lab2.plan.nodes[1].name
    assert stop_agent(lab2.name, node2)
    try:
        with pytest.raises(CniInvokeError) as info:
            kubelet.create_pod({"metadata": {"name": "y", "namespace": "traffic"},
                                "spec": {"nodeName": node2, "containers": [{}]}})
        assert info.value.command == "ADD" and info.value.code == 11
        assert "agent not reachable" in str(info.value)
    finally:
        start_agent(lab2.name, node2)
    assert set(ns.list_netns(lab2.plan.prefix)) == before
    assert kubelet.get_pod("traffic", "y") is None
    assert "traffic/y" not in json.loads((lab_dir(lab2.name) / "pods.json").read_text())["pods"]
    # the restarted agent kept its endpoints: b1 still answers and can be deleted cleanly
    assert curl(lab2, "a1", f"http://{ip_of(pods['b1'])}:{HTTP_PORT}/") == (0, "b1 200")


def test_dead_workload_shows_as_failed_and_deletes_cleanly(lab2: LabState,
                                                           pods: dict[str, Any]) -> None:
    kubelet = Kubelet(lab2.name)
    pod = kubelet.create_pod({"metadata": {"name": "victim", "namespace": "traffic"},
                              "spec": {"containers": [{"ports": [{"containerPort": 80}]}]}})
    assert pod["status"]["phase"] == "Running"
    record = json.loads((lab_dir(lab2.name) / "pods.json").read_text())["pods"]
    workload = ProcRef.from_json(record["traffic/victim"]["runtime"]["workload"])
    os.kill(workload.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while is_alive(workload) and time.monotonic() < deadline:
        time.sleep(0.02)
    observed = kubelet.get_pod("traffic", "victim")
    assert observed is not None and observed["status"]["phase"] == "Failed"
    assert kubelet.delete_pod("traffic", "victim")
    assert not kubelet.delete_pod("traffic", "victim")
    assert not ns.netns_exists(record["traffic/victim"]["runtime"]["netns"])


def test_kubelet_calls_the_plugin_like_a_runtime(lab2: LabState, pods: dict[str, Any],
                                                 tmp_path: Path) -> None:
    """A recording shim named cilia-cni in CNI_PATH sees exactly what a runtime passes."""
    shim = tmp_path / "cilia-cni"
    shim.write_text(f"#!/bin/sh\n"
                    f"env | grep '^CNI_' | sort > {tmp_path}/$CNI_COMMAND.env\n"
                    f"readlink /proc/self/ns/net > {tmp_path}/$CNI_COMMAND.netns\n"
                    f"tee {tmp_path}/$CNI_COMMAND.stdin | {CNI_PLUGIN}\n")
    shim.chmod(0o755)
    kubelet = Kubelet(lab2.name, cni_path=[str(tmp_path)])
    node = lab2.plan.nodes[1]
    pod = kubelet.create_pod({"metadata": {"name": "shimmed", "namespace": "traffic"},
                              "spec": {"nodeName": node.name, "containers": [{}]}})
    kubelet.delete_pod("traffic", "shimmed")

    env = dict(line.split("=", 1) for line in (tmp_path / "ADD.env").read_text().splitlines())
    sandbox = ns.netns_path(f"{lab2.plan.prefix}traffic_shimmed")
    assert env["CNI_COMMAND"] == "ADD" and env["CNI_IFNAME"] == "eth0"
    assert env["CNI_NETNS"] == sandbox and env["CNI_PATH"] == str(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{64}", env["CNI_CONTAINERID"])
    args = dict(kv.split("=", 1) for kv in env["CNI_ARGS"].split(";"))
    assert args["K8S_POD_NAMESPACE"] == "traffic" and args["K8S_POD_NAME"] == "shimmed"
    node_ino = os.stat(ns.netns_path(node.netns)).st_ino
    assert (tmp_path / "ADD.netns").read_text().strip() == f"net:[{node_ino}]"
    conf = json.loads((tmp_path / "ADD.stdin").read_text())
    assert conf["cniVersion"] == "1.0.0" and conf["type"] == "cilia-cni"
    assert "prevResult" not in conf
    delete = json.loads((tmp_path / "DEL.stdin").read_text())
    assert delete["prevResult"]["ips"][0]["address"] == f"{pod['status']['podIP']}/32"
    del_env = (tmp_path / "DEL.env").read_text()
    assert f"CNI_CONTAINERID={env['CNI_CONTAINERID']}" in del_env


def test_concurrent_pod_creation_is_serialised(lab2: LabState, pods: dict[str, Any]) -> None:
    kubelet = Kubelet(lab2.name)
    names = [f"burst{i}" for i in range(4)]

    def create(name: str) -> dict[str, Any]:
        return Kubelet(lab2.name).create_pod({"metadata": {"name": name, "namespace": "traffic"},
                                              "spec": {"containers": [{}]}})

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            created = list(pool.map(create, names))
        ips = [p["status"]["podIP"] for p in created]
        assert len(set(ips)) == 4
        assert {p["metadata"]["name"] for p in kubelet.list_pods("traffic")} >= set(names)
    finally:
        for name in names:
            kubelet.delete_pod("traffic", name)
