"""The agent tells the truth: an agent in this process, on a real bus and real pinned maps.

- ``realized`` never runs ahead of the maps: while a patch is held, what it reports is the
  revision the maps hold, even when the bus has moved on meanwhile.
- Each part's error is its own, a failed part is retried with backoff without any new event,
  and it clears once the kernel takes the write: here the kernel refuses an lb backend
  (``lb_backends`` filled to its max_entries) and the NodePort programs (no such device).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes as ct
import os
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import NetNS

from services.common import contract
from services.common.bus import Bus, Outgoing
from services.common.contract import lb_backend_subject, lb_members_subject, lb_service_subject
from services.common.labels import Labels
from services.common.policytypes import PROTO_TCP, Direction, PolicyKey, Verdict
from services.common.runner import Heartbeat
from services.nodeagent.agent import DEVICES_ENV, DRIFT_INTERVAL_ENV, NodeAgent
from services.nodeagent.datapath import NodeMaps, PinnedMapBackend, Programs
from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath.lb import LbMaps
from services.nodeagent.datapath.maps import lb_backends
from services.nodeagent.datapath.maps.lb_backends import (
    LbBackendEntry,
    LbBackendKey,
    LbBackendValue,
)
from services.nodeagent.datapath.maps.lb_services import LbFrontend
from services.nodeagent.endpoints import Endpoint, NodeConfig
from services.policy import Repository, messages, parse_policy
from services.policy.service import to_outgoing
from tests.support.cluster import CILIA
from tests.support.netlab import NodeLab
from tests.support.procs import REPO

pytestmark = pytest.mark.datapath

GATE_TIMEOUT_S = 30.0        # a held write gives up after this (a failing test must end)
WAIT_S = 30.0                # how long a condition may take (retries back off up to 10 s)
POLL_S = 0.02
NODE_IP = "172.31.77.1"
POD_CIDR = "10.244.7.0/24"   # NodeLab's pod addresses
REMOTE_IDENTITY = 60000
JUNK_BACKEND_ID = 1 << 20    # far above the ids the lb service hands out
VIP = "10.96.7.7"


@dataclass
class Node:
    agent: NodeAgent
    lab: NodeLab
    maps: NodeMaps       # the test's own handles on the node's pins (reads, and drift)

    @property
    def name(self) -> str:
        return self.agent.cfg.name


@contextlib.asynccontextmanager
async def node_agent(url: str, tmp: Path, name: str, lab: NodeLab) -> AsyncIterator[Node]:
    """An agent for node ``name`` whose node namespace is ``lab``'s, answering heartbeats."""
    cfg = NodeConfig(name=name, node_ip=NODE_IP, pod_cidr=POD_CIDR, netns=lab.node_ns,
                     state_dir=str(tmp / "state"), socket_path=str(tmp / "cni.sock"))
    agent = NodeAgent(cfg)
    bus = await Bus.connect(url, "nodeagent")
    beat = Heartbeat(agent, f"test-{name}", name)
    try:
        await beat.start(bus)
        await agent.start(bus)
        with NodeMaps(name) as maps:
            yield Node(agent, lab, maps)
    finally:
        await agent.stop()
        await beat.stop()
        await bus.close()


@pytest.fixture
def lab() -> Iterator[NodeLab]:
    lab = NodeLab.create(1)
    try:
        yield lab
    finally:
        lab.destroy()


