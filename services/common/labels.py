"""The label model shared by every part: Cilium's ``source:key=value`` labels.

A label has a source (``k8s``, ``reserved``, ``cidr``, ``any``...), a key and an optional value.
Identities are derived from label sets; selectors match label sets. Label sets are immutable and
canonically ordered so that the same set always has the same string and hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

SOURCE_K8S = "k8s"
SOURCE_RESERVED = "reserved"
SOURCE_ANY = "any"
SOURCE_CIDR = "cidr"
SOURCE_UNSPEC = "unspec"

KNOWN_SOURCES = frozenset({SOURCE_K8S, SOURCE_RESERVED, SOURCE_ANY, SOURCE_CIDR, SOURCE_UNSPEC,
                           "container", "k8s-ns", "fqdn"})


@dataclass(frozen=True, order=True)
class Label:
    """One label: ``source:key=value`` (``reserved:host`` has no value)."""

    source: str
    key: str
    value: str = ""

    def __str__(self) -> str:
        if self.source == SOURCE_RESERVED and not self.value:
            return f"{self.source}:{self.key}"
        return f"{self.source}:{self.key}={self.value}"

    def matches(self, other: Label) -> bool:
        """True if this (selector) label matches ``other``: ``any`` matches every source."""
        return (self.key == other.key and self.value == other.value
                and (self.source == SOURCE_ANY or self.source == other.source))


def split_source(key: str, default_source: str = SOURCE_ANY) -> tuple[str, str]:
    """Split ``k8s:app`` into (``k8s``, ``app``); a key without a known source gets the default.

    Kubernetes label keys cannot contain ``:``, so the first ``:`` always ends a source.
    """
    if ":" in key:
        source, rest = key.split(":", 1)
        return source, rest
    return default_source, key


def parse_label(text: str, default_source: str = SOURCE_ANY) -> Label:
    """Parse ``source:key=value``, ``key=value`` or ``reserved:host``.

    Raises:
        ValueError: the text has an empty key.
    """
    key_part, sep, value = text.partition("=")
    source, key = split_source(key_part, default_source)
    if not key:
        raise ValueError(f"label {text!r} has an empty key")
    return Label(source, key, value if sep else "")


class Labels:
    """An immutable, canonically ordered set of labels."""

    __slots__ = ("_items", "_key")

    def __init__(self, labels: Iterable[Label] = ()) -> None:
        self._items: tuple[Label, ...] = tuple(sorted(set(labels)))
        self._key = ";".join(str(lbl) for lbl in self._items)

    @classmethod
    def parse(cls, texts: Iterable[str], default_source: str = SOURCE_ANY) -> Labels:
        return cls(parse_label(t, default_source) for t in texts)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str], source: str = SOURCE_K8S) -> Labels:
        """Labels from a Kubernetes ``metadata.labels`` map, all with one source."""
        return cls(Label(source, k, v) for k, v in mapping.items())

    def __iter__(self) -> Iterator[Label]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, label: object) -> bool:
        return label in self._items

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Labels) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"Labels({self._key!r})"

    def __or__(self, other: Iterable[Label]) -> Labels:
        return Labels((*self._items, *other))

    @property
    def key(self) -> str:
        """Canonical string form: labels joined by ``;`` in sorted order."""
        return self._key

    def digest(self) -> str:
        """A short stable digest of the canonical form, usable as a KV or subject token."""
        return hashlib.sha256(self._key.encode()).hexdigest()[:32]

    def strings(self) -> list[str]:
        return [str(lbl) for lbl in self._items]

    def get(self, key: str, source: str = SOURCE_ANY) -> str | None:
        """The value of ``key`` (from ``source``, or from any source for ``any``), or None."""
        for lbl in self._items:
            if lbl.key == key and (source == SOURCE_ANY or lbl.source == source):
                return lbl.value
        return None

    def has_key(self, key: str, source: str = SOURCE_ANY) -> bool:
        return self.get(key, source) is not None
