"""The metrics map (``lib/metrics.h``): per-CPU array of verdict counters, slot = reason * 2
+ direction (slot 0: verdict events the ring buffer could not take).

The kernel counts every drop and every new flow forwarded; userspace sums the CPUs for the
agent's metrics and ``cilia bpf metrics list``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Protocol

from services.common.policytypes import Direction
from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath.maps.spec import MapSpec, Renderer, Row, Twin, U32Key, u64

NAME = "metrics"
METRICS_SLOTS = 512            # the header's METRICS_SLOTS
METRICS_SLOT_EVENTS_LOST = 0
_POSSIBLE_CPUS = Path("/sys/devices/system/cpu/possible")


# struct metrics_value (lib/metrics.h) -- one per CPU per slot
class MetricsValue(Twin):
    C_STRUCT, C_HEADER = "metrics_value", "metrics.h"
    _fields_ = (("packets", u64), ("bytes", u64))


class PerCpuBackend(Protocol):
    """A backend that reads the per-CPU values of a key."""

    def lookup_percpu(self, key: bytes, ncpus: int) -> list[bytes] | None: ...


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


def verdict_of(reason: int) -> str:
    """FORWARDED or DROPPED: reasons below ``FORWARD_REASON_LIMIT`` are forwards."""
    return c.VERDICT_NAMES[c.FLOW_VERDICT_FORWARDED if reason < c.FORWARD_REASON_LIMIT
                           else c.FLOW_VERDICT_DROPPED]


class MetricsMap:
    """Reads the per-CPU ``metrics`` array (its backend must read per-CPU values)."""

    def __init__(self, backend: Any) -> None:
        self.backend: PerCpuBackend = backend
        self.ncpus = possible_cpus()

    def _slot(self, slot: int) -> Counter:
        values = self.backend.lookup_percpu(slot.to_bytes(4, "little"), self.ncpus) or []
        per_cpu = [MetricsValue.from_buffer_copy(v) for v in values]
        return Counter(sum(v.packets for v in per_cpu), sum(v.bytes for v in per_cpu))

    def read(self) -> dict[VerdictCount, Counter]:
        """Non-zero counters by (verdict, reason, direction): packets that got a verdict event
        (new flows forwarded, every drop)."""
        return {VerdictCount(verdict_of(r.code), r.reason, r.direction): Counter(r.packets,
                                                                             r.bytes)
                for r in self.by_reason()}

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
        return self._slot(METRICS_SLOT_EVENTS_LOST).packets

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


def rows(view: MetricsMap) -> list[Row]:
    return [{"reason": r.reason, "reason_code": r.code, "verdict": verdict_of(r.code),
             "direction": r.direction, "packets": r.packets, "bytes": r.bytes}
            for r in view.by_reason()]


def cells(r: Row) -> list[Any]:
    return [r["reason"], r["direction"].upper(), r["packets"], r["bytes"], r["node"]]


SPEC: MapSpec[MetricsMap] = MapSpec(
    name=NAME, header="metrics.h", map_type="percpu_array", key=U32Key, value=MetricsValue,
    max_entries=METRICS_SLOTS, cflags={}, view=MetricsMap,
    renderer=Renderer("metrics", "The datapath's verdict counters.",
                      "Packets and bytes by verdict reason and direction, from the kernel "
                      "(like `cilium-dbg bpf metrics list`): every drop, and the new flows "
                      "forwarded.", rows, ("REASON", "DIRECTION", "PACKETS", "BYTES", "NODE"),
                      cells))