@pytest.fixture
def node_name(node_name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The shared unique node (its pins removed at the end), with the agent's defaults."""
    monkeypatch.delenv(DEVICES_ENV, raising=False)      # NodePort programs go on eth0
    monkeypatch.delenv(DRIFT_INTERVAL_ENV, raising=False)
    return node_name


async def until(what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(POLL_S)


class Gate:
    """Holds the writes of one of the agent's typed maps in its worker thread."""

    def __init__(self, typed_map: Any) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        write = typed_map.reconcile

        def held(*args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            if not self.released.wait(GATE_TIMEOUT_S):
                raise TimeoutError("gate never released")
            return write(*args, **kwargs)

        typed_map.reconcile = held

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, GATE_TIMEOUT_S), "no write came"


def endpoint(lab: NodeLab, node: str) -> Endpoint:
    pod = lab.pods[0]
    return Endpoint(id=1, container_id="c-" + pod.name, pod_namespace="t", pod_name="p1",
                    ipv4=pod.ip, gateway="169.254.1.1", host_ifname=pod.host_if,
                    host_ifindex=pod.ifindex, host_mac="", pod_ifname="eth0", pod_mac="",
                    netns_path=f"/var/run/netns/{pod.name}", node=node,
                    node_netns=lab.node_ns)


async def publish_remote_pod(bus: Bus, prefix: str) -> int:
    """An ipcache entry of a pod on another node, as the identity service says it."""
    ack = await bus.publish(contract.ipcache_subject(prefix), "ipcache.upsert",
                            {"prefix": prefix, "identity": REMOTE_IDENTITY,
                             "host_ip": "172.31.77.2", "node": "other", "pod": "t/remote"},
                            msg_id=f"test/{uuid.uuid4()}")
    return int(ack.seq)


def add_device(lab: NodeLab, ifname: str) -> None:
    """An interface of that name in the node namespace (a veth pair: no other link kind is
    sure to exist in this kernel; nothing is sent on it)."""
    with NetNS(lab.node_ns) as ns:
        ns.link("add", ifname=ifname, kind="veth", peer=ifname + "p")


async def test_realized_never_runs_ahead_of_the_maps(bus: Bus, nats_url: str, tmp_path: Path,
                                                     node_name: str, lab: NodeLab) -> None:
    await asyncio.to_thread(add_device, lab, "eth0")
    async with node_agent(nats_url, tmp_path, node_name, lab) as node:
        agent = node.agent
        await until("agent ready", lambda: agent.state() == "ok")
        pod_ip = lab.pods[0].ip
        gates = [Gate(node.agent.maps.endpoints)]    # type: ignore[union-attr]
        try:
            # A pod starts: its endpoint patch is held in the worker thread...
            created = asyncio.create_task(agent.on_endpoint_created(endpoint(lab, node_name)))
            await gates[0].wait_entered()
            planned = agent.node_state.revision
            assert agent.realized == planned        # nothing else was pending
            # ...while the bus moves on: the agent folds a new ipcache entry.
            seq = await publish_remote_pod(bus, "10.99.0.1/32")
            await until("event folded", lambda: agent.node_state.revision == seq)
            stats = agent.stats()
            assert stats["revision"] == seq and stats["realized"] == planned < seq
            assert "10.99.0.1/32" not in node.maps.ipcache.entries()
            # The endpoint patch completes: the maps hold `planned`, not the folded `seq`.
            gates.append(Gate(node.agent.maps.ipcache))   # type: ignore[union-attr]
            gates[0].released.set()
            # (CNI ADD itself waits for the pod's identity and policy: they come below.)
            await until("endpoint written", lambda: pod_ip in node.maps.endpoints.entries())
            await gates[1].wait_entered()                  # the ipcache patch of `seq`
            assert agent.realized == planned and agent.stats()["realized"] == planned
            assert "10.99.0.1/32" not in node.maps.ipcache.entries()
            gates[1].released.set()
            await until("realized", lambda: agent.realized == seq)
            assert node.maps.ipcache.entries()["10.99.0.1/32"].identity == REMOTE_IDENTITY
            event = await bus.last_event(contract.agent_realized_subject(node_name))
            assert event is not None and event.data["revision"] == seq
            # The pod's identity and computed policy arrive: ADD answers.
            await publish_policy(bus, node_name, pod_ip)
            await asyncio.wait_for(created, WAIT_S)
            assert node.maps.endpoints.entries()[pod_ip].identity == WEB_ID
        finally:
            for gate in gates:
                gate.released.set()


def _fill_backends(node: str, skip: int = 0) -> int:
    """Fill the node's pinned ``lb_backends`` to max_entries with backends nobody uses."""
    with PinnedMapBackend(c.pin_dir(node) / lb_backends.NAME, ct.sizeof(LbBackendKey),
                          ct.sizeof(LbBackendValue)) as pin:
        room = pin.max_entries - len(pin.read_all()) - skip
        value = LbBackendValue(addr=0x0A0A0A0A, port=80, proto=6).to_bytes()
        pin.update([(LbBackendKey(id=JUNK_BACKEND_ID + i).to_bytes(), value)
                    for i in range(room)])
        return room


def _drop_junk(node: str) -> tuple[int, int, int]:
    """Delete the junk backends; returns (deleted, entries left, the map's max_entries)."""
    with PinnedMapBackend(c.pin_dir(node) / lb_backends.NAME, ct.sizeof(LbBackendKey),
                          ct.sizeof(LbBackendValue)) as pin:
        junk = [k for k in pin.read_all()
                if LbBackendKey.from_buffer_copy(k).id >= JUNK_BACKEND_ID]
        pin.delete(junk)
        return len(junk), len(pin.read_all()), pin.max_entries


async def publish_service(bus: Bus, node: str, backend_ip: str) -> None:
    """A ClusterIP with one backend, as the lb service publishes it."""
    svc = {"namespace": "t", "name": "web", "type": "ClusterIP", "cluster_ip": VIP,
           "ports": [{"name": "http", "port": 80, "protocol": "TCP", "node_port": 0}],
           "external_ips": [], "lb_ips": [], "affinity_timeout": 0, "ext_local": False,
           "int_local": False}
    for subject, event_type, data in (
            (lb_service_subject("t", "web"), "lb.service", {"id": 1, "service": svc}),
            (lb_backend_subject(1), "lb.backend",
             {"id": 1, "address": backend_ip, "port": 8080, "protocol": "TCP", "node": node,
              "pod": "t/p1", "state": "active"}),
            (lb_members_subject(1), "lb.backends",
             {"service": 1, "op": "delta", "added": [["http", 1]], "removed": []})):
        await bus.publish(subject, event_type, data, msg_id=f"test/{uuid.uuid4()}")


WEB_ID, CLIENT_ID = 60001, 60002
WEB_POLICY = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
              "metadata": {"name": "web", "namespace": "t"},
              "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                       "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                                    "toPorts": [{"ports": [{"port": "8080",
                                                            "protocol": "TCP"}]}]}]}}


