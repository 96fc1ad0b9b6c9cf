"""A full ``lb_backends`` map on the real pinned map: when someone else makes room while the
agent's write is failing, the agent's next attempt writes its backends and never puts back
entries it read before they were deleted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from services.nodeagent.datapath import MapFullError, PinnedMapBackend, Programs, unpin
from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath.backend import MapBackend
from services.nodeagent.datapath.lb import LbMaps, LbPlan
from services.nodeagent.datapath.maps import lb_backends
from services.nodeagent.datapath.maps.lb_backends import (
    LbBackendEntry,
    LbBackendKey,
    LbBackendValue,
)
from services.nodeagent.datapath.maps.spec import MapSpec
from services.nodeagent.datapath.nodemaps import pinned_factory

pytestmark = pytest.mark.datapath

JUNK_ID = 1 << 20       # far above the ids the lb service hands out


@pytest.fixture
def node() -> Iterator[str]:
    name = f"test-full-{uuid.uuid4().hex[:6]}"
    programs = Programs(name)
    try:
        yield name
    finally:
        programs.close()
        unpin(name)


def _open(node: str) -> PinnedMapBackend:
    return PinnedMapBackend(c.pin_dir(node) / lb_backends.NAME, lb_backends.SPEC.key_size,
                            lb_backends.SPEC.value_size)


def _junk_ids(pin: PinnedMapBackend) -> list[bytes]:
    return [k for k in pin.read_all() if LbBackendKey.from_buffer_copy(k).id >= JUNK_ID]


class _RoomMadeOnFailure:
    """The agent's handle on the pinned ``lb_backends``; when one of its writes finds the map
    full, another holder of the pin (a previous agent's leftovers being cleaned) deletes the
    junk before the error reaches the agent."""

    def __init__(self, inner: MapBackend, node: str) -> None:
        self.inner = inner
        self.node = node
        self.name = inner.name
        self.key_size = inner.key_size
        self.value_size = inner.value_size
        self.max_entries = inner.max_entries
        self.room_made = 0

    def read_all(self) -> dict[bytes, bytes]:
        return self.inner.read_all()

    def update(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        try:
            self.inner.update(items)
        except MapFullError:
            if not self.room_made:
                with _open(self.node) as other:
                    junk = _junk_ids(other)
                    other.delete(junk)
                    self.room_made = len(junk)
            raise

    def delete(self, keys: Sequence[bytes]) -> None:
        self.inner.delete(keys)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def test_room_made_while_a_write_fails_is_used_and_deleted_entries_stay_deleted(
        node: str) -> None:
    with _open(node) as pin:            # the map is full of backends nobody uses
        value = LbBackendValue(addr=0x0A0A0A0A, port=80, proto=6).to_bytes()
        pin.update([(LbBackendKey(id=JUNK_ID + i).to_bytes(), value)
                    for i in range(pin.max_entries)])
    pinned = pinned_factory(node)
    wrapped: list[_RoomMadeOnFailure] = []

    def factory(spec: MapSpec[Any]) -> MapBackend:
        backend = pinned(spec)
        if spec.name != lb_backends.NAME:
            return backend
        wrapped.append(_RoomMadeOnFailure(backend, node))
        return wrapped[0]

    with LbMaps(node, factory) as maps:
        want = {1: LbBackendEntry("10.244.7.1", 8080, "TCP", local=True)}
        maps.apply(LbPlan(backends=want))
        assert wrapped[0].room_made == lb_backends.MAX_ENTRIES   # the write did fail first
        assert maps.backend_entries() == want
    with _open(node) as pin:
        assert _junk_ids(pin) == []

