"""``toFQDNs`` peers: the addresses the nodes' DNS proxies learned, as labelled CIDR identities.

How a ``toFQDNs`` entry selects peers (Cilium 1.15+'s scheme, global instead of per node):

* Each node's DNS proxy publishes ``fqdn.names`` events: what a name resolves to on that node
  now (no address: every address of the name there expired). :class:`LearnedNames` keeps the
  latest set per (node, name); what selectors see is the union over nodes.
* Every learned address ``a`` gets the CIDR identity of ``a/32`` (the same refcounted identity a
  ``toCIDR: a/32`` rule would use, so ``toCIDR`` rules covering it select it too) and, on top
  of its ``cidr:`` labels, one label ``fqdn:<key>`` for every name or pattern in use by some
  rule that matches a name ``a`` was learned under.
* A ``toFQDNs`` entry is the selector ``fqdn:<key>``, ``<key>`` being a hash of its normalized
  text (:func:`fqdn_key`): its members are the identities of the learned addresses it matches,
  and agents turn them into policy map entries like any other selector's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from services.common.labels import Label

from .fqdnmatch import normalize
from .selector import OP_IN, EndpointSelector, Requirement

SOURCE_FQDN = "fqdn"   # label source of the names a learned address answers to
FQDN_KEY_HEX = 16      # hex digits of SHA-256 of a name or pattern used as its label key

Source = tuple[str, str]   # (node, name): who learned what


def fqdn_key(text: str) -> str:
    """The label key of a name or pattern (a valid label key, whatever the text): a hash of
    its normalized text, so any case and a trailing dot give the same key. ``cilia policy
    selectors`` finds an FQDN selector's text back this way."""
    return hashlib.sha256(normalize(text).encode()).hexdigest()[:FQDN_KEY_HEX]


def fqdn_label(text: str) -> Label:
    """The label a learned address carries when one of its names matches ``text``."""
    return Label(SOURCE_FQDN, fqdn_key(text), "")


def fqdn_selector(text: str) -> EndpointSelector:
    """The selector of a ``toFQDNs`` entry (its normalized name or pattern)."""
    return EndpointSelector((Requirement(SOURCE_FQDN, fqdn_key(text), OP_IN, ("",)),))


class LearnedNames:
    """(node, name) -> the addresses that node's DNS proxy holds for the name, and back."""

    def __init__(self) -> None:
        self._addresses: dict[Source, frozenset[str]] = {}
        self._sources: dict[str, set[Source]] = {}

    def addresses(self, node: str, name: str) -> frozenset[str]:
        """What ``node`` holds for ``name`` now (empty if nothing)."""
        return self._addresses.get((node, name), frozenset())

    def set(self, node: str, name: str, addresses: Iterable[str]) -> None:
        """Replace what ``node`` holds for ``name`` (empty: it forgot the name)."""
        source = (node, name)
        new = frozenset(addresses)
        old = self._addresses.pop(source, frozenset())
        if new:
            self._addresses[source] = new
        for ip in old - new:
            sources = self._sources[ip]
            sources.discard(source)
            if not sources:
                del self._sources[ip]
        for ip in new - old:
            self._sources.setdefault(ip, set()).add(source)

    def names(self, ip: str) -> frozenset[str]:
        """The names ``ip`` was learned under, on any node (empty: not learned)."""
        return frozenset(name for _, name in self._sources.get(ip, ()))

    def sources(self, ip: str) -> list[Source]:
        """The (node, name) pairs that hold ``ip`` now, sorted (empty: not learned)."""
        return sorted(self._sources.get(ip, ()))

    def ips(self) -> list[str]:
        """Every learned address, sorted."""
        return sorted(self._sources)
