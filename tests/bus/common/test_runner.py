"""The service runner: heartbeats, Prometheus metrics, clean shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import urllib.request
from pathlib import Path

from services.cli.controlplane import collect_status
from services.common.bus import Bus
from services.common.embedded import free_port
from tests.support.procs import start_service


async def test_heartbeat_metrics_and_sigterm(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    port = free_port()
    proc = start_service("services.identity", nats_url, "--metrics-port", str(port),
                         "--replica", "hb-1", log=tmp_path / "identity.log")
    try:
        replies: list[dict[str, object]] = []
        for _ in range(100):
            replies = [r for r in await collect_status(bus) if r["replica"] == "hb-1"]
            if replies and replies[0]["state"] == "ok":
                break
        assert replies[0]["service"] == "identity" and replies[0]["pid"] == proc.pid
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
            .read().decode())
        assert 'cilia_bus_messages_total{outcome="handled",service="identity"}' in body
        assert "cilia_identity_allocations_total" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 10)
    assert code == 0                                  # a clean shutdown
    assert not [r for r in await collect_status(bus) if r["replica"] == "hb-1"]
