"""Synchronous endpoint regeneration: CNI ADD answers only once the new endpoint is enforced.

Cilium's CNI ADD waits until the endpoint's first regeneration is done; so does ours. A new
endpoint enters the endpoint map with the init identity and enforcement on in both directions
(it drops everything; see :meth:`NodeState.desired_endpoints`), and ADD waits until the node's
maps hold, for it:

- its real identity: the pod ipcache entry of its address names this very pod;
- that identity's policy, computed by the policy service (a ``policy.rules`` message, empty
  when nothing selects it);
- the endpoint entry with that identity and its enforcement flags, and every policy entry of
  the identity, written (checked against the maps' mirrors of what was written).

The agent calls :meth:`Readiness.patched` after every successful map patch (under its lock, so
the mirrors are stable) and :meth:`Readiness.wait` from its created hook. After the timeout
ADD fails with :class:`EndpointNotReadyError` naming the pod and what was missing; the agent
rolls the endpoint back and the runtime retries, as a kubelet does.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

from services.common.identities import ID_INIT
from services.nodeagent.datapath.maps.endpoints import encode_endpoints
from services.nodeagent.datapath.maps.policy import encode_policy, policy_partition
from services.nodeagent.datapath.nodemaps import NodeMaps
from services.nodeagent.endpoints import EndpointNotReadyError
from services.nodeagent.state import LocalEndpoint, NodeState

READY_TIMEOUT_ENV = "CILIA_ENDPOINT_READY_TIMEOUT"   # seconds; overrides the default below
DEFAULT_READY_TIMEOUT_S = 15.0   # ADD waits this long for identity and policy, then fails
# "0" makes ADD answer without waiting (the endpoint still starts at deny-all). Only
# bench/pod_start.py sets it, to measure what the wait adds; nothing else may.
SYNC_ENV = "CILIA_ENDPOINT_SYNC"

READY_SECONDS = Histogram("cilia_agent_endpoint_ready_seconds",
                          "CNI ADD: from the endpoint's creation to its identity and policy in "
                          "the maps", ["node"])
READY_TIMEOUTS = Counter("cilia_agent_endpoint_ready_timeouts_total",
                         "CNI ADDs failed because the endpoint was not enforced in time",
                         ["node"])


def not_ready(ep: LocalEndpoint, missing: str,
              timeout_s: float | None = None) -> EndpointNotReadyError:
    """The error ADD fails with: names the pod, its endpoint and what was missing."""
    when = "cannot be enforced" if timeout_s is None else f"not ready after {timeout_s:g}s"
    return EndpointNotReadyError(f"pod {ep.pod}: endpoint {ep.endpoint_id} ({ep.ip}) {when}: "
                                 f"{missing}")


def ready_timeout() -> float:
    """The configured ADD wait (``$CILIA_ENDPOINT_READY_TIMEOUT`` or the default)."""
    return float(os.environ.get(READY_TIMEOUT_ENV, DEFAULT_READY_TIMEOUT_S))


def sync_enabled() -> bool:
    return os.environ.get(SYNC_ENV, "1") != "0"


def missing(state: NodeState, maps: NodeMaps | None, ep: LocalEndpoint) -> str | None:
    """What keeps ``ep`` from being enforced with its real identity (None: nothing).

    Reads the state and the maps' mirrors: call it where neither changes underneath (the
    agent's event loop, holding its patch lock).
    """
    if maps is None:
        return "the node's datapath is not loaded"
    ident = state.endpoint_identity(ep)
    if ident == ID_INIT:
        rec = state.ipcache.get(f"{ep.ip}/32")
        if rec is None:
            return f"no identity yet: the ipcache has no entry for {ep.ip}"
        return (f"no identity yet: the ipcache entry for {ep.ip} names "
                f"{rec.pod or rec.origin + ' addresses'}, not {ep.pod}")
    if not state.policy_computed(ident):
        return f"the policy of identity {ident} is not computed yet"
    want = encode_endpoints(state.desired_endpoints([ep]))
    held = maps.endpoints.reconciler.actual()
    if any(held.get(k) != v for k, v in want.items()):
        return f"the endpoint map does not hold identity {ident} for {ep.ip} yet"
    desired = encode_policy(state.desired_policy([ident]))
    have = {k: v for k, v in maps.policy.reconciler.actual().items()
            if policy_partition(k) == ident}
    if have != desired:
        absent = sum(1 for k, v in desired.items() if have.get(k) != v)
        extra = sum(1 for k in have if k not in desired)
        return (f"the policy map differs from the computed policy of identity {ident} "
                f"({absent} of {len(desired)} entries missing, {extra} extra)")
    return None


@dataclass
class _Waiter:
    ep: LocalEndpoint
    done: asyncio.Future[None]
    since: float
    missing: str = "no map patch yet"


class Readiness:
    """The endpoints whose CNI ADD waits, and the check run after every map patch.

    Args:
        node: the node's name (metrics label).
        check: what is missing for an endpoint (None: ready), as :func:`missing` says.
        timeout_s: how long :meth:`wait` waits (default :func:`ready_timeout`).
        enabled: False answers at once (default :func:`sync_enabled`).
    """

    def __init__(self, node: str, check: Callable[[LocalEndpoint], str | None],
                 timeout_s: float | None = None, enabled: bool | None = None) -> None:
        self.node = node
        self.check = check
        self.timeout_s = ready_timeout() if timeout_s is None else timeout_s
        self.enabled = sync_enabled() if enabled is None else enabled
        self._waiting: dict[str, _Waiter] = {}
        self.ready = 0
        self.timeouts = 0

    def expect(self, ep: LocalEndpoint) -> None:
        """Start watching a new endpoint (before the patch that first writes it)."""
        self._waiting[ep.ip] = _Waiter(ep, asyncio.get_running_loop().create_future(),
                                       time.monotonic())

    def forget(self, ep: LocalEndpoint) -> None:
        waiter = self._waiting.pop(ep.ip, None)
        if waiter is not None and not waiter.done.done():
            waiter.done.cancel()

    def patched(self) -> None:
        """The maps were just patched: settle every endpoint that is now enforced."""
        for waiter in self._waiting.values():
            if waiter.done.done():
                continue
            try:
                reason = self.check(waiter.ep)
            except Exception as exc:  # a bad entry must not break the patch path
                reason = f"readiness check failed: {exc}"
            if reason is None:
                waiter.done.set_result(None)
            else:
                waiter.missing = reason

    async def wait(self, ep: LocalEndpoint, unavailable: str | None = None) -> None:
        """Return once ``ep`` is enforced with its real identity and computed policy.

        Args:
            unavailable: why the node cannot enforce anything (its datapath did not load):
                fail at once instead of after the timeout.

        Raises:
            EndpointNotReadyError: not within the timeout; names what was still missing.
        """
        waiter = self._waiting.get(ep.ip)
        if waiter is None:
            return      # not expected: nothing waits for it
        if not self.enabled:
            self.forget(ep)
            return
        if unavailable is not None:
            self.forget(ep)
            raise not_ready(ep, unavailable)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.done), self.timeout_s)
        except TimeoutError:
            self.timeouts += 1
            READY_TIMEOUTS.labels(self.node).inc()
            raise not_ready(ep, waiter.missing, self.timeout_s) from None
        finally:
            self.forget(ep)
        self.ready += 1
        READY_SECONDS.labels(self.node).observe(time.monotonic() - waiter.since)