async def publish_policy(bus: Bus, node: str, pod_ip: str) -> int:
    """The local pod's identity and ipcache entry, and the policy service's messages for a
    policy letting clients reach it on 8080 (compiled by the service's own code)."""
    repo = Repository()
    out = []
    for num, app in ((WEB_ID, "web"), (CLIENT_ID, "client")):
        labels = Labels.parse([f"k8s:app={app}", "k8s:io.kubernetes.pod.namespace=t"])
        repo.add_identity(num, labels)
        out.append(Outgoing(f"cilia.identity.{num}", "identity.upsert",
                            {"id": num, "labels": labels.strings()}, f"test/{uuid.uuid4()}"))
    out.append(Outgoing(contract.ipcache_subject(f"{pod_ip}/32"), "ipcache.upsert",
                        {"prefix": f"{pod_ip}/32", "identity": WEB_ID, "host_ip": NODE_IP,
                         "node": node, "pod": "t/p1"}, f"test/{uuid.uuid4()}"))
    out += [to_outgoing(msg, 1) for msg in messages(repo, repo.upsert(parse_policy(WEB_POLICY)))]
    acks = await bus.publish_batch(out)
    # The last of them the agent consumes (policy.status is for the CLI).
    return max(int(a.seq) for a, o in zip(acks, out, strict=True)
               if not o.subject.startswith("cilia.policy.status."))


