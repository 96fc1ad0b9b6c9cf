"""The reconciler: diffs, counts, partitions, retries, full maps. Typed maps run on the
kernel's pinned maps; the in-memory backend stays only where the kernel cannot be made to fail
on demand (busy, I/O errors) or a map of four entries is wanted."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from services.common.policytypes import PolicyKey, Verdict
from services.nodeagent.datapath import (
    EncodeError,
    EndpointEntry,
    IpcacheEntry,
    MapError,
    MapFullError,
    MemoryMapBackend,
    NodeMaps,
    PinnedMapBackend,
    Programs,
    Reconciler,
)
from services.nodeagent.datapath.maps.endpoints import encode_endpoints
from services.nodeagent.datapath.maps.ipcache import encode_ipcache, ipcache_keys
from services.nodeagent.datapath.maps.metrics import possible_cpus


def kv(i: int, v: int = 0) -> tuple[bytes, bytes]:
    return i.to_bytes(4, "little"), v.to_bytes(4, "little")


def backend(max_entries: int = 100) -> MemoryMapBackend:
    return MemoryMapBackend("test", 4, 4, max_entries)


def test_applies_exactly_the_difference() -> None:
    be = backend()
    r = Reconciler(be)
    res = r.reconcile(dict(kv(i) for i in range(10)))
    assert (res.added, res.updated, res.deleted, res.unchanged) == (10, 0, 0, 0)
    desired = dict(kv(i) for i in range(2, 12))
    desired.update([kv(5, 9)])
    res = r.reconcile(desired)
    assert (res.added, res.updated, res.deleted, res.unchanged) == (2, 1, 2, 7)
    assert be.data == desired
    res = r.reconcile(desired)
    assert res.writes == 0 and res.reads == 0


def test_a_new_reconciler_starts_from_what_the_map_holds() -> None:
    be = backend()
    be.data.update(kv(i) for i in range(5))
    r = Reconciler(be)
    res = r.reconcile(dict(kv(i) for i in range(5)))
    assert res.writes == 0 and res.reads == 1
    assert r.stats.as_dict()["reads"] == 1


def test_partitions_leave_others_alone() -> None:
    be = backend()
    r = Reconciler(be, partition_of=lambda k: k[0] % 2)
    r.reconcile(dict(kv(i) for i in range(6)))
    res = r.reconcile({kv(1, 7)[0]: kv(1, 7)[1]}, partitions=[1])
    assert (res.updated, res.deleted) == (1, 2)
    assert sorted(int.from_bytes(k, "little") for k in be.data) == [0, 1, 2, 4]
    with pytest.raises(ValueError, match="partition"):
        r.reconcile(dict([kv(2)]), partitions=[1])


def test_transient_errors_are_retried_with_backoff() -> None:
    be = backend()
    sleeps: list[float] = []
    r = Reconciler(be, sleep=sleeps.append, backoff_s=0.01)
    be.fail_next = [OSError(errno.EBUSY, "busy"), OSError(errno.EBUSY, "busy")]
    res = r.reconcile(dict(kv(i) for i in range(3)))
    assert res.added == 3 and res.retries == 2
    assert sleeps == [0.01, 0.02]
    assert r.stats.retries == 2


def test_gives_up_after_the_retries() -> None:
    be = backend()
    r = Reconciler(be, retries=2, sleep=lambda _s: None)
    be.fail_next = [OSError(errno.EIO, "io")] * 3
    with pytest.raises(MapError, match="map 'test'"):
        r.reconcile(dict([kv(1)]))
    assert r.stats.failures == 1


def test_full_map_gets_deletes_first_then_reports_full() -> None:
    be = backend(max_entries=4)
    r = Reconciler(be)
    r.reconcile(dict(kv(i) for i in range(4)))
    res = r.reconcile(dict(kv(i) for i in range(10, 14)))   # fits only after the deletes
    assert be.data == dict(kv(i) for i in range(10, 14))
    assert res.retries == 1
    with pytest.raises(MapFullError, match="full"):
        r.reconcile(dict(kv(i) for i in range(20, 25)))


@pytest.fixture
def maps(node_name: str) -> Iterator[NodeMaps]:
    """A node's real maps, pinned by its loaded programs (unpinned by ``node_name``)."""
    progs = Programs(node_name)
    try:
        with NodeMaps(node_name) as opened:
            yield opened
    finally:
        progs.close()


