"""A datapath that cannot load leaves the agent up, saying why and reporting itself unhealthy;
it realizes nothing meanwhile, retries, and comes up once the cause is gone."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from bcc import BPF

from services.cli.controlplane import collect_status
from services.common.bus import Bus
from services.common.identities import ID_HOST
from services.nodeagent.datapath import NodeMaps, unpin
from services.nodeagent.datapath.constants import pin_dir
from services.nodeagent.dnsservice import PROXY_ENV
from services.nodeagent.endpoints import NodeConfig
from tests.support.procs import service

POLL_S = 0.5
RECOVERY_POLLS = 120     # the datapath's retries back off up to a minute; it comes in less


async def _agent_status(url: str) -> list[dict[str, object]]:
    bus = await Bus.connect(url, "test")
    try:
        return [r for r in await collect_status(bus) if r["service"] == "nodeagent"]
    finally:
        await bus.close()


def test_incompatible_pinned_map_makes_the_agent_degraded_until_it_goes(nats_url: str,
                                                                        tmp_path: Path) -> None:
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
                     env={**os.environ, PROXY_ENV: "off"},   # the root netns: hands off
                     log=tmp_path / "agent.log") as proc:
            replies: list[dict[str, object]] = []
            for _ in range(100):
                replies = asyncio.run(_agent_status(nats_url))
                if replies and replies[0]["state"] == "degraded":
                    break
            assert proc.poll() is None                      # still up
            assert replies and replies[0]["state"] == "degraded"
            stats: dict[str, Any] = replies[0]["stats"]  # type: ignore[assignment]
            assert "datapath unavailable" in stats["error"] and "policy" in stats["error"]
            assert set(stats["errors"]) == {"datapath"}
            # It folded its own Node, and wrote nothing: it does not claim it realized it.
            assert stats["revision"] >= 1 and stats["realized"] == 0
            # The stale pin goes: a retry loads the datapath, without a restart or an event.
            stale_id = os.stat(pins / "policy").st_ino
            (pins / "policy").unlink()
            for _ in range(RECOVERY_POLLS):
                replies = asyncio.run(_agent_status(nats_url))
                if replies and replies[0]["state"] == "ok":
                    break
                time.sleep(POLL_S)
            assert replies and replies[0]["state"] == "ok", replies
            stats = replies[0]["stats"]  # type: ignore[assignment]
            assert stats["errors"] == {} and stats["retries"]["datapath"] >= 1
            assert stats["realized"] == stats["revision"] >= 1
            assert os.stat(pins / "policy").st_ino != stale_id
            with NodeMaps(node) as maps:
                assert maps.ipcache.entries()[f"{cfg.node_ip}/32"].identity == ID_HOST
    finally:
        unpin(node)
    assert not pins.exists()
