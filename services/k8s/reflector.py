"""A reflector: one kind's objects kept current from the API server by list and watch.

The shape is client-go's reflector, without an informer's queue:

1. LIST the collection in pages (``limit``/``continue``); the list's ``resourceVersion`` is the
   position it describes. The cache becomes the listed objects; what the old cache held and the
   list does not (deleted while nobody watched) is handed on as vanished.
2. WATCH from that position with bookmarks: every ADDED/MODIFIED/DELETED event updates the
   cache and is handed on; a BOOKMARK only advances the position. The watch asks for
   ``timeoutSeconds``, so a silent stream is renewed rather than trusted forever.
3. When the stream ends (its timeout) or breaks (a reset, an event cut in the middle), watch
   again from the last position; nothing is lost or repeated, since the server sends exactly
   the events after it. When the position is gone (410: compacted, or the list's continue token
   expired), list again (1). Any other error waits with exponential backoff and jitter; when
   the sink fails (the bus), the reflector lists again too, so that the sink resyncs.

The reflector talks to the API server through :class:`WatchApi` (the kubernetes_asyncio shell
in :mod:`services.k8s.client`, a fake in the unit tests) and hands changes to a :class:`Sink`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.common.contract import ObjectEvent
from services.k8s.errors import ApiError, BrokenStream, Gone, status_error
from services.k8s.resources import Resource
from services.k8s.view import Key, object_key

log = logging.getLogger(__name__)

LIST_PAGE = 500                 # objects per list page (client-go's default)
WATCH_TIMEOUT_S = 300           # the watch timeout asked of the server (renewed after)
BACKOFF_FIRST_S = 0.2           # the first wait after an error
BACKOFF_MAX_S = 30.0            # the longest wait after repeated errors
BACKOFF_JITTER = 0.5            # each wait is scaled by a random factor in [1-j, 1+j]

ADDED, MODIFIED, DELETED, BOOKMARK, ERROR = "ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"


@dataclass(frozen=True)
class ListPage:
    """One page of a list: its objects, the position it describes, the next page's token."""

    items: list[dict[str, Any]]
    resource_version: str
    continue_token: str | None


class WatchApi(Protocol):
    """List and watch one resource's collection (the API server, or a fake)."""

    async def list(self, resource: Resource, *, limit: int,
                   continue_token: str | None) -> ListPage:
        """One page. Raises :class:`Gone` when the continue token expired, :class:`ApiError`
        on another error status."""
        ...

    def watch(self, resource: Resource, *, resource_version: str,
              timeout_s: int) -> AsyncGenerator[dict[str, Any], None]:
        """The stream's events (``{"type", "object"}``), ending when the server closes it.
        An ERROR event is raised (:class:`Gone` for 410); a stream cut in the middle of an
        event raises :class:`BrokenStream`."""
        ...


class Sink(Protocol):
    """Who hears of a reflector's changes (the publisher)."""

    async def on_change(self, resource: Resource, event_type: ObjectEvent,
                        obj: dict[str, Any]) -> None: ...

    async def on_synced(self, resource: Resource, vanished: list[dict[str, Any]]) -> None: ...


@dataclass
class ReflectorStats:
    """What one reflector did (per kind, in the service's stats)."""

    lists: int = 0          # complete lists (the first one and every relist)
    watches: int = 0        # watch requests
    events: int = 0         # ADDED/MODIFIED/DELETED events
    bookmarks: int = 0
    gone: int = 0           # 410s: positions compacted away
    errors: int = 0         # other errors (each followed by a backoff)
    vanished: int = 0       # objects a relist found deleted while the watch was down

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Backoff:
    """Exponential backoff with jitter: first, 2x first, ... up to a maximum."""

    def __init__(self, first: float = BACKOFF_FIRST_S, maximum: float = BACKOFF_MAX_S,
                 jitter: float = BACKOFF_JITTER, rng: random.Random | None = None) -> None:
        self.first, self.maximum, self.jitter = first, maximum, jitter
        self._rng = rng or random.Random()
        self._attempt = 0

    def next(self) -> float:
        base = min(self.maximum, self.first * (2 ** self._attempt))
        self._attempt += 1
        return base * self._rng.uniform(1 - self.jitter, 1 + self.jitter)

    def reset(self) -> None:
        self._attempt = 0