def test_a_bad_entry_is_left_out_and_the_others_written(maps: NodeMaps) -> None:
    # Issue 10: one bad entry failed the whole map's update, on every later patch too.
    res = maps.ipcache.reconcile({"10.0.0.1/32": IpcacheEntry(300),
                                  "10.0.0.1/33": IpcacheEntry(1), "not-an-ip": IpcacheEntry(2),
                                  "10.0.0.2/32": IpcacheEntry(0)})
    assert (res.added, res.skipped) == (1, 3)
    assert maps.ipcache.entries() == {"10.0.0.1/32": IpcacheEntry(300)}
    res = maps.endpoints.reconcile({"10.0.0.9": EndpointEntry(1, 0),
                                    "10.0.0.8": EndpointEntry(2, 300)})
    assert (res.added, res.skipped) == (1, 1)
    assert maps.endpoints.entries() == {"10.0.0.8": EndpointEntry(2, 300)}
    # A bad allow is left out alone ...
    res = maps.policy.reconcile({PolicyKey(300, 0, 0, 6, 80, 80): Verdict.ALLOW,
                                 PolicyKey(300, 0, 0, 6, 90, 10): Verdict.ALLOW})
    assert res.skipped == 1
    assert maps.policy.entries(300) == [(PolicyKey(300, 0, 0, 6, 80, 80), Verdict.ALLOW)]
    # ... a bad deny takes its subject's allows with it (fail closed), its denies stay.
    res = maps.policy.reconcile({PolicyKey(301, 0, 0, 6, 80, 80): Verdict.ALLOW,
                                 PolicyKey(301, 0, 1, 0, 0, 0): Verdict.ALLOW,
                                 PolicyKey(301, 0, 0, 6, 90, 10): Verdict.DENY,
                                 PolicyKey(301, 7, 0, 6, 22, 22): Verdict.DENY},
                                subjects=[301])
    assert res.skipped == 1
    assert maps.policy.entries(301) == [(PolicyKey(301, 7, 0, 6, 22, 22), Verdict.DENY)]
    assert maps.policy.entries(300) == [(PolicyKey(300, 0, 0, 6, 80, 80), Verdict.ALLOW)]
    assert {n: s["skipped"] for n, s in maps.stats().items()} == {
        "ipcache": 3, "endpoints": 1, "policy": 2}
    # The strict encoders still raise, naming the entry and the field.
    with pytest.raises(EncodeError, match="field prefix"):
        encode_ipcache({"10.0.0.1/33": IpcacheEntry(1)})
    with pytest.raises(EncodeError, match=r"endpoint 10\.0\.0\.9: field identity"):
        encode_endpoints({"10.0.0.9": EndpointEntry(1, 0)})


def test_typed_maps_roundtrip_through_bytes(maps: NodeMaps) -> None:
    ipc = {"10.0.0.0/8": IpcacheEntry(2), "192.168.1.7/32": IpcacheEntry(6, "192.168.1.7")}
    eps = {"10.1.0.5": EndpointEntry(3, 300, 12, True, False)}
    assert maps.ipcache.reconcile(ipc).added == 2
    assert maps.endpoints.reconcile(eps).added == 1
    assert maps.ipcache.entries() == ipc
    assert maps.endpoints.entries() == eps
    pol = {PolicyKey(300, 0, 1, 17, 53, 53): Verdict.ALLOW}
    assert maps.policy.reconcile(pol, subjects=[300]).added == 1
    assert maps.policy.reconcile({}, subjects=[301]).writes == 0
    maps.policy.reconcile({PolicyKey(301, 9, 0, 6, 8080, 8083): Verdict.DENY}, subjects=[301])
    assert maps.policy.entries(301) == [(PolicyKey(301, 9, 0, 6, 8080, 8083), Verdict.DENY)]
    assert len(maps.policy.entries()) == 2
    assert set(maps.stats()) == {"ipcache", "endpoints", "policy"}
    assert maps.stats()["policy"]["added"] == 2


