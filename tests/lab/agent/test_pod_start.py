"""No window at pod start: CNI ADD answers only once the pod's identity and policy are in its
node's maps (synchronous endpoint regeneration), on real packets."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common import contract
from services.common.identities import ID_INIT
from services.common.netns import open_iproute
from services.common.roles import CLI
from services.lab.netns import spawn
from services.lab.plan import pod_netns_name
from services.nodeagent.datapath import EndpointEntry, open_maps
from tests.support.cluster import CILIA, Cluster, temp_cluster
from tests.support.procs import stop_process

READY_TIMEOUT_S = 5     # the agents' ADD wait in this module (the default is longer)
POLICY_PROC = 1         # index of the policy service in Cluster.procs (SERVICES order)
CLIENT_RUN_S = 4.0      # how long the client's connect loop is watched
PROBE_DURING_ADD_S = 1.5   # a probe inside the sandbox while ADD waits (< READY_TIMEOUT_S)
SERVER = """\
apiVersion: v1
kind: Namespace
metadata: {name: open}
---
apiVersion: v1
kind: Pod
metadata: {name: target, namespace: open, labels: {app: target}}
spec:
  containers: [{name: c, image: echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Namespace
metadata: {name: locked}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: locked}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allowed-to-target, namespace: locked}
spec:
  endpointSelector: {matchLabels: {app: allowed}}
  egress:
    - toEndpoints:
        - matchLabels: {app: target, k8s:io.kubernetes.pod.namespace: open}
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"""
CLIENT = """\
apiVersion: v1
kind: Pod
metadata: {name: eager, namespace: locked, labels: {app: eager}}
spec:
  containers: [{name: c, image: cilia/client, args: ["TARGET:8080"]}]
"""
ALLOWED = """\
apiVersion: v1
kind: Pod
metadata: {name: allowed, namespace: locked, labels: {app: allowed}}
spec:
  containers: [{name: c, image: echo}]
"""
UNSEEN = """\
apiVersion: v1
kind: Pod
metadata: {name: unseen, namespace: open, labels: {app: unseen-before}}
spec:
  containers: [{name: c, image: echo}]
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Cluster]:
    with temp_cluster(nodes=1, extra_env={"CILIA_ENDPOINT_READY_TIMEOUT":
                                          str(READY_TIMEOUT_S)}) as c:
        yield c


def _write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def _log(lab: Cluster, namespace: str, pod: str) -> str:
    path = lab.state_dir / "lab" / lab.lab / "logs" / f"pod-{namespace}_{pod}.log"
    return path.read_text(errors="replace")


def _endpoint(lab: Cluster, pod: str) -> dict[str, Any]:
    found = lab.json("endpoint", "get", pod)
    assert len(found) == 1, found
    return dict(found[0]["status"])


