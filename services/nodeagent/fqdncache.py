"""The node's DNS cache for toFQDNs: name -> addresses, each with its TTL and expiry (pure).

Cilium's per-node DNS cache and its expiry, as events: every change of what the node knows
about a name is a :class:`~services.common.contract.FqdnNames` payload to publish (the policy
service turns them into selector members).

- A lookup adds addresses or extends their expiry (``now + ttl``; the TTL was raised to the
  minimum TTL already, ``--tofqdns-min-ttl``). It is published when an address is new, the
  asking pod is new, or the expiry moved by more than :data:`REPUBLISH_S`.
- An address expires once ``expires + grace`` has passed (``--tofqdns-idle-connection-grace-
  period``) and no connection to it is live in the node's conntrack; a name whose last
  address expired is published with no addresses, and forgotten.
- A restarted agent restores the cache from its own last events on the bus.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Set
from dataclasses import dataclass, field

from services.common.contract import FqdnAddress, FqdnNames
from services.nodeagent.dnsmsg import Learned

MIN_TTL_ENV = "CILIA_TOFQDNS_MIN_TTL"            # seconds; Cilium's --tofqdns-min-ttl
GRACE_ENV = "CILIA_TOFQDNS_GRACE_S"              # --tofqdns-idle-connection-grace-period
DEFAULT_MIN_TTL = 0       # Cilium 1.16's default: the upstream TTL as it is
DEFAULT_GRACE_S = 0.0
REPUBLISH_S = 1.0         # an expiry moved by less is not worth an event


def min_ttl() -> int:
    return int(os.environ.get(MIN_TTL_ENV, DEFAULT_MIN_TTL))


def grace_s() -> float:
    return float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_S))


@dataclass
class _Name:
    addresses: dict[str, FqdnAddress] = field(default_factory=dict)
    endpoints: set[str] = field(default_factory=set)
    published: dict[str, float] = field(default_factory=dict)   # ip -> expiry last published


class FqdnCache:
    """What one node learned from DNS answers."""

    def __init__(self, node: str, grace: float | None = None) -> None:
        self.node = node
        self.grace = grace_s() if grace is None else grace
        self._names: dict[str, _Name] = {}

    def learn(self, learned: Iterable[Learned], pod: str, now: float) -> list[FqdnNames]:
        """An answer's names for ``pod`` (``ns/name``); returns the events to publish."""
        out: list[FqdnNames] = []
        for item in learned:
            entry = self._names.setdefault(item.name, _Name())
            changed = bool(pod) and pod not in entry.endpoints
            if pod:
                entry.endpoints.add(pod)
            for addr in item.addresses:
                ip = str(addr)
                expires = now + item.ttl
                old = entry.addresses.get(ip)
                if old is not None and old.expires >= expires:
                    continue
                entry.addresses[ip] = FqdnAddress(ip, item.ttl, expires)
                if expires - entry.published.get(ip, 0.0) > REPUBLISH_S:
                    changed = True
            if changed:
                out.append(self._payload(item.name, entry))
        return out

    def due(self, now: float) -> set[str]:
        """Addresses past their expiry and grace (they go unless a connection is live)."""
        return {ip for entry in self._names.values() for ip, a in entry.addresses.items()
                if a.expires + self.grace <= now}

    def expire(self, now: float, live: Set[str] = frozenset()) -> list[FqdnNames]:
        """Drop the due addresses without a live connection; returns the events."""
        out: list[FqdnNames] = []
        for name in sorted(self._names):
            entry = self._names[name]
            gone = [ip for ip, a in entry.addresses.items()
                    if a.expires + self.grace <= now and ip not in live]
            if not gone:
                continue
            for ip in gone:
                del entry.addresses[ip]
                entry.published.pop(ip, None)
            out.append(self._payload(name, entry))
            if not entry.addresses:
                del self._names[name]
        return out

    def restore(self, payload: FqdnNames) -> None:
        """What this node published before it restarted."""
        if not payload.addresses:
            self._names.pop(payload.name, None)
            return
        self._names[payload.name] = _Name(
            {a.ip: a for a in payload.addresses}, set(payload.endpoints),
            {a.ip: a.expires for a in payload.addresses})

    def addresses(self, name: str) -> dict[str, FqdnAddress]:
        entry = self._names.get(name)
        return dict(entry.addresses) if entry else {}

    def names(self) -> list[str]:
        return sorted(self._names)

    def _payload(self, name: str, entry: _Name) -> FqdnNames:
        for ip, a in entry.addresses.items():
            entry.published[ip] = a.expires
        return FqdnNames(node=self.node, name=name,
                         addresses=[entry.addresses[ip] for ip in sorted(entry.addresses)],
                         endpoints=sorted(entry.endpoints))
