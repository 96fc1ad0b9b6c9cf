"""Per-CPU verdict counters of the datapath, summed for the agent's metrics."""

from __future__ import annotations

import ctypes as ct
from pathlib import Path
from typing import NamedTuple

from services.common.policytypes import Direction
from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath.backend import PinnedMapBackend
from services.nodeagent.datapath.twins import MetricsValue

_POSSIBLE_CPUS = Path("/sys/devices/system/cpu/possible")


def possible_cpus(text: str | None = None) -> int:
    """How many CPUs per-CPU maps hold values for (``0-3,5`` -> 5 ... counts the highest+1)."""
    spec = (text if text is not None else _POSSIBLE_CPUS.read_text()).strip()
    highest = 0
    for part in spec.split(","):
        highest = max(highest, int(part.split("-")[-1]))
    return highest + 1


class VerdictCount(NamedTuple):
    verdict: str        # "FORWARDED" | "DROPPED"
    reason: str         # reason name (lib/events.h)
    direction: str      # "ingress" | "egress"


class Counter(NamedTuple):
    packets: int
    bytes: int


class ReasonCount(NamedTuple):
    code: int           # reason number (drops: Cilium's)
    reason: str
    direction: str      # "ingress" | "egress"
    packets: int
    bytes: int


class MetricsMap:
    """Reads the pinned ``metrics`` per-CPU array."""

    def __init__(self, path: Path) -> None:
        self.backend = PinnedMapBackend(path, ct.sizeof(ct.c_uint32), ct.sizeof(MetricsValue))
        self.ncpus = possible_cpus()

    def _slot(self, slot: int) -> Counter:
        values = self.backend.lookup_percpu(slot.to_bytes(4, "little"), self.ncpus) or []
        per_cpu = [MetricsValue.from_buffer_copy(v) for v in values]
        return Counter(sum(v.packets for v in per_cpu), sum(v.bytes for v in per_cpu))

    def read(self) -> dict[VerdictCount, Counter]:
        """Non-zero counters by (verdict, reason, direction): packets that got a verdict event
        (new flows forwarded, every drop)."""
        out: dict[VerdictCount, Counter] = {}
        for reason in c.REASON_NAMES:
            for direction in Direction:
                count = self._slot(reason << 1 | int(direction))
                if count.packets:
                    verdict = (c.VERDICT_NAMES[c.FLOW_VERDICT_FORWARDED]
                               if reason < c.FORWARD_REASON_LIMIT
                               else c.VERDICT_NAMES[c.FLOW_VERDICT_DROPPED])
                    out[VerdictCount(verdict, c.REASON_NAMES[reason],
                                     direction.name.lower())] = count
        return out

    def by_reason(self) -> list[ReasonCount]:
        """Non-zero counters by reason code and direction, sorted (``bpf metrics list``)."""
        out = []
        for reason in sorted(c.REASON_NAMES):
            for direction in Direction:
                count = self._slot(reason << 1 | int(direction))
                if count.packets:
                    out.append(ReasonCount(reason, c.REASON_NAMES[reason],
                                           direction.name.lower(), *count))
        return out

    def events_lost(self) -> int:
        """Verdict events the ring buffer could not take (the reader fell behind)."""
        return self._slot(c.METRICS_SLOT_EVENTS_LOST).packets

    def close(self) -> None:
        self.backend.close()