@pytest.fixture(scope="module")
def target(lab: Cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The open server pod and the locked namespace's policies; the server's IPv4."""
    tmp = tmp_path_factory.mktemp("podstart")
    lab.ok("apply", "-f", _write(tmp, "server.yaml", SERVER))
    lab.settle()
    return str(_endpoint(lab, "open/target")["networking"]["addressing"][0]["ipv4"])


def test_a_pod_that_connects_at_start_gets_not_one_packet_through(
        lab: Cluster, target: str, tmp_path: Path) -> None:
    lab.ok("apply", "-f", _write(tmp_path, "client.yaml", CLIENT.replace("TARGET", target)))
    time.sleep(CLIENT_RUN_S)
    ep = _endpoint(lab, "locked/eager")
    client_ip = ep["networking"]["addressing"][0]["ipv4"]
    attempts = [line.split() for line in _log(lab, "locked", "eager").splitlines()
                if f"{target}:8080" in line]
    assert len(attempts) >= 3, attempts                    # it did try, from its start
    assert all(a[2] == "timeout" for a in attempts), attempts
    assert f"accept {client_ip}:" not in _log(lab, "open", "target")   # never reached it
    flows = [f for f in lab.json("observe", "--last", "4000") if f["src_ip"] == client_ip]
    assert flows and not [f for f in flows if f["verdict"] == "FORWARDED"], flows
    # From its first packet on, the datapath knew who it was and what its policy says.
    assert {f["src_identity"] for f in flows} == {ep["identity"]["id"]}, flows
    assert all("policy" in f["reason_name"] for f in flows), flows
    assert ep["state"] == "ready" and ep["policy"]["egress"]["enforcing"] is True


def test_an_allowed_pod_works_as_soon_as_apply_returns(lab: Cluster, target: str,
                                                      tmp_path: Path) -> None:
    lab.ok("apply", "-f", _write(tmp_path, "allowed.yaml", ALLOWED))
    # No wait, no retry: the first connection after `apply` returns goes through.
    assert lab.connect("allowed", "locked", target, 8080) == "OK"
    ep = _endpoint(lab, "locked/allowed")
    assert ep["identity"]["id"] >= 256 and ep["policy"]["egress"]["enforcing"] is True


async def _last_report(lab: Cluster, node: str, namespace: str, pod: str) -> str | None:
    bus = await lab.bus(CLI)
    try:
        event = await bus.last_event(contract.agent_endpoint_subject(node, namespace, pod))
    finally:
        await bus.close()
    return event.type if event is not None else None


def _lxc_links(lab: Cluster) -> set[str]:
    netns = f"cilia-{lab.lab}-node1"
    with open_iproute(netns) as ipr:
        return {str(lk.get("ifname")) for lk in ipr.get_links()
                if str(lk.get("ifname")).startswith("lxc")}


def _init_endpoints(node: str) -> dict[str, EndpointEntry]:
    """Endpoints at the init identity, read from the node's pinned map."""
    with open_maps(node) as maps:
        return {ip: e for ip, e in maps.endpoints.entries().items() if e.identity == ID_INIT}


def _probe_in_pod(netns: str, target: str, out: Path) -> subprocess.Popen[bytes]:
    """A connect loop inside the pod's sandbox (as a process of the pod would run)."""
    with out.open("wb") as log:
        return spawn(netns, [sys.executable, "-m", "services.workload", "client", "--name", "p",
                             "--target", f"{target}:8080", "--interval", "0.02",
                             "--timeout", "0.3"], stdout=log, stderr=subprocess.STDOUT)


def test_add_fails_cleanly_when_the_policy_is_not_computed_and_the_kubelet_retries(
        lab: Cluster, target: str, tmp_path: Path) -> None:
    node = str(_endpoint(lab, "open/target")["networking"]["node"])
    before = _lxc_links(lab)
    stop_process(lab.procs[POLICY_PROC])     # a new identity's policy is never computed
    file = _write(tmp_path, "unseen.yaml", UNSEEN)
    probe_log = tmp_path / "probe.log"
    try:
        apply = subprocess.Popen([CILIA, "apply", "-f", file], env=lab.env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # While ADD waits, the endpoint is in the map at the init identity, enforced both
            # ways: a process in the sandbox gets nothing through.
            lab.wait("the new endpoint at the init identity", lambda: bool(_init_endpoints(node)))
            [(ip, entry)] = _init_endpoints(node).items()
            assert entry.enforce_ingress and entry.enforce_egress, entry
            probe = _probe_in_pod(pod_netns_name(lab.lab, "open", "unseen"), target, probe_log)
            try:
                time.sleep(PROBE_DURING_ADD_S)
            finally:
                stop_process(probe)
            # The probe lived within the wait: the endpoint is still the one at init.
            assert list(_init_endpoints(node).items()) == [(ip, entry)]
            _, err = apply.communicate(timeout=120)
        finally:
            if apply.poll() is None:
                stop_process(apply)  # type: ignore[arg-type]
        assert apply.returncode != 0
        # A clear CNI error naming the pod and what was missing ("try again later")...
        assert "CNI ADD failed (code 11): pod open/unseen: endpoint" in err, err
        assert f"not ready after {READY_TIMEOUT_S}s: the policy of identity" in err, err
        assert "is not computed yet" in err, err
        # ...after the kubelet tried again, as a kubelet does...
        assert "attempt 1 of 3" in err and "attempt 2 of 3" in err, err
        # ...and nothing is left behind: no endpoint, no veth, the report withdrawn.
        assert not [e for e in lab.endpoints() if e["pod"] == "open/unseen"]
        assert not _init_endpoints(node)
        assert _lxc_links(lab) == before
        assert asyncio.run(_last_report(lab, node, "open", "unseen")) == "endpoint.delete"
    finally:
        lab.procs[POLICY_PROC] = lab.start_service("policy", tmp_path / "policy.log")
    attempts = [line.split() for line in probe_log.read_text().splitlines()
                if f"{target}:8080" in line]
    assert attempts and all(a[2] == "timeout" for a in attempts), attempts
    assert f"accept {ip}:" not in _log(lab, "open", "target")
    flows = [f for f in lab.json("observe", "--last", "4000") if f["src_ip"] == ip]
    assert flows and not [f for f in flows if f["verdict"] == "FORWARDED"], flows
    assert {f["src_identity"] for f in flows} == {ID_INIT}, flows

    # With the policy service back, the same pod starts.
    lab.ok("apply", "-f", file)
    ep = _endpoint(lab, "open/unseen")
    assert ep["state"] == "ready" and ep["identity"]["id"] >= 256
    assert asyncio.run(_last_report(lab, node, "open", "unseen")) == "endpoint.upsert"
    assert lab.connect("unseen", "open", target, 8080) == "OK"