def status_row(url: str, node: str) -> str:
    res = subprocess.run([CILIA, "status"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "CILIA_NATS_URL": url,
                                          "CILIA_LAB": "none-" + node})
    rows = [line for line in res.stdout.splitlines() if line.startswith(node)]
    assert rows, res.stdout + res.stderr
    return rows[0]


async def test_each_error_is_its_own_retried_without_events_until_the_kernel_takes_it(
        bus: Bus, nats_url: str, tmp_path: Path, node_name: str, lab: NodeLab) -> None:
    # The node's lb_backends map is full of backends nobody uses (pins made by a load of the
    # programs, as a previous agent would have left them), and the lb service has a
    # ClusterIP whose backend does not fit. The node namespace has no eth0 yet.
    Programs(node_name).close()
    assert await asyncio.to_thread(_fill_backends, node_name) > 0
    await publish_service(bus, node_name, lab.pods[0].ip)
    async with node_agent(nats_url, tmp_path, node_name, lab) as node:
        agent = node.agent
        await until("lb and NodePort errors",
                    lambda: set(agent.stats()["errors"]) == {"lb", "nodeport"})
        errors = agent.stats()["errors"]
        assert "lb_backends" in errors["lb"] and "full" in errors["lb"]
        assert "eth0" in errors["nodeport"]
        assert agent.state() == "degraded"
        # A pod starts and its policy arrives: the node maps, policy included, patch fine
        # meanwhile; their success clears no other part's error.
        created = asyncio.create_task(agent.on_endpoint_created(endpoint(lab, node_name)))
        seq = await publish_policy(bus, node_name, lab.pods[0].ip)
        await asyncio.wait_for(created, WAIT_S)     # ADD answers once the pod is enforced
        await until("policy realized", lambda: agent.realized == seq)
        assert (PolicyKey(WEB_ID, CLIENT_ID, Direction.INGRESS, PROTO_TCP, 8080, 8080),
                Verdict.ALLOW) in node.maps.policy.entries(WEB_ID)
        assert node.maps.endpoints.entries()[lab.pods[0].ip].enforce_ingress
        assert set(agent.stats()["errors"]) == {"lb", "nodeport"}
        # Both are retried with backoff, with no new event.
        await until("retries", lambda: min(agent.stats()["retries"].get(p, 0)
                                           for p in ("lb", "nodeport")) >= 2)
        row = await asyncio.to_thread(status_row, nats_url, node_name)
        assert "lb: lb map update failed: map 'lb_backends'" in row
        assert "nodeport: NodePort programs not attached" in row and "error" in row
        # The device appears: only the NodePort error goes.
        await asyncio.to_thread(add_device, lab, "eth0")
        await until("NodePort attached", lambda: "nodeport" not in agent.stats()["errors"])
        assert set(agent.stats()["errors"]) == {"lb"}
        # Room in the map: the next retry writes the service, and the agent is whole again.
        dropped, left, capacity = await asyncio.to_thread(_drop_junk, node_name)
        # The pinned map is the one the agent found full (its junk is there to drop).
        assert dropped > 0 and left < capacity, (dropped, left, capacity)
        await until("lb written", lambda: not agent.stats()["errors"], timeout=WAIT_S)
        assert agent.state() == "ok" and agent.realized == seq
        assert (PolicyKey(WEB_ID, CLIENT_ID, Direction.INGRESS, PROTO_TCP, 8080, 8080),
                Verdict.ALLOW) in node.maps.policy.entries(WEB_ID)
        with LbMaps(node_name) as lb:
            assert lb.backend_entries() == {1: LbBackendEntry(lab.pods[0].ip, 8080, "TCP",
                                                              local=True)}
            assert set(lb.service_entries()) == {LbFrontend(VIP, 80, "TCP")}
        row = await asyncio.to_thread(status_row, nats_url, node_name)
        assert "lb:" not in row and "nodeport:" not in row
