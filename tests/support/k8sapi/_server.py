"""The HTTP side of the test API server: routing, verbs, watch streams, the test knobs.

It runs an aiohttp application on its own asyncio loop in a background thread, so that sync
tests and async tests (whose loops are other loops) both drive it; every test knob is callable
from any thread.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import json
import threading
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support.k8sapi._errors import (
    ApiError,
    BadRequest,
    Expired,
    MethodNotAllowed,
    NotFound,
    Unauthorized,
    UnsupportedMediaType,
    not_found,
)
from tests.support.k8sapi._kinds import (
    Kind,
    api_group,
    by_kind,
    by_resource,
    group_versions,
    resource_list,
)
from tests.support.k8sapi._selectors import Requirement, Selector, SelectorError
from tests.support.k8sapi._store import Change, Store
from tests.support.k8sapi._watch import INITIAL_EVENTS_END, PROGRESS_DELAY, Watch, bookmark

# Go's strconv.ParseBool, which the apiserver uses for ``watch`` and the other flags.
TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})
STOP_WAIT = 5.0            # s: how long stopping or cutting waits for the streams to end
VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0-cilia-test",
           "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
           "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
           "platform": "linux/amd64"}
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"   # applied as a merge patch


def parse_bool(value: str | None, name: str) -> bool:
    """A query flag as Go's ``strconv.ParseBool`` reads it (absent: false)."""
    if value is None or value == "":
        return False
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise BadRequest(f'invalid value for {name}: strconv.ParseBool: parsing "{value}": '
                     "invalid syntax")


@dataclass(frozen=True)
class Request:
    """One request the server answered (``requests`` log)."""

    method: str
    path: str
    query: str
    verb: str          # get, list, watch, create, update, patch, delete, deletecollection
    resource: str      # plural, "pods/status" for the subresource; "" for discovery


@dataclass(frozen=True)
class _Target:
    kind: Kind
    namespace: str | None     # None: every namespace (or a cluster-scoped kind)
    name: str | None
    status: bool              # the /status subresource
    watch_path: bool          # the legacy /watch/ prefix


def _page_not_found() -> NotFound:
    return NotFound("the server could not find the requested resource")


def _route(path: str) -> _Target | dict | None:
    """A resource path's target, a discovery document, or None for /api and /apis."""
    seg = [s for s in path.split("/") if s]
    if seg in (["api"], ["apis"]):
        return None
    if seg[:1] == ["api"] and len(seg) >= 2:
        group, version, rest = "", seg[1], seg[2:]
    elif seg[:1] == ["apis"] and len(seg) == 2:
        doc = api_group(seg[1])
        if doc is None:
            raise _page_not_found()
        return doc
    elif seg[:1] == ["apis"] and len(seg) >= 3:
        group, version, rest = seg[1], seg[2], seg[3:]
    else:
        raise _page_not_found()
    if not rest:
        doc = resource_list(group, version)
        if doc is None:
            raise _page_not_found()
        return doc
    watch_path = rest[0] == "watch"
    if watch_path:
        rest = rest[1:]
    kind = by_resource(group, version, rest[2]) if len(rest) >= 3 else None
    namespace: str | None = None
    if rest and rest[0] == "namespaces" and kind is not None and kind.namespaced:
        namespace, tail = rest[1], rest[3:]
    else:
        kind = by_resource(group, version, rest[0]) if rest else None
        tail = rest[1:]
        if kind is None or (kind.namespaced and tail):
            raise _page_not_found()
    sub = tail[1] if len(tail) > 1 else None
    if len(tail) > 2 or (sub is not None and (sub != "status" or not kind.status)):
        raise _page_not_found()
    return _Target(kind, namespace, tail[0] if tail else None, sub is not None, watch_path)


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


