"""The ADD wait's bookkeeping (pure asyncio; the real maps are checked end to end in
tests/lab/agent/test_pod_start.py)."""

from __future__ import annotations

import asyncio

import pytest

from services.nodeagent.endpoints import EndpointNotReadyError
from services.nodeagent.readiness import Readiness
from services.nodeagent.state import LocalEndpoint

EP = LocalEndpoint(7, "10.244.1.7", 11, "lxc7", "shop/cart")


class Maps:
    """What a check would find: per IP, what is still missing (absent: ready)."""

    def __init__(self) -> None:
        self.missing: dict[str, str] = {EP.ip: "the policy of identity 300 is not computed yet"}

    def check(self, ep: LocalEndpoint) -> str | None:
        return self.missing.get(ep.ip)


async def test_wait_returns_once_a_patch_finds_the_endpoint_ready() -> None:
    maps = Maps()
    ready = Readiness("n1", maps.check, timeout_s=5, enabled=True)
    ready.expect(EP)
    waiting = asyncio.create_task(ready.wait(EP))
    ready.patched()                                  # not yet
    await asyncio.sleep(0.05)
    assert not waiting.done()
    del maps.missing[EP.ip]
    ready.patched()                                  # the patch that made it
    await asyncio.wait_for(waiting, 1)
    assert ready.ready == 1 and ready.timeouts == 0


async def test_wait_times_out_naming_the_pod_and_what_was_missing() -> None:
    maps = Maps()
    ready = Readiness("n1", maps.check, timeout_s=0.2, enabled=True)
    ready.expect(EP)
    ready.patched()
    with pytest.raises(EndpointNotReadyError) as exc:
        await ready.wait(EP)
    assert str(exc.value) == ("pod shop/cart: endpoint 7 (10.244.1.7) not ready after 0.2s: "
                              "the policy of identity 300 is not computed yet")
    assert ready.timeouts == 1
    ready.patched()                                  # forgotten: nothing to settle
    assert not ready._waiting


async def test_a_node_without_datapath_fails_at_once() -> None:
    ready = Readiness("n1", Maps().check, timeout_s=30, enabled=True)
    ready.expect(EP)
    with pytest.raises(EndpointNotReadyError, match="cannot be enforced: no programs"):
        await asyncio.wait_for(ready.wait(EP, unavailable="no programs"), 1)


async def test_a_failing_check_is_a_reason_not_a_crash() -> None:
    def broken(ep: LocalEndpoint) -> str | None:
        raise ValueError("bad entry")

    ready = Readiness("n1", broken, timeout_s=0.1, enabled=True)
    ready.expect(EP)
    ready.patched()
    with pytest.raises(EndpointNotReadyError, match="readiness check failed: bad entry"):
        await ready.wait(EP)


async def test_disabled_answers_at_once() -> None:
    ready = Readiness("n1", Maps().check, timeout_s=30, enabled=False)
    ready.expect(EP)
    await asyncio.wait_for(ready.wait(EP), 1)
    assert not ready._waiting
