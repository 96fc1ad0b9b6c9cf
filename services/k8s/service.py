"""The ``k8s`` service: the Kubernetes watcher, a source of cluster objects on the bus.

One :class:`~services.k8s.reflector.Reflector` per watched kind (Namespaces, Nodes, Pods,
Services, EndpointSlices, NetworkPolicies, CiliumNetworkPolicies,
CiliumClusterwideNetworkPolicies) keeps a cache current from the API server; the
:class:`~services.k8s.publisher.Publisher` puts their changes on the bus as ``object.upsert``
and ``object.delete`` events, exactly as ``cilia apply`` does, as the ``source`` role.

Without leader election the publisher leads from the start. With it, an :class:`Elector`
(the Lease-based one in ``services.k8s.leader``) decides: every replica reflects, only the
leader publishes, and a new leader resyncs with the bus before anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from kubernetes_asyncio.client import ApiClient, Configuration

from services.common.bus import Bus, Subscription
from services.common.contract import POLICY_KINDS
from services.common.contract.policy import PolicyStatus
from services.common.runner import STATE_OK, STATE_STARTING
from services.k8s.client import ApiServer
from services.k8s.feedback import PolicyFeedback
from services.k8s.feedback import subscribe as subscribe_feedback
from services.k8s.publisher import Publisher
from services.k8s.reflector import WATCH_TIMEOUT_S, Reflector, WatchApi
from services.k8s.resources import RESOURCES, Resource

log = logging.getLogger(__name__)
MAX_ERROR = 1000     # characters of a refusal written back (Events hold up to 1 KiB)

Callback = Callable[[], Awaitable[None]]


class Elector(Protocol):
    """A leader elector (``services.k8s.leader.LeaseElector``)."""

    async def run(self, on_started_leading: Callback, on_stopped_leading: Callback) -> None:
        ...


class K8sWatcher:
    """The ``k8s`` service (see the module's docstring).

    Args:
        config: how to reach the API server (:func:`services.k8s.client.load_configuration`).
        api: list and watch through this instead (tests); ``config`` is then unused.
        elector: gate publishing on leadership; None publishes from the start.
        watch_timeout_s: the timeout each watch asks of the server.
    """

    name = "k8s"

    def __init__(self, config: Configuration | None = None, *, api: WatchApi | None = None,
                 elector: Elector | None = None, resources: Sequence[Resource] = RESOURCES,
                 watch_timeout_s: int = WATCH_TIMEOUT_S,
                 elector_factory: Callable[[ApiClient], Elector] | None = None,
                 feedback: bool = False) -> None:
        if config is None and api is None:
            raise ValueError("K8sWatcher needs a configuration or an api")
        self.config = config
        self.api = api
        self.elector = elector
        self.elector_factory = elector_factory
        self.feedback = feedback
        self._feedback_sub: Subscription | None = None
        self._feedback: PolicyFeedback | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self.resources = tuple(resources)
        self.watch_timeout_s = watch_timeout_s
        self.reflectors: dict[str, Reflector] = {}
        self.publisher: Publisher | None = None
        self._server: ApiServer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, bus: Bus) -> None:
        if self.api is None:
            assert self.config is not None
            self._server = ApiServer(self.config)
            self.api = self._server
        publisher = Publisher(bus, self.reflectors, on_rejected=self._rejected)
        self.publisher = publisher
        if self.elector is None and self.elector_factory is not None and self._server:
            self.elector = self.elector_factory(self._server.client)
        if self.feedback and self._server is not None:
            # the policy service's verdicts back to Kubernetes, by the leader only
            self._feedback = PolicyFeedback(self._server.client)
            self._feedback_sub = await subscribe_feedback(
                bus, self._feedback, lambda: publisher.leading, self._policy_uid)
        for resource in self.resources:
            self.reflectors[resource.kind] = Reflector(
                resource, self.api, publisher, watch_timeout_s=self.watch_timeout_s)
        if self.elector is None:
            await publisher.start_leading()    # each kind resyncs once it is listed
        else:
            self._tasks.append(asyncio.create_task(
                self.elector.run(publisher.start_leading, publisher.stop_leading),
                name="k8s-elector"))
        self._tasks += [asyncio.create_task(r.run(), name=f"k8s-{r.resource.plural}")
                        for r in self.reflectors.values()]

    async def synced(self) -> None:
        """Return once every kind has been listed (and, when leading, resynced)."""
        await asyncio.gather(*(r.synced.wait() for r in self.reflectors.values()))

    def _rejected(self, obj: dict[str, Any], message: str) -> None:
        """A policy the watcher itself refuses to publish (it would not pass ``cilia apply``
        either): the policy service never sees it, so its Event is written from here."""
        kind, meta = obj.get("kind"), obj.get("metadata") or {}
        if self._feedback is None or kind not in POLICY_KINDS or self.publisher is None \
                or not self.publisher.leading:
            return
        try:
            status = PolicyStatus(kind=kind, namespace=meta.get("namespace") or "",
                                  name=meta.get("name") or "", revision=0, op="error",
                                  error=message[:MAX_ERROR])
        except (ValueError, TypeError) as exc:   # a name the bus would refuse anyway
            log.warning("k8s: no write-back for %s: %s", kind, exc)
            return
        task = asyncio.create_task(self._write_back(status, meta.get("uid")))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write_back(self, status: PolicyStatus, uid: str | None) -> None:
        assert self._feedback is not None
        try:
            await self._feedback.on_status(status, uid)
        except Exception as exc:   # the API server said no: logged, the watcher goes on
            log.warning("k8s: writing back why %s/%s was refused failed: %s",
                        status.namespace, status.name, exc)

    def _policy_uid(self, status: PolicyStatus) -> str | None:
        """The uid of a verdict's policy, from the reflector's cache (saves a read)."""
        reflector = self.reflectors.get(status.kind)
        if reflector is None:
            return None
        for obj in reflector.cache.values():
            meta = obj.get("metadata") or {}
            if meta.get("name") == status.name and (meta.get("namespace") or "") == \
                    status.namespace:
                uid = meta.get("uid")
                return str(uid) if uid else None
        return None

    async def stop(self) -> None:
        if self._feedback_sub is not None:
            await self._feedback_sub.stop()
            self._feedback_sub = None
        for write in list(self._writes):
            write.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks = []
        if self._server is not None:
            await self._server.close()
            self._server = None

    def state(self) -> str:
        listed = self.reflectors and all(r.synced.is_set() for r in self.reflectors.values())
        return STATE_OK if listed else STATE_STARTING

    def stats(self) -> dict[str, Any]:
        counts = self.publisher.counts if self.publisher else {}
        kinds: dict[str, dict[str, int]] = {}
        for kind, r in self.reflectors.items():
            c = counts.get(kind)
            kinds[kind] = {"objects": len(r.cache), **r.stats.as_dict(),
                           **(c.as_dict() if c else {})}
        total = {f: sum(k.get(f, 0) for k in kinds.values())
                 for f in ("objects", "published", "deleted", "skipped", "lists", "gone",
                           "errors")}
        return {"leading": bool(self.publisher and self.publisher.leading),
                "relists": sum(max(0, r.stats.lists - 1) for r in self.reflectors.values()),
                **total, "kinds": kinds}
