"""DNS names and patterns as Cilium's ``toFQDNs`` and DNS rules give them (pure).

- ``matchName``: one exact name (case-insensitive; a trailing dot is the same name);
- ``matchPattern``:
  - ``*`` alone: every name;
  - ``*`` inside a label: zero or more characters valid in a DNS label, never a dot
    (``*.example.com`` is ``a.example.com``, not ``a.b.example.com`` nor ``example.com``;
    ``api-*.example.com`` is ``api-1.example.com``);
  - a leading ``**.``: one or more labels (``**.example.com`` is ``a.example.com`` and
    ``a.b.example.com``, not ``example.com``), as Cilium 1.16 documents it.

A :class:`NameMatcher` is built once per name or pattern and matches names in linear time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

_CHARS = "[-a-z0-9_]"
_NAME_RE = re.compile(r"^[-a-z0-9_]+(\.[-a-z0-9_]+)*$")
_PATTERN_RE = re.compile(r"^(\*\*\.)?[-a-z0-9_*]+(\.[-a-z0-9_*]+)*$")
MAX_NAME = 253


def normalize(name: str) -> str:
    """A name as matched: lower case, without the root's trailing dot."""
    return name.strip().lower().rstrip(".")


@dataclass(frozen=True)
class NameMatcher:
    """One ``matchName`` or ``matchPattern``, compiled."""

    text: str                 # the name or pattern, normalized
    is_pattern: bool
    _re: re.Pattern[str] = field(compare=False, repr=False)

    def matches(self, name: str) -> bool:
        return self._re.fullmatch(normalize(name)) is not None


def match_name(value: str) -> NameMatcher:
    """A ``matchName``.

    Raises:
        ValueError: not a DNS name (the message says why; the caller names the field).
    """
    name = normalize(value)
    if not name or len(name) > MAX_NAME or not _NAME_RE.match(name):
        raise ValueError(f"invalid DNS name {value!r}")
    return NameMatcher(name, False, re.compile(re.escape(name)))


def match_pattern(value: str) -> NameMatcher:
    """A ``matchPattern``.

    Raises:
        ValueError: characters other than letters, digits, ``-``, ``_``, ``.`` and ``*``, an
            empty label, or ``**`` anywhere but a leading ``**.`` (the caller names the field).
    """
    pattern = normalize(value)
    if pattern == "*":
        return NameMatcher(pattern, True, re.compile(rf"{_CHARS}+(\.{_CHARS}+)*"))
    if not pattern or len(pattern) > MAX_NAME or not _PATTERN_RE.match(pattern) \
            or "**" in pattern.removeprefix("**."):
        raise ValueError(f"invalid DNS pattern {value!r}: only letters, digits, '-', '_', "
                         "'.' and '*' in non-empty labels, '**.' only as the prefix")
    multi = pattern.startswith("**.")
    body = pattern.removeprefix("**.")
    regex = re.escape(body).replace(r"\*", f"{_CHARS}*")
    if multi:
        regex = rf"({_CHARS}+\.)+" + regex
    return NameMatcher(pattern, True, re.compile(regex))


@lru_cache(maxsize=4096)
def dns_matcher(text: str) -> NameMatcher:
    """Rebuild the matcher of a normalized name or pattern as the policy service publishes it
    (``CompiledEntry.fqdns`` and ``.dns``): text with a ``*`` is a ``matchPattern``, any other
    text a ``matchName`` (a pattern without ``*`` matches exactly that name anyway).

    Raises:
        ValueError: not a DNS name or pattern.
    """
    return match_pattern(text) if "*" in text else match_name(text)
