"""The selector cache: selector -> the set of identities it matches, kept incrementally.

This is Cilium's SelectorCache idea. Compiled rules refer to selectors by id; what a selector
matches changes as identities come and go, and only those changes travel. Selectors are
refcounted by the rules that use them: the first user adds a selector (and gets its initial
members), the last one removes it.

Both directions are indexed so that an identity event costs in proportion to the selectors it
can match, not to the size of the cluster: selectors with an ``In`` requirement are filed under
its (key, value) pairs, identities under their (key, value) labels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from services.common.labels import Labels

from .selector import EndpointSelector, LabelIndex, label_index


class SelectorDelta(NamedTuple):
    """The identities a selector gained and lost in one change."""

    added: frozenset[int]
    removed: frozenset[int]


@dataclass
class _Entry:
    selector: EndpointSelector
    refs: int = 0
    members: set[int] = field(default_factory=set)


class SelectorCache:
    """Selector -> matching identities, updated by identity and selector events."""

    def __init__(self) -> None:
        self._selectors: dict[str, _Entry] = {}
        self._by_pivot: dict[tuple[str, str], set[str]] = {}
        self._unpivoted: set[str] = set()
        self._identities: dict[int, Labels] = {}
        self._indexes: dict[int, LabelIndex] = {}
        self._ids_by_label: dict[tuple[str, str], set[int]] = {}

    # -- selectors ------------------------------------------------------------------------

    def add_selector(self, selector: EndpointSelector) -> tuple[frozenset[int], bool]:
        """Take a reference on ``selector``.

        Returns:
            (its current members, whether the selector is new to the cache).
        """
        entry = self._selectors.get(selector.id)
        if entry is not None:
            entry.refs += 1
            return frozenset(entry.members), False
        entry = _Entry(selector, 1, self._compute_members(selector))
        self._selectors[selector.id] = entry
        pivots = selector.pivots()
        if pivots:
            for pivot in pivots:
                self._by_pivot.setdefault(pivot, set()).add(selector.id)
        else:
            self._unpivoted.add(selector.id)
        return frozenset(entry.members), True

    def remove_selector(self, selector_id: str) -> bool:
        """Drop a reference; return True if that was the last one and the selector is gone."""
        entry = self._selectors[selector_id]
        entry.refs -= 1
        if entry.refs:
            return False
        del self._selectors[selector_id]
        pivots = entry.selector.pivots()
        for pivot in pivots:
            ids = self._by_pivot[pivot]
            ids.discard(selector_id)
            if not ids:
                del self._by_pivot[pivot]
        self._unpivoted.discard(selector_id)
        return True

    def _compute_members(self, selector: EndpointSelector) -> set[int]:
        pivots = selector.pivots()
        if pivots:
            candidates: Iterable[int] = set().union(
                *(self._ids_by_label.get(p, ()) for p in pivots))
        else:
            candidates = self._identities
        return {i for i in candidates if selector.matches_index(self._indexes[i])}

    # -- identities -----------------------------------------------------------------------

    def add_identity(self, identity: int, labels: Labels) -> dict[str, SelectorDelta]:
        """Add (or relabel) an identity; return the deltas of the selectors it changes."""
        deltas: dict[str, SelectorDelta] = {}
        old = self._identities.get(identity)
        if old is not None:
            if old == labels:
                return {}
            deltas = self.remove_identity(identity)
        index = label_index(labels)
        self._identities[identity] = labels
        self._indexes[identity] = index
        for lbl in labels:
            self._ids_by_label.setdefault((lbl.key, lbl.value), set()).add(identity)
        for sel_id in self._candidate_selectors(labels):
            entry = self._selectors[sel_id]
            if entry.selector.matches_index(index):
                entry.members.add(identity)
                prev = deltas.pop(sel_id, None)
                if prev is None:
                    deltas[sel_id] = SelectorDelta(frozenset({identity}), frozenset())
                # removed then re-added under new labels: no net change for this selector
        return deltas

    def remove_identity(self, identity: int) -> dict[str, SelectorDelta]:
        """Remove an identity; return the deltas of the selectors that matched it."""
        labels = self._identities.pop(identity, None)
        if labels is None:
            return {}
        del self._indexes[identity]
        for lbl in labels:
            ids = self._ids_by_label[(lbl.key, lbl.value)]
            ids.discard(identity)
            if not ids:
                del self._ids_by_label[(lbl.key, lbl.value)]
        deltas: dict[str, SelectorDelta] = {}
        for sel_id in self._candidate_selectors(labels):
            entry = self._selectors[sel_id]
            if identity in entry.members:
                entry.members.discard(identity)
                deltas[sel_id] = SelectorDelta(frozenset(), frozenset({identity}))
        return deltas

    def _candidate_selectors(self, labels: Labels) -> set[str]:
        out = set(self._unpivoted)
        for lbl in labels:
            out.update(self._by_pivot.get((lbl.key, lbl.value), ()))
        return out

    # -- queries --------------------------------------------------------------------------

    def members(self, selector_id: str) -> frozenset[int]:
        """The identities a selector matches (empty for an unknown selector)."""
        entry = self._selectors.get(selector_id)
        return frozenset(entry.members) if entry else frozenset()

    def selector(self, selector_id: str) -> EndpointSelector:
        """The selector registered under ``selector_id``."""
        return self._selectors[selector_id].selector

    def selector_ids(self) -> list[str]:
        """Ids of every selector in use, sorted."""
        return sorted(self._selectors)

    def refs(self, selector_id: str) -> int:
        """How many rules use a selector (0 if unknown)."""
        entry = self._selectors.get(selector_id)
        return entry.refs if entry else 0

    def identities(self) -> dict[int, Labels]:
        """Every identity with the labels selectors match against."""
        return dict(self._identities)

    def labels(self, identity: int) -> Labels | None:
        """The labels of ``identity``, or None."""
        return self._identities.get(identity)

    def snapshot(self) -> dict[str, frozenset[int]]:
        """Every selector's members (for tests and for publishing a full state)."""
        return {sid: frozenset(e.members) for sid, e in self._selectors.items()}
