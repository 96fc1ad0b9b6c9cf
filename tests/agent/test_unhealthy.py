"""A datapath that cannot load leaves the agent up, saying why and reporting itself unhealthy."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

from bcc import BPF

from services.cli.controlplane import collect_status
from services.common.bus import Bus
from services.nodeagent.datapath import unpin
from services.nodeagent.datapath.constants import pin_dir
from services.nodeagent.endpoints import NodeConfig
from tests.support.procs import service


async def _agent_status(url: str) -> list[dict[str, object]]:
    bus = await Bus.connect(url, "test")
    try:
        return [r for r in await collect_status(bus) if r["service"] == "nodeagent"]
    finally:
        await bus.close()


def test_incompatible_pinned_map_makes_the_agent_degraded(nats_url: str, tmp_path: Path) -> None:
    node = "bad" + secrets.token_hex(3)
    pins = pin_dir(node)
    pins.mkdir(parents=True, exist_ok=True)
    # A stale pin from an incompatible build: same name, other key and value sizes.
    stale = BPF(text=f'BPF_TABLE_PINNED("hash", u32, u32, policy, 16, "{pins}/policy");'.encode())
    stale.cleanup()
    cfg = NodeConfig(name=node, node_ip="172.31.9.9", pod_cidr="10.250.0.0/24", netns=None,
                     state_dir=str(tmp_path / "state"), socket_path=str(tmp_path / "cni.sock"))
    conf = tmp_path / "node.json"
    conf.write_text(json.dumps(cfg.to_json()))
    try:
        with service("services.nodeagent", nats_url, "--node-config", str(conf),
                     log=tmp_path / "agent.log") as proc:
            replies: list[dict[str, object]] = []
            for _ in range(100):
                replies = asyncio.run(_agent_status(nats_url))
                if replies and replies[0]["state"] == "degraded":
                    break
            assert proc.poll() is None                      # still up
            assert replies and replies[0]["state"] == "degraded"
            error = str(replies[0]["stats"]["error"])  # type: ignore[index]
            assert "datapath unavailable" in error and "policy" in error
    finally:
        unpin(node)
    assert not pins.exists()