def test_key_scope_patches_only_the_listed_keys() -> None:
    be = backend()
    r = Reconciler(be)
    r.reconcile(dict(kv(i) for i in range(5)))
    k1, k7 = kv(1)[0], kv(7)[0]
    res = r.reconcile(dict([kv(7, 1)]), keys=[k1, k7])   # 1 goes away, 7 arrives
    assert (res.added, res.deleted, res.updated) == (1, 1, 0)
    assert sorted(int.from_bytes(k, "little") for k in be.data) == [0, 2, 3, 4, 7]
    assert r.reconcile(dict([kv(7, 1)]), keys=[k7]).writes == 0
    with pytest.raises(ValueError, match="outside"):
        r.reconcile(dict([kv(3)]), keys=[k7])
    with pytest.raises(ValueError, match="not both"):
        r.reconcile({}, partitions=[None], keys=[k7])


def test_ipcache_and_endpoints_incremental_patches(maps: NodeMaps) -> None:
    maps.ipcache.reconcile({"10.0.0.1/32": IpcacheEntry(300), "10.0.0.2/32": IpcacheEntry(301)})
    res = maps.ipcache.reconcile({"10.0.0.3/32": IpcacheEntry(302)},
                                 prefixes=["10.0.0.1/32", "10.0.0.3/32"])
    assert (res.added, res.deleted) == (1, 1)
    assert set(maps.ipcache.entries()) == {"10.0.0.2/32", "10.0.0.3/32"}
    maps.endpoints.reconcile({"10.0.0.2": EndpointEntry(1, 301)})
    res = maps.endpoints.reconcile({"10.0.0.2": EndpointEntry(1, 301, 0, True)},
                                   ips=["10.0.0.2"])
    assert res.updated == 1
    assert maps.endpoints.entries()["10.0.0.2"].enforce_ingress


def test_possible_cpus_parsing() -> None:
    assert possible_cpus("0-1\n") == 2
    assert possible_cpus("0") == 1
    assert possible_cpus("0-3,6") == 7


def test_repair_puts_back_what_drifted_in_the_kernel_map(maps: NodeMaps) -> None:
    ipc = {"10.0.0.1/32": IpcacheEntry(300), "10.0.0.2/32": IpcacheEntry(301),
           "10.0.0.3/32": IpcacheEntry(302)}
    maps.ipcache.reconcile(ipc)
    assert maps.ipcache.reconciler.repair() == 0          # nothing drifted
    # Someone else writes through the pin: one entry deleted, one changed, one added.
    with PinnedMapBackend(maps.pin_dir / "ipcache", *_sizes(maps, "ipcache")) as pin:
        pin.delete(ipcache_keys(["10.0.0.1/32"]))
        pin.update(list(encode_ipcache({"10.0.0.2/32": IpcacheEntry(2),
                                        "10.9.0.0/16": IpcacheEntry(2)}).items()))
    assert maps.ipcache.entries() != ipc
    assert maps.ipcache.reconciler.repair() == 3          # exactly the three entries
    assert maps.ipcache.entries() == ipc
    assert maps.ipcache.reconciler.repair() == 0
    assert maps.stats()["ipcache"]["repaired"] == 3
    # A reconciler that never read its map has nothing to compare: it reads, repairs nothing.
    fresh = Reconciler(maps.policy.reconciler.backend)
    assert fresh.repair() == 0 and fresh.stats.reads == 1


def test_repair_of_a_map_that_fails_forgets_the_mirror() -> None:
    be = backend()
    r = Reconciler(be)
    r.reconcile(dict(kv(i) for i in range(3)))
    be.data.pop(kv(0)[0])
    be.fail_next = [OSError(errno.EIO, "io")]
    with pytest.raises(MapError, match="iterate"):
        r.repair()
    assert r.stats.failures == 1
    assert r.repair() == 0       # re-read: what the kernel holds is what it now believes


def _sizes(maps: NodeMaps, name: str) -> tuple[int, int]:
    rec = maps.reconcilers()[name].backend
    return rec.key_size, rec.value_size
