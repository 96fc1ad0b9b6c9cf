"""The publish side of the watcher: what the reflectors see, on the bus, only while leading.

The reflectors always run and keep their caches, on every replica. The :class:`Publisher`
publishes only while :attr:`Publisher.leading` is set: with ``--no-leader-elect`` from the
start, else while the leader elector says this replica leads (:meth:`start_leading` and
:meth:`stop_leading` are its callbacks). On becoming leader, and after each (re)list of a
kind, it *resyncs*: it reads what the bus holds of the kind (:meth:`Bus.snapshot`) and
publishes only the difference (:func:`services.k8s.view.plan`), deletes included for
objects removed while nobody watched. In between, each watch event is published when its
relevant view differs from what the bus holds.

Every object passes the checks ``cilia apply`` runs before it is published
(:func:`services.k8s.kinds.validate_document`, the bus's own payload check, the bus's message
size); a malformed one is counted, logged with the field at fault and skipped whole, and the
bus keeps what it held of it. One lock orders resyncs and events, so an older version never
overtakes a newer one on a subject.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from services.common.bus import Bus, Outgoing
from services.common.codec import encode
from services.common.contract import ObjectEvent, source_filter, validate
from services.common.errors import CiliaError
from services.common.objects import ObjectError
from services.k8s.kinds import validate_document
from services.k8s.reflector import Reflector
from services.k8s.resources import Resource
from services.k8s.view import (
    Change,
    Key,
    delete,
    differs,
    event_data,
    object_key,
    plan,
    published_form,
    upsert,
)

log = logging.getLogger(__name__)

HEADER_ALLOWANCE = 1024     # bytes of a message taken by its headers (id, trace context)


@dataclass
class KindCounts:
    """What the publisher did for one kind."""

    published: int = 0      # upserts stored
    deleted: int = 0        # deletes stored
    duplicates: int = 0     # events JetStream already had (another replica, a retry)
    unchanged: int = 0      # watch events with nothing cilia consumes changed
    skipped: int = 0        # malformed objects, not published
    resyncs: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Publisher:
    """Publishes the reflectors' objects (see the module's docstring).

    Args:
        reflectors: kind -> its reflector, whose cache is what the API server holds.
    """

    def __init__(self, bus: Bus, reflectors: Mapping[str, Reflector],
                 on_rejected: Callable[[dict[str, Any], str], None] | None = None) -> None:
        self.bus = bus
        self.reflectors = reflectors
        self.on_rejected = on_rejected   # told of each malformed object (and why)
        self.leading = False
        self.counts: dict[str, KindCounts] = {}
        self._held: dict[Key, dict[str, Any]] = {}    # what the bus holds, as read or published
        self._lock = asyncio.Lock()

    def count(self, kind: str) -> KindCounts:
        return self.counts.setdefault(kind, KindCounts())

    # -- leadership ------------------------------------------------------------------------

    async def start_leading(self) -> None:
        """Start publishing: resync every kind listed so far (the others resync when their
        first list completes)."""
        async with self._lock:
            self.leading = True
            kinds = [k for k, r in self.reflectors.items() if r.synced.is_set()]
            log.info("k8s: publishing (resync of %s)", ", ".join(kinds) or "nothing yet")
            if kinds:
                await self._resync(kinds)

    async def stop_leading(self) -> None:
        """Stop publishing; what the bus holds is another leader's to change now."""
        self.leading = False
        async with self._lock:
            self._held.clear()
        log.info("k8s: not publishing (not the leader)")

    # -- what the reflectors hand on (the reflector's Sink) ---------------------------------

    async def on_change(self, resource: Resource, event_type: ObjectEvent,
                        obj: dict[str, Any]) -> None:
        if not self.leading:
            return
        async with self._lock:
            if not self.leading:
                return
            key = object_key(obj)
            if event_type == ObjectEvent.DELETE:
                if key in self._held:
                    await self._publish([delete(obj)])
                return
            form = self._prepare(obj)
            if form is None:
                return
            if not differs(form, self._held.get(key)):
                self.count(resource.kind).unchanged += 1
                return
            await self._publish([upsert(form)])

    async def on_synced(self, resource: Resource, vanished: list[dict[str, Any]]) -> None:
        for obj in vanished:
            log.info("k8s: %s %s was deleted while the watch was down", resource.kind,
                     "/".join(object_key(obj)[1:]).lstrip("/"))
        if not self.leading:
            return
        async with self._lock:
            if self.leading:
                await self._resync([resource.kind])

    # -- resync and publishing ---------------------------------------------------------------

    async def _resync(self, kinds: list[str]) -> None:
        """Read what the bus holds of ``kinds``; publish the difference to the caches."""
        snap = await self.bus.snapshot([source_filter(k) for k in kinds])
        scope = set(kinds)
        self._held = {k: v for k, v in self._held.items() if k[0] not in scope}
        for d in snap.values():
            data = d.event.data
            if d.event.type == ObjectEvent.UPSERT and isinstance(data.get("object"), dict):
                self._held[(data["kind"], data["namespace"], data["name"])] = data["object"]
        desired, keep = [], []
        for kind in kinds:
            self.count(kind).resyncs += 1
            for key, obj in self.reflectors[kind].cache.items():
                form = self._prepare(obj)
                if form is None:
                    keep.append(key)
                else:
                    desired.append(form)
        changes = plan(desired, self._held, kinds, keep)
        if changes:
            log.info("k8s: resync of %s: %d upserts, %d deletes", ", ".join(kinds),
                     sum(c.event_type == ObjectEvent.UPSERT for c in changes),
                     sum(c.event_type == ObjectEvent.DELETE for c in changes))
        await self._publish(changes)

    def _prepare(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """The object as it would be published, checked as ``cilia apply`` checks it; None
        (counted, logged with the field at fault) when it is malformed."""
        kind, namespace, name = object_key(obj)
        meta = obj.get("metadata") or {}
        try:
            form = validate_document(published_form(obj))
            data = event_data(form)
            validate(ObjectEvent.UPSERT, data)
            size = len(encode(ObjectEvent.UPSERT, data)) + HEADER_ALLOWANCE
            if size > self.bus.nc.max_payload:
                raise ObjectError("", f"too large for the bus ({size} bytes with headers, "
                                      f"max_payload {self.bus.nc.max_payload})")
        except (ObjectError, CiliaError) as exc:
            self.count(kind).skipped += 1
            log.warning("k8s: skipping %s %s (uid %s, resourceVersion %s): %s", kind,
                        f"{namespace}/{name}" if namespace else name, meta.get("uid"),
                        meta.get("resourceVersion"), exc)
            if self.on_rejected is not None:
                self.on_rejected(obj, str(exc))
            return None
        return form

    def _checked(self, change: Change) -> bool:
        """Whether the bus will take the change's event (an upsert is checked before, by
        :meth:`_prepare`; a delete only here)."""
        try:
            validate(change.event_type, event_data(change.obj))
        except CiliaError as exc:
            self.count(change.key[0]).skipped += 1
            log.warning("k8s: not publishing %s of %s: %s", change.event_type,
                        "/".join(change.key), exc)
            return False
        return True

    async def _publish(self, changes: list[Change]) -> None:
        changes = [c for c in changes if self._checked(c)]
        if not changes:
            return
        items = [Outgoing(c.subject, c.event_type, event_data(c.obj), c.msg_id) for c in changes]
        acks = await self.bus.publish_batch(items)
        for change, ack in zip(changes, acks, strict=True):
            counts = self.count(change.key[0])
            if ack.duplicate:
                counts.duplicates += 1
            elif change.event_type == ObjectEvent.DELETE:
                counts.deleted += 1
            else:
                counts.published += 1
            if change.event_type == ObjectEvent.DELETE:
                self._held.pop(change.key, None)
            else:
                self._held[change.key] = change.obj

