"""What the agent knows about its own datapath: each part's error, retries, drift. Pure.

The agent patches its datapath in parts (:data:`PARTS`): the three node maps, the lb maps
(one plan across ``lb_services``, ``lb_backends`` and ``lb_maglev_slots``), the conntrack
collectors, the NodePort programs on the node's device, and the datapath itself (programs
loaded, pins opened). Each part's error is its own: a part's success clears only that part's
error, and the agent is degraded while any part has one. A failed part is retried after
:func:`backoff_delay` (doubling, capped), without waiting for the next event.

Drift is counted per kernel map: entries the agent found different from what it wrote and
wrote back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from services.nodeagent.datapath.maps import conntrack, endpoints, ipcache, lb_ct, policy
from services.nodeagent.datapath.maps.lb_services import PART as LB_MAPS_PART

# Parts with an error of their own (the node maps' names are their pin names).
PART_IPCACHE = ipcache.NAME
PART_ENDPOINTS = endpoints.NAME
PART_POLICY = policy.NAME
PART_LB = LB_MAPS_PART              # lb_services + lb_backends + lb_maglev_slots, one plan
PART_CONNTRACK = conntrack.NAME     # the conntrack collector
PART_LB_CT = lb_ct.NAME             # the LB conntrack collector
PART_NODEPORT = "nodeport"          # NodePort programs on the node's device
PART_DATAPATH = "datapath"          # programs compiled and loaded, pins opened
NODE_PARTS = (PART_IPCACHE, PART_ENDPOINTS, PART_POLICY)
PARTS = (*NODE_PARTS, PART_LB, PART_CONNTRACK, PART_LB_CT, PART_NODEPORT, PART_DATAPATH)

RETRY_FIRST_S = 0.1        # delay before the first retry of a failed part
RETRY_FACTOR = 2.0         # each further retry waits this much longer...
RETRY_MAX_S = 10.0         # ...up to this
DATAPATH_RETRY_MAX_S = 60.0  # loading the programs compiles them: retried less often


def backoff_delay(attempt: int, first: float = RETRY_FIRST_S,
                  cap: float = RETRY_MAX_S) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first) of a failed part."""
    if attempt < 0:
        raise ValueError(f"retry attempt {attempt} is negative")
    # min() before the power would overflow for a part failing for days
    return min(cap, first * RETRY_FACTOR ** min(attempt, 64))


class DatapathHealth:
    """Errors per part, retries per part, drift repairs per kernel map."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}
        self.failures: Counter[str] = Counter()    # failed attempts per part
        self.retries: Counter[str] = Counter()     # retries started per part
        self.drift: Counter[str] = Counter()       # entries repaired per kernel map
        self._attempt: Counter[str] = Counter()    # consecutive failures (the backoff step)

    def failed(self, part: str, message: str) -> float:
        """Record a failure of ``part``; returns the delay before its next retry."""
        self.errors[part] = message
        self.failures[part] += 1
        step = self._attempt[part]
        self._attempt[part] += 1
        cap = DATAPATH_RETRY_MAX_S if part == PART_DATAPATH else RETRY_MAX_S
        return backoff_delay(step, cap=cap)

    def succeeded(self, parts: Iterable[str]) -> None:
        """These parts did what was asked: their errors (and only theirs) are gone."""
        for part in parts:
            self.errors.pop(part, None)
            self._attempt.pop(part, None)

    def retrying(self, part: str) -> None:
        self.retries[part] += 1

    def repaired(self, counts: dict[str, int]) -> int:
        """Count drift repairs per kernel map; returns the total of this round."""
        for name, n in counts.items():
            if n:
                self.drift[name] += n
        return sum(counts.values())

    def failing(self, parts: Iterable[str]) -> set[str]:
        return {p for p in parts if p in self.errors}

    @property
    def degraded(self) -> bool:
        return bool(self.errors)

    def summary(self) -> str:
        """One line naming every part in error ("" when none)."""
        return "; ".join(f"{part}: {msg}" for part, msg in sorted(self.errors.items()))

    def stats(self) -> dict[str, Any]:
        """The heartbeat's view (what ``cilia status`` shows per node)."""
        return {"error": self.summary(), "errors": dict(sorted(self.errors.items())),
                "drift": dict(sorted(self.drift.items())),
                "retries": dict(sorted(self.retries.items()))}
