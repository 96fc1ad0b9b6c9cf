"""The object store behind the test API server: etcd plus the apiserver's generic registry.

One global resourceVersion counter (an etcd revision) is bumped by every write, whatever the
kind. Every write is appended to a history of changes, each with the object before and after,
which serves watches from a resourceVersion, paged lists at the resourceVersion of their first
page, and ``resourceVersionMatch=Exact``; ``compact()`` forgets the history up to now, after
which those answer 410 Expired. Thread-safe: HTTP handlers and test code (any thread) share it.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from tests.support.k8sapi._errors import (
    AlreadyExists,
    BadRequest,
    Expired,
    Invalid,
    conflict,
    not_found,
)
from tests.support.k8sapi._kinds import Kind
from tests.support.k8sapi._selectors import Selector

Key = tuple[str, str]    # (namespace, "" for cluster-scoped kinds; name)
EVERYTHING = Selector()

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
MAX_NAME = 253             # a DNS subdomain's length limit
GENERATE_SUFFIX = 5        # random characters generateName appends
_SERVER_SET = ("uid", "creationTimestamp", "resourceVersion", "generation", "deletionTimestamp",
               "deletionGracePeriodSeconds")


@dataclass(frozen=True)
class Change:
    """One write: the object after it (DELETED: its last state, with the deletion's rv)."""

    rv: int
    kind: Kind
    type: str                 # ADDED, MODIFIED or DELETED
    obj: dict
    prev: dict | None         # the object before (None for ADDED)


Notify = Callable[[Change], None]


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386 JSON merge patch: ``null`` deletes, objects merge, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec(obj: dict) -> dict:
    """What a generation counts: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


def _key(obj: dict) -> Key:
    return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def encode_continue(rv: int, key: Key) -> str:
    raw = json.dumps({"rv": rv, "start": list(key)}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_continue(token: str) -> tuple[int, Key]:
    try:
        d = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(d["rv"]), (str(d["start"][0]), str(d["start"][1]))
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error) as e:
        raise BadRequest(f"continue key is not valid: {e}") from e


class Store:
    """Objects by kind and key, the global resourceVersion, the history and the watchers."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._objects: dict[Kind, dict[Key, dict]] = {}
        self._history: list[Change] = []
        self._watchers: list[Notify] = []
        self._rv = 1            # a fresh etcd's revision
        self._compacted = 0     # history holds every change with rv > this

    @property
    def resource_version(self) -> int:
        return self._rv

    @property
    def compacted(self) -> int:
        return self._compacted

    # -- reads -----------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str, name: str) -> dict | None:
        with self._lock:
            obj = self._objects.get(kind, {}).get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, kind: Kind, namespace: str | None, selector: Selector = EVERYTHING,
             limit: int = 0, token: str = "",
             exact: int | None = None) -> tuple[list[dict], int, str, int]:
        """Items (sorted by namespace and name), their rv, the next page's token, how many remain.

        A continued list (``token``) and ``exact`` read the state at an earlier rv, rebuilt from
        the history: 410 Expired if it was compacted away.
        """
        with self._lock:
            start: Key | None = None
            rv = self._rv if exact is None else exact
            if token:
                rv, start = decode_continue(token)
            if rv < self._rv and rv < self._compacted:
                raise Expired("The provided continue parameter is too old to display a "
                              "consistent list result. You can start a new list without the "
                              "continue parameter." if token else
                              f"too old resource version: {rv} ({self._compacted})")
            state = self._state_at(kind, rv)
            keys = sorted(k for k in state if namespace is None or k[0] == namespace)
            if start is not None:
                keys = [k for k in keys if k > start]
            items = [state[k] for k in keys if selector.matches(state[k])]
            if limit <= 0 or len(items) <= limit:
                return copy.deepcopy(items), rv, "", 0
            page = items[:limit]
            return (copy.deepcopy(page), rv, encode_continue(rv, _key(page[-1])),
                    len(items) - limit)

    def _state_at(self, kind: Kind, rv: int) -> dict[Key, dict]:
        state = dict(self._objects.get(kind, {}))
        for ch in reversed(self._history):
            if ch.rv <= rv:
                break
            if ch.kind != kind:
                continue
            if ch.type == "ADDED":
                state.pop(_key(ch.obj), None)
            elif ch.prev is not None:
                state[_key(ch.prev)] = ch.prev
        return state

    # -- watches ---------------------------------------------------------------------------

    def watch(self, kind: Kind, since: int | None, notify: Notify) -> tuple[list[Change], int]:
        """Register ``notify`` for every later write (of any kind, for progress) and return
        what comes before: synthetic ADDED for the current objects (``since`` None) or the
        history's changes of ``kind`` after ``since``. 410 Expired if those were compacted.
        """
        with self._lock:
            if since is None:
                initial = [Change(self._rv, kind, "ADDED", copy.deepcopy(o), None)
                           for _, o in sorted(self._objects.get(kind, {}).items())]
            elif since < self._compacted:
                raise Expired(f"too old resource version: {since} ({self._compacted})")
            else:
                initial = [ch for ch in self._history if ch.rv > since and ch.kind == kind]
            self._watchers.append(notify)
            return initial, self._rv

    def unwatch(self, notify: Notify) -> None:
        with self._lock:
            if notify in self._watchers:
                self._watchers.remove(notify)

    def compact(self) -> None:
        """Forget the history up to now (etcd compaction)."""
        with self._lock:
            self._history.clear()
            self._compacted = self._rv

    # -- writes ----------------------------------------------------------------------------

    def _commit(self, kind: Kind, type_: str, obj: dict, prev: dict | None) -> dict:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        objects = self._objects.setdefault(kind, {})
        if type_ == "DELETED":
            objects.pop(_key(obj), None)
        else:
            objects[_key(obj)] = obj
        change = Change(self._rv, kind, type_, obj, prev)
        self._history.append(change)
        for notify in list(self._watchers):
            notify(change)
        return copy.deepcopy(obj)

    def create(self, kind: Kind, namespace: str, body: dict) -> dict:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if kind.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise BadRequest("the namespace of the provided object does not match the "
                                 "namespace sent on the request")
            if not namespace:
                raise BadRequest(f"{kind.kind} needs a namespace", kind)
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        self._check_kind(kind, obj)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:GENERATE_SUFFIX]
        name = meta.get("name", "")
        self._check_name(kind, name)
        for field in _SERVER_SET:
            meta.pop(field, None)
        with self._lock:
            if (namespace if kind.namespaced else "", name) in self._objects.get(kind, {}):
                raise AlreadyExists(f'{kind.qualified} "{name}" already exists', kind, name)
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
            return self._commit(kind, "ADDED", obj, None)

    def update(self, kind: Kind, namespace: str, name: str, body: dict,
               status: bool = False) -> dict:
        """PUT: replace the object (``status``: only its status). Conflict on a stale rv."""
        with self._lock:
            return self._update(kind, namespace, name, lambda _: copy.deepcopy(body), status)

    def patch(self, kind: Kind, namespace: str, name: str, patch: dict,
              status: bool = False) -> dict:
        """Merge-PATCH; an rv in the patch is a precondition, as with PUT."""
        with self._lock:
            return self._update(kind, namespace, name,
                                lambda cur: merge_patch(cur, patch),  # type: ignore[arg-type]
                                status)

    def _update(self, kind: Kind, namespace: str, name: str, mutate: Callable[[dict], dict],
                status: bool) -> dict:
        cur = self._objects.get(kind, {}).get((namespace, name))
        if cur is None:
            raise not_found(kind, name)
        new = mutate(copy.deepcopy(cur))
        if not isinstance(new, dict):
            raise BadRequest("the body must be a JSON object", kind, name)
        meta = new.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise BadRequest(f"the name of the object ({meta.get('name')}) does not match the "
                             f"name on the URL ({name})", kind, name)
        self._check_kind(kind, new)
        wanted = meta.get("resourceVersion")
        if wanted and wanted != cur["metadata"]["resourceVersion"]:
            raise conflict(kind, name)
        if status:
            result = copy.deepcopy(cur)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
        else:
            result = new
            if kind.status:
                result.pop("status", None)
                if "status" in cur:
                    result["status"] = copy.deepcopy(cur["status"])
            for field in _SERVER_SET:
                result["metadata"].pop(field, None)
                if field in cur["metadata"]:
                    result["metadata"][field] = cur["metadata"][field]
            result["metadata"]["name"] = name
            if kind.namespaced:
                result["metadata"]["namespace"] = namespace
            else:
                result["metadata"].pop("namespace", None)
            if _spec(result) != _spec(cur):
                result["metadata"]["generation"] = cur["metadata"].get("generation", 1) + 1
        result["apiVersion"], result["kind"] = kind.api_version, kind.kind
        if result == cur:
            return copy.deepcopy(cur)    # a no-op update writes nothing, as the apiserver
        if result["metadata"].get("deletionTimestamp") and not result["metadata"].get(
                "finalizers"):
            return self._commit(kind, "DELETED", result, cur)
        return self._commit(kind, "MODIFIED", result, cur)

    def delete(self, kind: Kind, namespace: str, name: str, rv: str | None = None,
               uid: str | None = None) -> dict:
        """DELETE, with DeleteOptions preconditions. With finalizers: only marks it deleted."""
        with self._lock:
            cur = self._objects.get(kind, {}).get((namespace, name))
            if cur is None:
                raise not_found(kind, name)
            if (rv and rv != cur["metadata"]["resourceVersion"]) or (
                    uid and uid != cur["metadata"]["uid"]):
                raise conflict(kind, name)
            obj = copy.deepcopy(cur)
            if obj["metadata"].get("finalizers"):
                if obj["metadata"].get("deletionTimestamp"):
                    return obj
                obj["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
                return self._commit(kind, "MODIFIED", obj, cur)
            return self._commit(kind, "DELETED", obj, cur)

    def delete_collection(self, kind: Kind, namespace: str | None,
                          selector: Selector = EVERYTHING) -> list[dict]:
        with self._lock:
            items, _, _, _ = self.list(kind, namespace, selector)
            return [self.delete(kind, *_key(o)) for o in items]

    @staticmethod
    def _check_kind(kind: Kind, obj: dict) -> None:
        api_version, k = obj.setdefault("apiVersion", kind.api_version), obj.setdefault(
            "kind", kind.kind)
        if (api_version, k) != (kind.api_version, kind.kind):
            raise BadRequest(f"the API version in the data ({api_version}) and kind ({k}) do "
                             f"not match {kind.api_version} {kind.kind}", kind)

    @staticmethod
    def _check_name(kind: Kind, name: str) -> None:
        if not name:
            raise Invalid(f"{kind.kind} is invalid: metadata.name: Required value: name or "
                          "generateName is required", kind)
        if not _NAME.match(name) or len(name) > MAX_NAME:
            raise Invalid(f'{kind.kind} "{name}" is invalid: metadata.name: Invalid value: '
                          f'"{name}": a lowercase RFC 1123 subdomain must consist of lower '
                          "case alphanumeric characters, '-' or '.'", kind, name)
