"""The Maglev slot array on a real pinned map: batched reads and writes at any offset,
placement reuse, and a full array."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from services.nodeagent.datapath import MapFullError, Programs, unpin
from services.nodeagent.datapath.lb import LbMaps
from services.nodeagent.datapath.maps import lb_maglev_slots
from services.nodeagent.datapath.maps.lb_maglev_slots import MaglevSlots, read_slots, write_slots
from services.nodeagent.datapath.reconciler import ReconcileResult

pytestmark = pytest.mark.datapath


@pytest.fixture(scope="module")
def maps() -> Iterator[LbMaps]:
    node = f"test-slots-{uuid.uuid4().hex[:6]}"
    programs = Programs(node)
    try:
        with LbMaps(node) as m:
            yield m
    finally:
        programs.close()
        unpin(node)


def test_batched_reads_and_writes_at_any_offset(maps: LbMaps) -> None:
    arr = maps._backends[lb_maglev_slots.NAME]
    n = arr.max_entries
    assert n == lb_maglev_slots.MAX_ENTRIES
    write_slots(arr, [(5000 + i, 1000 + i) for i in range(100)])
    assert read_slots(arr, 5000, 100) == [1000 + i for i in range(100)]
    assert read_slots(arr, 0, 3) == [0, 0, 0]
    write_slots(arr, [(n - 10 + i, 7) for i in range(10)])      # the array's last slots
    assert read_slots(arr, n - 10, 10) == [7] * 10


def test_placement_reuses_released_runs_and_reports_a_full_array(maps: LbMaps) -> None:
    slots = MaglevSlots(maps._backends[lb_maglev_slots.NAME])
    res = ReconcileResult()
    slots.put(10, [1, 2, 3] * 5, res)
    first = slots.value_of(10)
    assert res.updated == 15
    slots.put(10, [1, 2, 3] * 5, res)             # unchanged: nothing written
    assert res.updated == 15 and res.unchanged == 15
    slots.release(10)
    slots.put(12, [4] * 15, res)
    assert slots.value_of(12) == first             # the freed run is reused
    slots.put(14, [9], res)
    assert slots.value_of(14) == 9 and slots.tables([14]) == {14: [9]}
    with pytest.raises(MapFullError, match="no room"):
        slots.put(16, [1, 2] * (lb_maglev_slots.MAX_ENTRIES // 2 + 1), res)


def test_repair_puts_back_slots_that_drifted(maps: LbMaps) -> None:
    arr = maps._backends[lb_maglev_slots.NAME]
    slots = MaglevSlots(arr)
    res = ReconcileResult()
    slots.put(20, [1, 2, 3, 4] * 4, res)
    slots.put(22, [7], res)                         # one backend: no slots to drift
    assert slots.repair() == 0
    base = slots.value_of(20)
    write_slots(arr, [(base + 1, 99), (base + 6, 98)])   # written behind the agent's back
    assert slots.repair() == 2
    assert read_slots(arr, base, 16) == [1, 2, 3, 4] * 4
    assert slots.repair() == 0
    slots.invalidate()            # forgotten: read again, and nothing to compare with
    write_slots(arr, [(base, 55)])
    assert slots.repair() == 0
