"""One watch stream's filter and queue, and the bookmark event (pure but for the queue)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from tests.support.k8sapi._kinds import Kind
from tests.support.k8sapi._selectors import Selector
from tests.support.k8sapi._store import Change

PROGRESS_DELAY = 0.05      # s: a bookmark for other kinds' writes waits this long to coalesce
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


def bookmark(kind: Kind, rv: int, annotations: dict | None = None) -> dict:
    meta: dict = {"resourceVersion": str(rv)}
    if annotations:
        meta["annotations"] = annotations
    return {"type": "BOOKMARK",
            "object": {"kind": kind.kind, "apiVersion": kind.api_version, "metadata": meta}}


@dataclass(eq=False)
class Watch:
    """One open watch stream: its filter and the queue the store's writes land in."""

    kind: Kind
    namespace: str | None
    selector: Selector
    bookmarks: bool
    loop: asyncio.AbstractEventLoop
    seen: int = 0                        # rv of the last change taken from the queue
    queue: asyncio.Queue[Change] = field(default_factory=asyncio.Queue)
    cut: bool | None = None              # set by cut_streams: write half a line first?
    task: asyncio.Task | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self, change: Change) -> None:
        """Called by the store, under its lock, from whichever thread wrote."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, change)

    def event(self, change: Change) -> dict | None:
        """The event this stream sends for a change, None if it sends none.

        As the apiserver's cache watcher: an object that starts matching is ADDED, one that
        stops matching is DELETED (its previous state, with the change's rv).
        """
        if change.kind != self.kind:
            return None
        if (self.namespace is not None
                and change.obj["metadata"].get("namespace") != self.namespace):
            return None
        now = change.type != "DELETED" and self.selector.matches(change.obj)
        before = change.prev is not None and self.selector.matches(change.prev)
        if now:
            return {"type": "MODIFIED" if before else "ADDED", "object": change.obj}
        if not before or change.prev is None:
            return None
        if change.type == "DELETED":
            return {"type": "DELETED", "object": change.obj}
        gone = json.loads(json.dumps(change.prev))
        gone["metadata"]["resourceVersion"] = str(change.rv)
        return {"type": "DELETED", "object": gone}
