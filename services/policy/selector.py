"""Endpoint selectors: Kubernetes label selectors over Cilium's ``source:key=value`` labels.

A selector is a conjunction of requirements (``In``, ``NotIn``, ``Exists``, ``DoesNotExist``);
``matchLabels`` entries are ``In`` requirements with one value. A requirement's key carries a
label source: ``any`` (the default for a key written without a source) matches a label of any
source, ``k8s:app`` matches only k8s-source labels, ``reserved:host`` only reserved ones.

Canonical form and selector id
------------------------------
Requirements are de-duplicated and sorted, values sorted, so equal selectors have one canonical
string whatever order they were written in (``matchLabels: {app: a}`` and the equivalent
``matchExpressions`` entry are the same selector). The selector id is the first
:data:`SELECTOR_ID_HEX` hex digits of SHA-256 over that canonical string: a pure function of the
selector, so every process, replica and restart agrees on it without coordination, and it is
safe as a NATS subject token. 64 bits make a collision between the few thousand selectors of a
cluster vanishingly unlikely (~1e-11 for 10^4 selectors).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.labels import KNOWN_SOURCES, SOURCE_ANY, Labels

from .errors import SelectorError

SELECTOR_ID_HEX = 16  # hex digits of the SHA-256 kept as selector id (64 bits)

OP_IN = "In"
OP_NOT_IN = "NotIn"
OP_EXISTS = "Exists"
OP_DOES_NOT_EXIST = "DoesNotExist"
OPERATORS = (OP_IN, OP_NOT_IN, OP_EXISTS, OP_DOES_NOT_EXIST)

# Labels the identity service gives every pod identity.
POD_NAMESPACE_KEY = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
SERVICE_ACCOUNT_KEY = "io.cilium.k8s.policy.serviceaccount"

# Kubernetes label syntax (qualified key with optional DNS prefix; value up to 63 chars).
MAX_LABEL_VALUE = 63
_KEY_RE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?"
                     r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")

# Per-identity lookup form of a label set: key -> ((source, value), ...).
LabelIndex = Mapping[str, tuple[tuple[str, str], ...]]


def label_index(labels: Labels) -> dict[str, tuple[tuple[str, str], ...]]:
    """Index a label set by key, for matching many selectors against one identity."""
    index: dict[str, list[tuple[str, str]]] = {}
    for lbl in labels:
        index.setdefault(lbl.key, []).append((lbl.source, lbl.value))
    return {k: tuple(v) for k, v in index.items()}


@dataclass(frozen=True, order=True)
class Requirement:
    """One selector requirement on the label ``source:key``."""

    source: str
    key: str
    op: str
    values: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.op in (OP_EXISTS, OP_DOES_NOT_EXIST):
            return f"{self.source}:{self.key} {self.op}"
        return f"{self.source}:{self.key} {self.op} ({','.join(self.values)})"

    def _found(self, index: LabelIndex) -> list[str]:
        return [v for s, v in index.get(self.key, ())
                if self.source == SOURCE_ANY or s == self.source]

    def matches_index(self, index: LabelIndex) -> bool:
        """True if a label set (in :func:`label_index` form) satisfies this requirement."""
        found = self._found(index)
        if self.op == OP_IN:
            return any(v in self.values for v in found)
        if self.op == OP_NOT_IN:
            return not any(v in self.values for v in found)
        if self.op == OP_EXISTS:
            return bool(found)
        return not found

    def to_dict(self) -> dict[str, Any]:
        """Kubernetes ``matchExpressions`` form, with the source in the key."""
        out: dict[str, Any] = {"key": f"{self.source}:{self.key}", "operator": self.op}
        if self.values:
            out["values"] = list(self.values)
        return out


@dataclass(frozen=True)
class EndpointSelector:
    """An immutable, canonical conjunction of requirements; empty matches every identity."""

    requirements: tuple[Requirement, ...] = ()
    canonical: str = field(init=False, compare=False, repr=False)
    id: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        reqs = tuple(sorted(set(self.requirements)))
        object.__setattr__(self, "requirements", reqs)
        canonical = "{" + ", ".join(str(r) for r in reqs) + "}"
        object.__setattr__(self, "canonical", canonical)
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:SELECTOR_ID_HEX]
        object.__setattr__(self, "id", digest)

    def __str__(self) -> str:
        return self.canonical

    def matches(self, labels: Labels) -> bool:
        """True if ``labels`` satisfies every requirement."""
        return self.matches_index(label_index(labels))

    def matches_index(self, index: LabelIndex) -> bool:
        """:meth:`matches` on a pre-built :func:`label_index`."""
        return all(r.matches_index(index) for r in self.requirements)

    def with_requirements(self, extra: Iterable[Requirement]) -> EndpointSelector:
        """This selector narrowed by more requirements."""
        return EndpointSelector((*self.requirements, *extra))

    def has_key(self, key: str, sources: Iterable[str] | None = None) -> bool:
        """True if some requirement is on ``key`` (optionally only from ``sources``)."""
        allowed = set(sources) if sources is not None else None
        return any(r.key == key and (allowed is None or r.source in allowed)
                   for r in self.requirements)

    def pivots(self) -> list[tuple[str, str]]:
        """(key, value) pairs of which a matching label set must hold one (for indexing).

        Taken from the first ``In`` requirement; empty if the selector has none.
        """
        for r in self.requirements:
            if r.op == OP_IN:
                return [(r.key, v) for v in r.values]
        return []

    def to_dict(self) -> dict[str, Any]:
        """A msgpack/JSON-friendly form (``matchExpressions`` with sourced keys)."""
        return {"id": self.id, "matchExpressions": [r.to_dict() for r in self.requirements]}


def _split_key(raw: Any, default_source: str, path: str) -> tuple[str, str]:
    if not isinstance(raw, str) or not raw:
        raise SelectorError(f"label key must be a non-empty string, got {raw!r}", path)
    if ":" in raw:
        source, key = raw.split(":", 1)
        if source not in KNOWN_SOURCES:
            raise SelectorError(f"unknown label source {source!r} in key {raw!r} "
                                f"(known: {', '.join(sorted(KNOWN_SOURCES))})", path)
    else:
        source, key = default_source, raw
    if not _KEY_RE.fullmatch(key):
        raise SelectorError(f"invalid label key {raw!r}", path)
    return source, key


def _check_value(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise SelectorError(f"label value must be a string (quote it in YAML), got {value!r}",
                            path)
    if len(value) > MAX_LABEL_VALUE or not _VALUE_RE.fullmatch(value):
        raise SelectorError(f"invalid label value {value!r}", path)
    return value


def requirement(key: str, op: str, values: Iterable[str] = (),
                default_source: str = SOURCE_ANY) -> Requirement:
    """Build a requirement from a (possibly sourced) key, e.g. ``k8s:app``."""
    source, bare = _split_key(key, default_source, "")
    return Requirement(source, bare, op, tuple(sorted(set(values))))


def parse_selector(doc: Any, path: str, default_source: str = SOURCE_ANY) -> EndpointSelector:
    """Parse a Kubernetes LabelSelector (``matchLabels``/``matchExpressions``).

    Args:
        doc: the YAML-loaded selector mapping (``{}`` selects everything).
        path: the field path of ``doc`` for error messages.
        default_source: the source of keys written without one (``any`` for Cilium policies,
            ``k8s`` for Kubernetes NetworkPolicy).

    Raises:
        SelectorError: naming the field at fault.
    """
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise SelectorError(f"selector must be a mapping, got {type(doc).__name__}", path)
    unknown = set(doc) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise SelectorError(f"unsupported selector field(s) {', '.join(sorted(map(str, unknown)))}",
                            path)
    reqs: list[Requirement] = []
    labels = doc.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise SelectorError("matchLabels must be a mapping", f"{path}.matchLabels")
    for key, value in labels.items():
        kpath = f"{path}.matchLabels.{key}"
        source, bare = _split_key(key, default_source, kpath)
        reqs.append(Requirement(source, bare, OP_IN, (_check_value(value, kpath),)))
    exprs = doc.get("matchExpressions") or []
    if not isinstance(exprs, list):
        raise SelectorError("matchExpressions must be a list", f"{path}.matchExpressions")
    for i, expr in enumerate(exprs):
        reqs.append(_parse_expression(expr, f"{path}.matchExpressions[{i}]", default_source))
    return EndpointSelector(tuple(reqs))


def _parse_expression(expr: Any, path: str, default_source: str) -> Requirement:
    if not isinstance(expr, dict):
        raise SelectorError("match expression must be a mapping", path)
    unknown = set(expr) - {"key", "operator", "values"}
    if unknown:
        raise SelectorError(f"unsupported field(s) {', '.join(sorted(map(str, unknown)))}", path)
    source, bare = _split_key(expr.get("key"), default_source, f"{path}.key")
    op = expr.get("operator")
    if op not in OPERATORS:
        raise SelectorError(f"unknown operator {op!r} (expected one of {', '.join(OPERATORS)})",
                            f"{path}.operator")
    values = expr.get("values") or []
    if not isinstance(values, list):
        raise SelectorError("values must be a list", f"{path}.values")
    checked = [_check_value(v, f"{path}.values[{j}]") for j, v in enumerate(values)]
    if op in (OP_IN, OP_NOT_IN) and not checked:
        raise SelectorError(f"operator {op} needs at least one value", f"{path}.values")
    if op in (OP_EXISTS, OP_DOES_NOT_EXIST) and checked:
        raise SelectorError(f"operator {op} takes no values", f"{path}.values")
    return Requirement(source, bare, op, tuple(sorted(set(checked))))
