"""On a running lab, a role that does not own a subject cannot change the kernel's maps
through it: the bus refuses the publish, and nothing moves in any map of the node."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from services.common.bus import Bus
from services.common.contract import (
    HISTORY_STREAM,
    agent_realized_subject,
    identity_subject,
    ipcache_subject,
    policy_rules_subject,
    source_subject,
)
from services.common.errors import PermissionDenied
from services.common.roles import CLI, LB, POLICY, SOURCE, agent_role
from services.nodeagent.datapath import open_maps
from services.nodeagent.datapath.lb import LbMaps
from tests.support.cluster import Cluster
from tests.support.procs import REPO

EXAMPLES = REPO / "examples" / "three-tier"
NS = "production"


def _kernel(node: str) -> dict[str, Any]:
    """Every map of the node the bus can change, as the kernel holds it."""
    with open_maps(node) as maps:
        out: dict[str, Any] = {"ipcache": maps.ipcache.entries(),
                               "endpoints": maps.endpoints.entries(),
                               "policy": maps.policy.blocks()}
    with LbMaps(node) as lb:
        out["lb_services"] = lb.service_entries()
        out["lb_backends"] = lb.backend_entries()
    return out


def _node(name: str) -> dict[str, Any]:
    obj = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "spec": {"podCIDR": "10.244.99.0/24"},
           "status": {"addresses": [{"type": "InternalIP", "address": "172.31.0.99"}]}}
    return {"kind": "Node", "namespace": "", "name": name, "object": obj}


async def _last_seq(bus: Bus) -> int:
    return (await bus.js.stream_info(HISTORY_STREAM)).state.last_seq


async def _refused(bus: Bus, subject: str, event_type: str, data: dict[str, Any]) -> bool:
    try:
        await bus.publish(subject, event_type, data, msg_id=f"forged/{uuid.uuid4()}")
    except PermissionDenied as exc:
        assert subject in str(exc)
        return True
    return False


def test_an_agent_cannot_publish_policy_and_no_map_changes(lab: Cluster) -> None:
    lab.ok("apply", "-f", str(EXAMPLES / "00-namespace.yaml"), "-f",
           str(EXAMPLES / "deployments.yaml"), "-f", str(EXAMPLES / "services.yaml"),
           "-f", str(EXAMPLES / "policy.yaml"))
    lab.wait("backend and database enforced", lambda: sum(
        e["ingress_enforcement"] for e in lab.endpoints()) == 2)
    lab.settle()
    node = f"{lab.lab}-node1"
    eps = {e["pod"].split("/")[1].split("-")[0]: e for e in lab.endpoints()
           if e["pod"].startswith(f"{NS}/")}
    backend, frontend = eps["backend"], eps["frontend"]
    before = _kernel(node)

    async def forge() -> tuple[list[bool], int, int]:
        agent, lb, src = (await lab.bus(agent_role(node), "forger"),
                          await lab.bus(LB, "forger"), await lab.bus(SOURCE, "forger"))
        reader = await lab.bus(CLI)
        try:
            seq = await _last_seq(reader)
            rules = policy_rules_subject(backend["identity"])
            # backend's policy emptied (it would be open to everyone), as the agent and as lb
            open_backend = {"identity": backend["identity"], "revision": 10**6, "rules": []}
            results = [await _refused(agent, rules, "policy.rules", open_backend),
                       await _refused(lb, rules, "policy.rules", open_backend),
                       # the database's address given the frontend's identity
                       await _refused(agent, ipcache_subject(f"{eps['database']['ipv4']}/32"),
                                      "ipcache.upsert", {
                                          "prefix": f"{eps['database']['ipv4']}/32",
                                          "identity": frontend["identity"]}),
                       # an identity, as the source
                       await _refused(src, identity_subject(frontend["identity"]),
                                      "identity.upsert", {"id": frontend["identity"],
                                                          "labels": ["k8s:app=backend"]}),
                       # another node's realized report and its Node object, as this agent
                       await _refused(agent, agent_realized_subject("other"),
                                      "agent.realized", {"node": "other", "revision": seq}),
                       await _refused(agent, source_subject("Node", "", "other"),
                                      "object.upsert", _node("other"))]
            return results, seq, await _last_seq(reader)
        finally:
            for bus in (agent, lb, src, reader):
                await bus.close()

    refused, seq_before, seq_after = asyncio.run(forge())
    assert refused == [True] * len(refused)
    assert seq_after == seq_before                  # nothing reached the history
    lab.settle()
    assert _kernel(node) == before                  # nothing moved in any map

    # The same policy message from the policy role does reach the kernel: what was refused
    # above would have opened the backend.
    async def as_policy() -> None:
        bus = await lab.bus(POLICY, "stand-in")
        try:
            await bus.publish(policy_rules_subject(backend["identity"]), "policy.rules",
                              {"identity": backend["identity"], "revision": 10**6, "rules": []},
                              msg_id=f"control/{uuid.uuid4()}")
        finally:
            await bus.close()

    asyncio.run(as_policy())
    lab.wait("the policy role's message in the kernel",
             lambda: _kernel(node)["policy"] != before["policy"])
