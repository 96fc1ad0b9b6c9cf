"""The agent's contract: CniServer in-process with hooks, driven by the real plugin."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from services.common.netns import open_iproute
from services.lab import EXTERNAL_IP, Kubelet, LabState, down, exec_in_pod, up
from services.lab.topology import cni_netconf, node_config
from services.nodeagent.cniserver import CniServer
from services.nodeagent.datapath import EndpointEntry, NodeMaps, Programs, attach
from services.nodeagent.endpoints import Endpoint
from tests.lab.cluster.conftest import CNI_PLUGIN, CONNECT, cni_env, sandbox_netns, unique_lab

ARGS = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart"


class Recorder:
    def __init__(self) -> None:
        self.created: list[Endpoint] = []
        self.deleted: list[Endpoint] = []
        self.fail_with: str | None = None

    async def on_endpoint_created(self, endpoint: Endpoint) -> None:
        if self.fail_with:
            raise RuntimeError(self.fail_with)
        self.created.append(endpoint)

    def on_endpoint_deleted(self, endpoint: Endpoint) -> None:  # sync hooks work too
        self.deleted.append(endpoint)


@pytest.fixture(scope="module")
def bare_lab(lab_dirs: Any) -> Iterator[LabState]:
    name = unique_lab()
    try:
        yield up(name, nodes=1, start_agents=False, external_ports=())
    finally:
        down(name)


@pytest_asyncio.fixture
async def server(bare_lab: LabState) -> AsyncIterator[tuple[CniServer, Recorder]]:
    hooks = Recorder()
    srv = CniServer(node_config(bare_lab.plan.nodes[0]), hooks)
    await srv.start()
    try:
        yield srv, hooks
    finally:
        await srv.stop()


async def plugin(env: dict[str, str], conf: dict[str, Any]) -> tuple[int, Any]:
    proc = await asyncio.create_subprocess_exec(CNI_PLUGIN, env=env,
                                                stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate(json.dumps(conf).encode())
    text = out.decode().strip()
    return proc.returncode or 0, json.loads(text) if text else None


def link_names(netns: str) -> dict[str, int]:
    """Links of a netns (sync pyroute2: called in a thread, never on the running loop)."""
    with open_iproute(netns) as ipr:
        return {str(lk.get("ifname")): int(lk["index"]) for lk in ipr.get_links()}


@pytest.fixture
def sandbox(bare_lab: LabState) -> Iterator[str]:
    with sandbox_netns(f"{bare_lab.plan.prefix}shop_cart") as [path]:
        yield path


async def test_hooks_see_the_endpoint_and_failure_rolls_back(
        server: tuple[CniServer, Recorder], sandbox: str, bare_lab: LabState) -> None:
    srv, hooks = server
    node = bare_lab.plan.nodes[0]
    conf = cni_netconf(srv.node)

    hooks.fail_with = "verifier said no"
    rc, err = await plugin(cni_env("ADD", "cfail", sandbox, args=ARGS), conf)
    assert rc == 1 and err["code"] == 100 and "verifier said no" in err["msg"]
    assert "shop/cart" in err["msg"]
    links = await asyncio.to_thread(link_names, node.netns)
    assert not [name for name in links if name.startswith("lxc")]
    assert srv.endpoints() == []

    hooks.fail_with = None
    rc, result = await plugin(cni_env("ADD", "cok", sandbox, args=ARGS), conf)
    assert rc == 0, result
    (ep,) = hooks.created
    # the rolled-back attempt released its address: the first one is handed out again
    assert result["ips"][0]["address"] == f"{ep.ipv4}/32" == f"{node.gateway + 1}/32"
    assert (ep.pod_namespace, ep.pod_name, ep.node, ep.id) == ("shop", "cart", node.name, 1)
    links = await asyncio.to_thread(link_names, node.netns)
    assert links[ep.host_ifname] == ep.host_ifindex
    assert srv.endpoints() == [ep]

    # a restarted server (agent) knows the endpoint from its state
    again = CniServer(srv.node)
    assert again.endpoints() == [ep]

    rc, _ = await plugin(cni_env("DEL", "cok", sandbox), conf)
    assert rc == 0 and hooks.deleted == [ep] and srv.endpoints() == []


class DatapathHooks:
    """What the agent does in its hooks: attach the node's programs, fill the endpoint map."""

    IDENTITY = 300

    def __init__(self, node: str) -> None:
        self.programs = Programs(node)
        self.maps = NodeMaps(node)
        self.enforce_egress = True

    def entry(self, ep: Endpoint) -> EndpointEntry:
        return EndpointEntry(ep.id, self.IDENTITY, ep.host_ifindex, False, self.enforce_egress)

    async def on_endpoint_created(self, ep: Endpoint) -> None:
        ifindex = await asyncio.to_thread(attach, self.programs, ep.host_ifname, ep.node_netns)
        assert ifindex == ep.host_ifindex
        self.maps.endpoints.reconcile({ep.ipv4: self.entry(ep)}, ips=[ep.ipv4])

    async def on_endpoint_deleted(self, ep: Endpoint) -> None:
        self.maps.endpoints.reconcile({}, ips=[ep.ipv4])


async def test_hooks_attach_real_programs_before_the_pod_runs(bare_lab: LabState) -> None:
    node = bare_lab.plan.nodes[0]
    hooks = DatapathHooks(node.name)
    srv = CniServer(node_config(node), hooks)
    await srv.start()
    kubelet = Kubelet(bare_lab.name)
    try:
        pod = await asyncio.to_thread(kubelet.create_pod, {
            "metadata": {"name": "guarded", "namespace": "shop"},
            "spec": {"containers": [{"ports": [{"containerPort": 8080}]}]}})
        (ep,) = srv.endpoints()
        assert ep.ipv4 == pod["status"]["podIP"]

        async def probe() -> str:
            # the lab without its external server: the kernel of the external host answers a
            # SYN to a closed port with a RST, "refused" proves the packet got there and back
            proc = await asyncio.to_thread(
                exec_in_pod, "guarded", [CONNECT, str(EXTERNAL_IP), "9", "--timeout", "1"],
                namespace="shop", lab=bare_lab.name, capture=True, timeout=10)
            return proc.stdout.decode().strip()

        assert await probe() == "timeout"          # egress enforced, no policy: dropped
        hooks.enforce_egress = False
        hooks.maps.endpoints.reconcile({ep.ipv4: hooks.entry(ep)}, ips=[ep.ipv4])
        assert await probe() == "refused"          # open: the packet reaches the world
        await asyncio.to_thread(kubelet.delete_pod, "shop", "guarded")
        assert hooks.maps.endpoints.entries() == {}
    finally:
        await srv.stop()
        hooks.programs.close()
