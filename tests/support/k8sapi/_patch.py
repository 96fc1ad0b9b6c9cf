"""The patch formats the server applies (pure): RFC 7386 merge patch and RFC 6902 JSON patch."""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """A patch that cannot apply (the apiserver answers 422 Invalid or 400)."""


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


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> tuple[Any, str]:
    cur = doc
    for p in parts[:-1]:
        try:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise PatchError(f"path {path!r} does not exist") from e
    return cur, parts[-1]


def _index(container: list, key: str, path: str, adding: bool) -> int:
    if adding and key == "-":
        return len(container)
    try:
        i = int(key)
    except ValueError as e:
        raise PatchError(f"bad array index in {path!r}") from e
    if not 0 <= i <= len(container) - (0 if adding else 1):
        raise PatchError(f"index out of range in {path!r}")
    return i


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent, key = _parent(doc, parts, path)
    try:
        return parent[_index(parent, key, path, False)] if isinstance(parent, list) else \
            parent[key]
    except (KeyError, TypeError) as e:
        raise PatchError(f"path {path!r} does not exist") from e


def _remove(doc: Any, path: str) -> Any:
    parent, key = _parent(doc, _pointer(path), path)
    if isinstance(parent, list):
        return parent.pop(_index(parent, key, path, False))
    if not isinstance(parent, dict) or key not in parent:
        raise PatchError(f"path {path!r} does not exist")
    return parent.pop(key)


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent, key = _parent(doc, parts, path)
    if isinstance(parent, list):
        parent.insert(_index(parent, key, path, True), value)
    elif isinstance(parent, dict):
        parent[key] = value
    else:
        raise PatchError(f"path {path!r} does not exist")
    return doc


def json_patch(target: object, ops: object) -> object:
    """Apply RFC 6902 operations (add, remove, replace, move, copy, test) to a copy."""
    if not isinstance(ops, list):
        raise PatchError("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "path" not in op:
            raise PatchError(f"invalid JSON patch operation {op!r}")
        name, path = op.get("op"), op["path"]
        if name == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif name == "remove":
            _remove(doc, path)
        elif name == "replace":
            _get(doc, path)
            if _pointer(path):
                _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif name in ("move", "copy"):
            value = _remove(doc, op["from"]) if name == "move" else copy.deepcopy(
                _get(doc, op["from"]))
            doc = _add(doc, path, value)
        elif name == "test":
            if _get(doc, path) != op.get("value"):
                raise PatchError(f"testing value {path} failed")
        else:
            raise PatchError(f"Unexpected kind: {name}")
    return doc
