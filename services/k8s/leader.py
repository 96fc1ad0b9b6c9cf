"""Leader election over a ``coordination.k8s.io/v1`` Lease: the shell around
:mod:`services.k8s.election`.

The watcher runs with two replicas and exactly one may publish. :class:`LeaseElector` runs
client-go's algorithm (see :mod:`services.k8s.election` for the rules):

* a candidate reads the Lease every ``retry_period``; it creates it when absent and writes
  itself in when the lease is free or lapsed, by a PUT conditional on the ``resourceVersion``
  it read (409 Conflict: another candidate won; it reads again next round);
* the leader renews every ``retry_period``. If it sees another holder it stops at once; if its
  renewals fail for ``renew_deadline`` (API server unreachable, conflicts) it stops too, which
  is before any standby may take over (``lease_duration`` after the last renewal it saw);
* "stops" means: :attr:`LeaseElector.leading` is cleared, the ``on_started_leading`` task is
  cancelled, ``on_stopped_leading`` runs; then the elector stands for election again;
* on cancellation the lease is released (no holder, one-second lease) so that the standby
  takes over at its next read instead of waiting out the lease.

kubernetes_asyncio ships ``kubernetes_asyncio.leaderelection`` but it is not used: it compares
wall-clock times, never releases the lease, keeps no ``leaseTransitions``, and goes on trying
to renew when it sees another holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from .election import (
    LeaseRecord,
    Observation,
    check_timings,
    claim,
    lease_object,
    observe,
    release,
    takeable,
)

log = logging.getLogger(__name__)

HTTP_NOT_FOUND = 404
HTTP_CONFLICT = 409
Callback = Callable[[], Awaitable[None]]


def default_identity() -> str:
    """``<hostname>_<pid>_<random>``: unique even for two candidates in one pod."""
    return f"{socket.gethostname()}_{os.getpid()}_{secrets.token_hex(4)}"


class Attempt(enum.Enum):
    """How one try to take or renew the lease went."""

    HELD = "held"            # this candidate holds the lease now
    TAKEN = "taken"          # another candidate holds it (and has not let it lapse)
    FAILED = "failed"        # conflict or API error: nothing is known, try again


class LeaseElector:
    """One candidate for the leadership held in the Lease ``namespace/name``.

    Args:
        api_client: a kubernetes_asyncio client (the caller owns and closes it).
        identity: this candidate's ``holderIdentity`` (default :func:`default_identity`).
        lease_duration: seconds a standby waits after the last renewal it saw.
        renew_deadline: seconds of failed renewals after which the leader stops leading.
        retry_period: seconds between tries (to take, and to renew).
        release_on_cancel: give the lease up when :meth:`run` is cancelled.

    Raises:
        ElectionConfigError: timings under which two candidates could lead at once.
    """

    def __init__(self, api_client: ApiClient, namespace: str, name: str,
                 identity: str | None = None, lease_duration: float = 15,
                 renew_deadline: float = 10, retry_period: float = 2, *,
                 release_on_cancel: bool = True) -> None:
        check_timings(lease_duration, renew_deadline, retry_period)
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.release_on_cancel = release_on_cancel
        self.leading = asyncio.Event()
        self._client = api_client
        # Any: the generated stubs want a V1Lease; the methods take the Lease as a dict,
        # which keeps MicroTime's six fractional digits (isoformat drops them at .000000).
        self._api: Any = CoordinationV1Api(api_client)
        self._observed: Observation | None = None
        self._metadata: dict[str, Any] | None = None    # of the Lease as last read or written

    @property
    def is_leader(self) -> bool:
        """Whether this candidate leads now (the same as ``leading.is_set()``)."""
        return self.leading.is_set()

    @property
    def holder(self) -> str:
        """The holder this candidate last saw ("" when nobody holds the lease)."""
        return self._observed.record.holder if self._observed else ""

    @property
    def _duration_s(self) -> int:
        return max(1, round(self.lease_duration))

    async def run(self, on_started_leading: Callback, on_stopped_leading: Callback) -> None:
        """Stand for election until cancelled.

        Each time this candidate becomes leader, ``on_started_leading()`` runs as a task
        (a long-running one is cancelled when leadership ends; one that returns leaves the
        candidate leading); when leadership ends, ``leading`` is cleared first and then
        ``on_stopped_leading()`` is awaited.

        Raises:
            Exception: whatever ``on_started_leading`` raised (after the lease is released).
        """
        try:
            while True:
                await self._acquire()
                failure = await self._lead(on_started_leading, on_stopped_leading)
                if failure is not None:
                    await self._release()
                    raise failure
        except asyncio.CancelledError:
            if self.release_on_cancel:
                await self._release()
            raise

    async def _acquire(self) -> None:
        """Return once this candidate holds the lease."""
        while True:
            if await self._try(self.renew_deadline) is Attempt.HELD:
                log.info("%s: now leads (lease %s/%s)", self.identity, self.namespace, self.name)
                return
            await asyncio.sleep(self.retry_period)

    async def _lead(self, on_started: Callback, on_stopped: Callback) -> BaseException | None:
        """Lead until the lease is lost (None) or ``on_started`` fails (its exception)."""
        renewed = time.monotonic()       # the start of the last successful write
        self.leading.set()
        work = asyncio.ensure_future(on_started())
        try:
            while True:
                if work.done():     # a callback that only announced the news
                    await asyncio.sleep(self.retry_period)
                else:
                    await asyncio.wait({work}, timeout=self.retry_period)
                if work.done() and not work.cancelled() and work.exception() is not None:
                    log.error("%s: stops leading: on_started_leading failed: %r",
                              self.identity, work.exception())
                    return work.exception()
                start = time.monotonic()
                left = renewed + self.renew_deadline - start
                outcome = await self._try(left) if left > 0 else Attempt.FAILED
                if outcome is Attempt.HELD:
                    renewed = start
                elif outcome is Attempt.TAKEN:
                    log.warning("%s: stops leading: %s holds the lease", self.identity,
                                self.holder)
                    return None
                elif time.monotonic() >= renewed + self.renew_deadline:
                    log.warning("%s: stops leading: no renewal for %.1fs", self.identity,
                                self.renew_deadline)
                    return None
        finally:
            self.leading.clear()
            if not work.done():
                work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            await on_stopped()

    async def _try(self, timeout: float) -> Attempt:
        """Read the lease and write this candidate in if it may (within ``timeout`` s)."""
        try:
            async with asyncio.timeout(timeout):
                return await self._try_acquire_or_renew()
        except ApiException as exc:
            if exc.status != HTTP_CONFLICT:
                log.warning("%s: lease %s/%s: %s %s", self.identity, self.namespace,
                            self.name, exc.status, exc.reason)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("%s: lease %s/%s: %r", self.identity, self.namespace, self.name, exc)
        return Attempt.FAILED

    async def _try_acquire_or_renew(self) -> Attempt:
        now = time.monotonic()
        wall = datetime.now(UTC)
        try:
            lease = await self._api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != HTTP_NOT_FOUND:
                raise
            mine = claim(None, self.identity, self._duration_s, wall)
            created = await self._api.create_namespaced_lease(
                self.namespace, lease_object(self.namespace, self.name, mine))
            self._wrote(created, mine, now)
            return Attempt.HELD
        data = self._client.sanitize_for_serialization(lease)
        record = LeaseRecord.from_spec(data.get("spec"))
        self._observed = observe(self._observed, record, now)
        self._metadata = data.get("metadata")
        if not takeable(self._observed, self.identity, now):
            return Attempt.TAKEN
        mine = claim(record, self.identity, self._duration_s, wall)
        written = await self._api.replace_namespaced_lease(
            self.name, self.namespace,
            lease_object(self.namespace, self.name, mine, self._metadata))
        self._wrote(written, mine, now)
        return Attempt.HELD

    def _wrote(self, lease: Any, record: LeaseRecord, now: float) -> None:
        self._observed = Observation(record, now)
        self._metadata = self._client.sanitize_for_serialization(lease).get("metadata")

    async def _release(self) -> None:
        """Give the lease up if this candidate holds it (best effort, bounded in time)."""
        if self._observed is None or self._observed.record.holder != self.identity:
            return
        given_up = release(self._observed.record, datetime.now(UTC))
        with contextlib.suppress(ApiException, aiohttp.ClientError, OSError, TimeoutError):
            async with asyncio.timeout(self.renew_deadline):
                await self._api.replace_namespaced_lease(
                    self.name, self.namespace,
                    lease_object(self.namespace, self.name, given_up, self._metadata))
                self._observed = Observation(given_up, time.monotonic())
                log.info("%s: released lease %s/%s", self.identity, self.namespace, self.name)