@dataclass
class Reflector:
    """One resource's list-and-watch loop and its cache (see the module's docstring)."""

    resource: Resource
    api: WatchApi
    sink: Sink
    watch_timeout_s: int = WATCH_TIMEOUT_S
    page: int = LIST_PAGE
    cache: dict[Key, dict[str, Any]] = field(default_factory=dict)
    resource_version: str | None = None       # None: the next step is a list
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    stats: ReflectorStats = field(default_factory=ReflectorStats)
    backoff: Backoff = field(default_factory=Backoff)

    async def run(self) -> None:
        """List and watch until cancelled."""
        kind = self.resource.kind
        while True:
            try:
                if self.resource_version is None:
                    await self.relist()
                await self.watch_once()
                self.backoff.reset()
            except Gone as exc:
                self.stats.gone += 1
                log.info("k8s: %s position %s is gone (%s): listing again", kind,
                         self.resource_version, exc)
                self.resource_version = None
            except (ApiError, BrokenStream, OSError, TimeoutError) as exc:
                self.stats.errors += 1
                wait = self.backoff.next()
                log.warning("k8s: %s %s failed at %s: %s; again in %.1fs", kind,
                            "list" if self.resource_version is None else "watch",
                            self.resource_version, exc, wait)
                await asyncio.sleep(wait)
            except Exception as exc:
                # The sink failed (the bus): what it missed is unknown, so list again, and
                # the sink resyncs once it works.
                self.stats.errors += 1
                self.resource_version = None
                wait = self.backoff.next()
                log.warning("k8s: %s: handing on a change failed (%s); listing again in "
                            "%.1fs", kind, exc, wait)
                await asyncio.sleep(wait)

    async def relist(self) -> None:
        """List every page; replace the cache; hand on the sync with what vanished.
        ``synced`` is set once the sink has taken the first one."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = await self.api.list(self.resource, limit=self.page, continue_token=token)
            items.extend(page.items)
            token = page.continue_token
            if not token:
                break
        listed = {object_key(o): o for o in (self._typed(i) for i in items)}
        vanished = [obj for key, obj in self.cache.items() if key not in listed]
        self.cache = listed
        self.resource_version = page.resource_version
        self.stats.lists += 1
        self.stats.vanished += len(vanished)
        await self.sink.on_synced(self.resource, vanished)
        self.synced.set()

    async def watch_once(self) -> None:
        """One watch request from the current position, until the server ends it."""
        assert self.resource_version is not None
        self.stats.watches += 1
        stream = self.api.watch(self.resource, resource_version=self.resource_version,
                                timeout_s=self.watch_timeout_s)
        async with aclosing(stream):
            async for event in stream:
                await self.handle(event)
                self.backoff.reset()        # the stream works: a later break retries soon

    async def handle(self, event: Mapping[str, Any]) -> None:
        """Apply one watch event to the cache and the position; hand on a change."""
        etype, obj = event.get("type"), event.get("object")
        if etype == ERROR:
            raise status_error(obj)
        if not isinstance(obj, dict):
            raise BrokenStream(f"{self.resource.kind} watch event {etype!r} without an object")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if etype == BOOKMARK:
            self.stats.bookmarks += 1
        elif etype in (ADDED, MODIFIED, DELETED):
            self.stats.events += 1
            obj = self._typed(obj)
            key = object_key(obj)
            if etype == DELETED:
                self.cache.pop(key, None)
                await self.sink.on_change(self.resource, ObjectEvent.DELETE, obj)
            else:
                self.cache[key] = obj
                await self.sink.on_change(self.resource, ObjectEvent.UPSERT, obj)
        else:
            raise BrokenStream(f"{self.resource.kind} watch event of unknown type {etype!r}")
        if rv:
            self.resource_version = str(rv)

    def _typed(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The object with its kind and apiVersion (a list's items carry neither)."""
        if obj.get("kind") == self.resource.kind and "apiVersion" in obj:
            return obj
        return {"apiVersion": self.resource.api_version, "kind": self.resource.kind, **obj}
