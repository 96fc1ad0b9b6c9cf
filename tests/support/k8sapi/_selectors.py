"""Label and field selectors as the apiserver parses and matches them (pure functions).

Labels: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k``, ``!k``, ``k>1``,
``k<1``, comma-joined (all must hold). ``!=`` and ``notin`` also match objects without the
label, as in ``k8s.io/apimachinery/pkg/labels``. Fields: ``path=v``, ``path==v``,
``path!=v`` on the labels a kind supports; a missing field reads as the empty string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_KEY = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SET = re.compile(r"^(\S+)\s+(in|notin)\s*\((.*)\)$")
_BINARY = re.compile(r"^([^=!<>\s]+)\s*(==|!=|=|>|<)\s*(.*)$")
MAX_VALUE = 63   # a label value's length limit


class SelectorError(ValueError):
    """A selector the apiserver would reject with 400 BadRequest."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str                   # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: tuple[str, ...] = ()


def _split(text: str) -> list[str]:
    """Comma-separated terms, commas inside parentheses kept."""
    terms, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return [t.strip() for t in terms if t.strip()]


def _key(key: str, term: str) -> str:
    if not _KEY.match(key) or len(key.rsplit("/", 1)[-1]) > MAX_VALUE:
        raise SelectorError(f"unable to parse requirement: invalid label key {key!r} in {term!r}")
    return key


def _value(value: str, term: str) -> str:
    if not _VALUE.match(value) or len(value) > MAX_VALUE:
        raise SelectorError(f"unable to parse requirement: invalid label value {value!r} "
                            f"in {term!r}")
    return value


def parse_labels(text: str) -> tuple[Requirement, ...]:
    """Parse a ``labelSelector`` query value."""
    reqs: list[Requirement] = []
    for term in _split(text):
        if term.startswith("!"):
            reqs.append(Requirement(_key(term[1:].strip(), term), "!"))
        elif m := _SET.match(term):
            values = tuple(_value(v.strip(), term) for v in m.group(3).split(",") if v.strip())
            reqs.append(Requirement(_key(m.group(1), term), m.group(2), values))
        elif m := _BINARY.match(term):
            key, op, value = m.group(1), m.group(2), m.group(3).strip()
            if op in (">", "<") and not value.lstrip("-").isdigit():
                raise SelectorError(f"unable to parse requirement: {term!r}: "
                                    "for 'Gt', 'Lt' operators, the value must be an integer")
            reqs.append(Requirement(_key(key, term), "=" if op == "==" else op,
                                    (_value(value, term),)))
        else:
            reqs.append(Requirement(_key(term, term), "exists"))
    return tuple(reqs)


def parse_fields(text: str, allowed: tuple[str, ...]) -> tuple[Requirement, ...]:
    """Parse a ``fieldSelector`` query value against the field labels a kind supports."""
    reqs: list[Requirement] = []
    for term in _split(text):
        m = re.match(r"^([^=!\s]+)\s*(==|!=|=)\s*(.*)$", term)
        if not m:
            raise SelectorError(f"invalid selector: {term!r}; can't understand {term!r}")
        if m.group(1) not in allowed:
            raise SelectorError(f"field label not supported: {m.group(1)}")
        reqs.append(Requirement(m.group(1), "!=" if m.group(2) == "!=" else "=",
                                (m.group(3).strip(),)))
    return tuple(reqs)


def _label_holds(req: Requirement, labels: dict[str, str]) -> bool:
    has, value = req.key in labels, labels.get(req.key)
    if req.op == "exists":
        return has
    if req.op == "!":
        return not has
    if req.op == "=":
        return has and value == req.values[0]
    if req.op == "!=":
        return not has or value != req.values[0]
    if req.op == "in":
        return has and value in req.values
    if req.op == "notin":
        return not has or value not in req.values
    # ">" and "<": the label must be an integer too.
    if not has or value is None or not value.lstrip("-").isdigit():
        return False
    a, b = int(value), int(req.values[0])
    return a > b if req.op == ">" else a < b


def field_value(obj: dict, path: str) -> str:
    """The string a field selector compares: booleans as ``true``/``false``, absent as ``""``."""
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


@dataclass(frozen=True)
class Selector:
    """A LIST or WATCH request's label and field selectors (empty: everything)."""

    labels: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, labels: str | None, fields: str | None,
              allowed: tuple[str, ...]) -> Selector:
        return cls(parse_labels(labels or ""), parse_fields(fields or "", allowed))

    @property
    def empty(self) -> bool:
        return not self.labels and not self.fields

    def matches(self, obj: dict) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        if not all(_label_holds(r, labels) for r in self.labels):
            return False
        for r in self.fields:
            equal = field_value(obj, r.key) == r.values[0]
            if equal != (r.op == "="):
                return False
        return True
