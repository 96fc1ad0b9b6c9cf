"""Two watcher processes on one API server and one bus: one leader by its Lease, the standby
taking over when the leader is killed, no change lost or stored twice; and a policy the policy
service rejects getting its Kubernetes Event through the watcher."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.bus import Bus
from services.common.runner import collect_status
from tests.bus.k8s.test_watcher import objects, per_subject, subject, until_counts
from tests.support.busread import poll, services_ready
from tests.support.k8sapi import ApiServer, api_server
from tests.support.objects import pod
from tests.support.procs import service as service_proc

LEASE_S = 3.0
TIMEOUT_S = 20.0


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with api_server(token="test-token", bookmark_interval=0.5) as server:
        yield server


async def leaders(bus: Bus) -> dict[int, bool]:
    """pid -> whether that watcher replica says it leads."""
    return {int(r["pid"]): bool(r["stats"].get("leading"))
            for r in await collect_status(bus) if r["service"] == "k8s"}


async def test_the_standby_leads_within_the_lease_when_the_leader_dies(
        bus: Bus, nats_url: str, api: ApiServer, tmp_path: Path) -> None:
    kubeconfig = str(api.kubeconfig(tmp_path / "kubeconfig"))
    args = ("--kubeconfig", kubeconfig, "--leader-elect", "--lease-namespace", "default",
            "--lease-duration", str(LEASE_S))
    first = objects()[0]
    api.create(first)
    with service_proc("services.k8s", nats_url, *args, log=tmp_path / "a.log") as a, \
            service_proc("services.k8s", nats_url, *args, log=tmp_path / "b.log") as b:
        await services_ready(bus, {"k8s"})
        state = await poll(lambda: leaders(bus),
                           lambda got: len(got) == 2 and sum(got.values()) == 1,
                           lambda got: f"replicas leading: {got}", TIMEOUT_S)
        await until_counts(bus, {subject(first): 1})
        leader = a if state[a.pid] else b
        standby = b if leader is a else a
        lease = api.get("coordination.k8s.io/v1", "Lease", "default", "cilia-k8s-watcher")
        assert lease is not None and lease["spec"]["holderIdentity"]
        os.kill(leader.pid, signal.SIGKILL)      # no release: the lease must run out
        killed = time.monotonic()
        # changes while nobody leads
        pods = [pod(f"p{i}", labels={"app": "ha"}, ip=f"10.244.1.{10 + i}") for i in range(5)]
        for p in pods:
            api.create(p)
        took = await poll(lambda: leaders(bus),
                          lambda got: got.get(standby.pid) is True,
                          lambda got: f"replicas leading: {got}", TIMEOUT_S)
        assert took[standby.pid]
        led_after = time.monotonic() - killed
        assert led_after <= LEASE_S * 2 + 2, led_after
        counts = await until_counts(bus, {subject(p): 1 for p in pods})
        await asyncio.sleep(1.0)            # anything published twice shows up by now
        counts = await per_subject(bus)
        assert all(counts[subject(p)] == 1 for p in pods), counts
        assert counts[subject(first)] == 1, counts     # the new leader's resync: no repeat
        lease = api.get("coordination.k8s.io/v1", "Lease", "default", "cilia-k8s-watcher")
        assert lease is not None and lease["spec"]["leaseTransitions"] >= 1


async def test_a_rejected_policy_gets_a_kubernetes_event_naming_the_field(
        bus: Bus, nats_url: str, api: ApiServer, tmp_path: Path) -> None:
    kubeconfig = str(api.kubeconfig(tmp_path / "kubeconfig"))
    bad = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
           "metadata": {"name": "bad-port", "namespace": "default"},
           "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{"toPorts": [{"ports": [{"port": "99999",
                                                         "protocol": "TCP"}]}]}]}}
    with service_proc("services.policy", nats_url, log=tmp_path / "policy.log"), \
            service_proc("services.k8s", nats_url, "--kubeconfig", kubeconfig,
                         log=tmp_path / "k8s.log"):
        await services_ready(bus, {"k8s", "policy"})
        created = api.create(bad)

        async def events() -> list[dict[str, object]]:
            return [e for e in api.list("v1", "Event", "default")
                    if e["involvedObject"]["name"] == "bad-port"]

        found = await poll(events, lambda got: bool(got), lambda got: "no Event yet",
                           TIMEOUT_S)
        [event] = found
        assert event["type"] == "Warning" and event["reason"] == "PolicyRejected"
        assert "ports[0].port" in str(event["message"]), event["message"]
        assert event["involvedObject"]["uid"] == created["metadata"]["uid"]
        policy = api.get("cilium.io/v2", "CiliumNetworkPolicy", "default", "bad-port")
        assert policy is not None
        [cond] = [c for c in policy["status"]["conditions"] if c["type"] == "Valid"]
        assert cond["status"] == "False" and "ports[0].port" in cond["message"]