class ApiServer:
    """A Kubernetes API server on 127.0.0.1 for tests; see the package docstring."""

    def __init__(self, token: str = "test-token", bookmark_interval: float = 1.0) -> None:
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.event_delay = 0.0          # s each watch event waits before it is written
        self.store = Store()
        self.requests: list[Request] = []
        self.counts: Counter[tuple[str, str]] = Counter()   # (verb, resource) -> requests
        self.url = ""
        self._watches: set[Watch] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as e:
                ready.set_exception(e)
                loop.close()
                return
            ready.set_result(None)
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="k8sapi", daemon=True)
        self._thread.start()
        ready.result(timeout=STOP_WAIT)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a watch whose client went away ends (and unregisters) at once.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    def stop(self) -> None:
        """Close every watch (cleanly) and connection, then stop the loop."""
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(STOP_WAIT * 2)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_WAIT)
        self._loop = self._thread = None

    async def _stop(self) -> None:
        await self._end_watches(None)
        if self._runner is not None:
            await self._runner.cleanup()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine on the server's loop; wait for it unless called from that loop."""
        assert self._loop is not None, "the server is not started"
        if threading.current_thread() is self._thread:
            self._loop.create_task(coro)
        else:
            asyncio.run_coroutine_threadsafe(coro, self._loop).result(STOP_WAIT * 2)

    # -- test knobs ------------------------------------------------------------------------

    def kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig (this server, its token, as current context) to ``path``."""
        name = "cilia-test"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": name, "cluster": {"server": self.url}}],
            "users": [{"name": name, "user": {"token": self.token}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name,
                                                     "namespace": "default"}}],
            "current-context": name}, indent=2))
        return path

    @property
    def resource_version(self) -> int:
        return self.store.resource_version

    def compact(self) -> None:
        """Forget the history up to now: watches and continued lists from before get 410."""
        self.store.compact()

    def cut_streams(self, mid_event: bool = True) -> None:
        """Drop every open watch connection (TCP abort), after half a JSON line if
        ``mid_event``: the client sees a broken stream, not an end."""
        self._call(self._end_watches(mid_event))

    def end_streams(self) -> None:
        """End every open watch cleanly, at a line boundary (as an apiserver shutting down)."""
        self._call(self._end_watches(None))

    def list_calls(self, resource: str) -> int:
        """How many LIST requests (not watches) ``resource`` (e.g. "pods") has had."""
        return self.counts[("list", resource)]

    def watch_calls(self, resource: str) -> int:
        return self.counts[("watch", resource)]

    def _kind(self, api_version: str, kind: str) -> Kind:
        k = by_kind(api_version, kind)
        if k is None:
            raise NotFound(f"the server does not serve {api_version} {kind}")
        return k

    @staticmethod
    def _ns(kind: Kind, namespace: str | None) -> str:
        return (namespace or "") if kind.namespaced else ""

    def create(self, obj: dict) -> dict:
        """Create as POST does (409 AlreadyExists raises ``AlreadyExists``)."""
        k = self._kind(obj.get("apiVersion", ""), obj.get("kind", ""))
        return self.store.create(k, self._ns(k, obj.get("metadata", {}).get("namespace")), obj)

    def replace(self, obj: dict, status: bool = False) -> dict:
        """Replace as PUT does (``status``: PUT .../status); raises ``Conflict`` on a stale
        ``metadata.resourceVersion``, ``NotFound`` when absent."""
        k = self._kind(obj.get("apiVersion", ""), obj.get("kind", ""))
        meta = obj.get("metadata", {})
        return self.store.update(k, self._ns(k, meta.get("namespace")), meta.get("name", ""),
                                 obj, status)

    def patch(self, api_version: str, kind: str, namespace: str, name: str,
              patch: dict | list, status: bool = False) -> dict:
        """Patch as PATCH does: a merge patch (dict) or JSON patch operations (list);
        ``status``: PATCH .../status."""
        k = self._kind(api_version, kind)
        return self.store.patch(k, self._ns(k, namespace), name, patch, status)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> dict:
        k = self._kind(api_version, kind)
        return self.store.delete(k, self._ns(k, namespace), name)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        k = self._kind(api_version, kind)
        return self.store.get(k, self._ns(k, namespace), name)

    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict]:
        k = self._kind(api_version, kind)
        return self.store.list(k, namespace if k.namespaced else None)[0]

    # -- HTTP ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                raise Unauthorized("Unauthorized")
            return await self._dispatch(request)
        except ApiError as e:
            return _json(e.status(), e.code)
        except SelectorError as e:
            return _json(BadRequest(str(e)).status(), 400)

    def _record(self, request: web.Request, verb: str, resource: str) -> None:
        self.requests.append(Request(request.method, request.path, request.query_string, verb,
                                     resource))
        self.counts[(verb, resource)] += 1

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path in ("/healthz", "/livez", "/readyz"):
            self._record(request, "get", "")
            return web.Response(text="ok", content_type="text/plain")
        if path == "/version":
            self._record(request, "get", "")
            return _json(VERSION)
        target = _route(path)
        if not isinstance(target, _Target):
            self._record(request, "get", "")
            if request.method != "GET":
                raise MethodNotAllowed(f"the server does not allow this method: {request.method}")
            return _json(target if target is not None else self._root(path))
        return await self._resource(request, target)

    def _root(self, path: str) -> dict:
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": self.url.split("//", 1)[1]}]}
        groups = [api_group(g) for g in group_versions() if g]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    async def _body(self, request: web.Request) -> Any:
        try:
            return json.loads(await request.read() or b"null")
        except ValueError as e:
            raise BadRequest(f"the body of the request is not valid JSON: {e}") from e

    async def _resource(self, request: web.Request, t: _Target) -> web.StreamResponse:
        k, q, method = t.kind, request.query, request.method
        ns = self._ns(k, t.namespace)
        resource = k.plural + ("/status" if t.status else "")
        selector = Selector.parse(q.get("labelSelector"), q.get("fieldSelector"), k.field_labels)
        watch = t.watch_path or parse_bool(q.get("watch"), "watch")
        if t.name is None or watch:
            if t.name is not None:     # the legacy /watch/.../name: a watch of one object
                selector = Selector(selector.labels, (*selector.fields,
                                                      Requirement("metadata.name", "=",
                                                                  (t.name,))))
            namespace = t.namespace if k.namespaced else None
            if method == "GET" and watch:
                self._record(request, "watch", resource)
                return await self._watch(request, k, namespace, selector)
            if method == "GET":
                self._record(request, "list", resource)
                return _json(self._list(k, namespace, selector, q))
            if method == "POST" and (ns or not k.namespaced):
                self._record(request, "create", resource)
                return _json(self.store.create(k, ns, await self._body(request)), 201)
            if method == "DELETE":
                self._record(request, "deletecollection", resource)
                items = self.store.delete_collection(k, namespace, selector)
                return _json({"kind": k.list_kind, "apiVersion": k.api_version,
                              "metadata": {"resourceVersion": str(self.resource_version)},
                              "items": items})
            raise MethodNotAllowed(f"the server does not allow this method on the requested "
                                   f"resource: {method}", k)
        name = t.name
        if method == "GET":
            self._record(request, "get", resource)
            obj = self.store.get(k, ns, name)
            if obj is None:
                raise not_found(k, name)
            return _json(obj)
        if method == "PUT":
            self._record(request, "update", resource)
            body = await self._body(request)
            if not isinstance(body, dict):
                raise BadRequest("the body of the request must be an object", k, name)
            return _json(self.store.update(k, ns, name, body, t.status))
        if method == "PATCH":
            self._record(request, "patch", resource)
            return _json(self.store.patch(k, ns, name, await self._patch(request, k), t.status))
        if method == "DELETE":
            self._record(request, "delete", resource)
            opts = await self._body(request) or {}
            pre = opts.get("preconditions") or {} if isinstance(opts, dict) else {}
            return _json(self.store.delete(k, ns, name, pre.get("resourceVersion"),
                                           pre.get("uid")))
        raise MethodNotAllowed(f"the server does not allow this method on the requested "
                               f"resource: {method}", k, name)

    async def _patch(self, request: web.Request, k: Kind) -> dict | builtins.list:
        ctype = request.content_type
        accepted = [JSON_PATCH, MERGE_PATCH] + ([] if k.crd else [STRATEGIC_PATCH])
        if ctype not in accepted:
            raise UnsupportedMediaType(
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(accepted)}", k)
        body = await self._body(request)
        if ctype == JSON_PATCH and not isinstance(body, list):
            raise BadRequest("json: cannot unmarshal object into Go value of type "
                             "jsonpatch.Patch", k)
        if ctype != JSON_PATCH and not isinstance(body, dict):
            raise BadRequest("a merge patch must be a JSON object", k)
        return body

    def _list(self, k: Kind, namespace: str | None, selector: Selector,
              q: Any) -> dict:
        try:
            limit = int(q.get("limit") or 0)
        except ValueError as e:
            raise BadRequest(f"limit: {e}") from e
        exact = None
        if q.get("resourceVersionMatch") == "Exact":
            try:
                exact = int(q.get("resourceVersion", ""))
            except ValueError as e:
                raise BadRequest(f"resourceVersion: {e}") from e
        items, rv, cont, remaining = self.store.list(k, namespace, selector, limit,
                                                     q.get("continue", ""), exact)
        meta: dict = {"resourceVersion": str(rv)}
        if cont:
            meta["continue"] = cont
            if selector.empty:
                meta["remainingItemCount"] = remaining
        return {"kind": k.list_kind, "apiVersion": k.api_version, "metadata": meta,
                "items": items}

    # -- watch -----------------------------------------------------------------------------

    async def _watch(self, request: web.Request, k: Kind, namespace: str | None,
                     selector: Selector) -> web.StreamResponse:
        q = request.query
        raw = q.get("resourceVersion", "")
        initial_events = parse_bool(q.get("sendInitialEvents"), "sendInitialEvents")
        try:
            since = None if raw in ("", "0") or initial_events else int(raw)
        except ValueError as e:
            raise BadRequest(f"resourceVersion: invalid value {raw!r}") from e
        try:
            timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        except ValueError as e:
            raise BadRequest(f"timeoutSeconds: {e}") from e
        assert self._loop is not None
        w = Watch(k, namespace, selector, parse_bool(q.get("allowWatchBookmarks"),
                                                      "allowWatchBookmarks"), self._loop)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        try:
            initial, rv = self.store.watch(k, since, w.notify)
        except Expired as e:     # the apiserver answers 200 and one ERROR event
            await resp.prepare(request)
            await resp.write(json.dumps({"type": "ERROR", "object": e.status()}).encode()
                             + b"\n")
            await resp.write_eof()
            return resp
        w.seen = max(rv, since or 0)
        self._watches.add(w)
        try:
            await resp.prepare(request)
            w.task = asyncio.ensure_future(self._pump(w, resp, initial, initial_events, timeout))
            if w.cut is not None:   # cut while the response was being prepared
                w.task.cancel()
            await asyncio.wait({w.task})
        finally:
            if w.task is not None:
                w.task.cancel()
            self.store.unwatch(w.notify)
            self._watches.discard(w)
            w.done.set()
        if w.cut is not None:
            if w.cut:
                line = json.dumps(bookmark(k, w.seen)).encode()
                with contextlib.suppress(ConnectionError):
                    await resp.write(line[:len(line) // 2])
            if request.transport is not None:
                request.transport.abort()
            return resp
        if w.task is not None and not w.task.cancelled() and w.task.exception() is not None:
            return resp           # the client went away
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp

    async def _send(self, resp: web.StreamResponse, event: dict, delay: bool = True) -> None:
        if delay and self.event_delay > 0:
            await asyncio.sleep(self.event_delay)
        await resp.write(json.dumps(event).encode() + b"\n")

    async def _pump(self, w: Watch, resp: web.StreamResponse, initial: builtins.list[Change],
                    initial_events: bool, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._stream(w, resp, initial, initial_events)

    async def _stream(self, w: Watch, resp: web.StreamResponse, initial: builtins.list[Change],
                      initial_events: bool) -> None:
        loop = asyncio.get_running_loop()
        for ch in initial:
            if (ev := w.event(ch)) is not None:
                await self._send(resp, ev)
        if initial_events:
            await self._send(resp, bookmark(w.kind, w.seen, {INITIAL_EVENTS_END: "true"}),
                             delay=False)
        next_bookmark = loop.time() + self.bookmark_interval
        progress_at: float | None = None
        while True:
            timeout = None
            if w.bookmarks:
                due = next_bookmark if progress_at is None else min(next_bookmark, progress_at)
                timeout = max(0.0, due - loop.time())
            try:
                ch = await asyncio.wait_for(w.queue.get(), timeout)
            except TimeoutError:
                await self._send(resp, bookmark(w.kind, w.seen), delay=False)
                next_bookmark, progress_at = loop.time() + self.bookmark_interval, None
                continue
            w.seen = ch.rv
            if (ev := w.event(ch)) is not None:
                await self._send(resp, ev)
            elif progress_at is None:
                progress_at = loop.time() + min(PROGRESS_DELAY, self.bookmark_interval)

    async def _end_watches(self, cut: bool | None) -> None:
        watches = list(self._watches)
        for w in watches:
            w.cut = cut
            if w.task is not None:
                w.task.cancel()
        if watches:
            await asyncio.wait([asyncio.ensure_future(w.done.wait()) for w in watches],
                               timeout=STOP_WAIT)


@contextlib.contextmanager
def api_server(token: str = "test-token", bookmark_interval: float = 1.0) -> Iterator[ApiServer]:
    """A started ``ApiServer``; on exit its watches end and every connection closes."""
    server = ApiServer(token, bookmark_interval)
    server.start()
    try:
        yield server
    finally:
        server.stop()
