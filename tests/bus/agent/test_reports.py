"""An agent's endpoint reports on a real bus: one per endpoint, and a restarted agent makes
the bus match its endpoints again."""

from __future__ import annotations

from services.common.bus import Bus
from services.common.contract import (
    agent_endpoint_subject,
    agent_endpoints_filter,
)
from services.nodeagent import reports
from services.nodeagent.endpoints import Endpoint


def _ep(ep_id: int, pod: str, ip: str, node: str = "n1") -> Endpoint:
    return Endpoint(id=ep_id, container_id=f"c{ep_id}", pod_namespace="shop", pod_name=pod,
                    ipv4=ip, gateway="10.244.1.1", host_ifname=f"lxc{ep_id}",
                    host_ifindex=10 + ep_id, host_mac="02:00:00:00:00:01", pod_ifname="eth0",
                    pod_mac="02:00:00:00:00:02", netns_path=f"/run/netns/{pod}", node=node,
                    node_netns="cilia-lab-node1")


async def _reports(bus: Bus, node: str) -> dict[str, tuple[str, dict[str, object]]]:
    snap = await bus.snapshot([agent_endpoints_filter(node)])
    return {s: (d.event.type, d.event.data) for s, d in snap.items()}


async def test_resync_publishes_only_what_differs(bus: Bus) -> None:
    cart, web, gone = _ep(1, "cart", "10.244.1.5"), _ep(2, "web", "10.244.1.6"), \
        _ep(3, "gone", "10.244.1.7")
    await reports.publish(bus, reports.upsert(cart))
    await reports.publish(bus, reports.upsert(gone))
    await reports.publish(bus, reports.upsert(_ep(9, "other", "10.244.2.9", node="n2")))
    # After a restart the node has cart (reported already) and web (created while the
    # agent was down... or its report was lost); gone's endpoint is no more.
    assert await reports.resync(bus, "n1", [cart, web]) == 2
    held = await _reports(bus, "n1")
    assert held[agent_endpoint_subject("n1", "shop", "cart")] == (
        "endpoint.upsert", reports.upsert_payload(cart))
    assert held[agent_endpoint_subject("n1", "shop", "web")] == (
        "endpoint.upsert", reports.upsert_payload(web))
    assert held[agent_endpoint_subject("n1", "shop", "gone")][0] == "endpoint.delete"
    # Another node's reports are not this agent's business.
    assert (await _reports(bus, "n2"))[agent_endpoint_subject("n2", "shop", "other")][0] == \
        "endpoint.upsert"
    assert await reports.resync(bus, "n1", [cart, web]) == 0
