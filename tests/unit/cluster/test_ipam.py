"""IPAM: allocation rules, idempotency, release, persistence (pure + state file)."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.nodeagent.endpoints import Endpoint, EndpointStore
from services.nodeagent.ipam import (
    IpamExhaustedError,
    IpamStateError,
    IpamStore,
    PodCidrAllocator,
)

CIDR = ipaddress.IPv4Network("10.244.1.0/24")
SMALL = ipaddress.IPv4Network("10.244.9.0/29")


def test_skips_network_gateway_broadcast_and_is_idempotent() -> None:
    alloc = PodCidrAllocator(CIDR)
    first = alloc.allocate("c1")
    assert str(first) == "10.244.1.2"
    assert alloc.allocate("c1") == first
    assert str(alloc.allocate("c2")) == "10.244.1.3"


def test_exhaustion_and_reuse_after_release() -> None:
    alloc = PodCidrAllocator(SMALL)
    got = [str(alloc.allocate(f"c{i}")) for i in range(5)]
    assert got == [f"10.244.9.{i}" for i in range(2, 7)]
    with pytest.raises(IpamExhaustedError, match=re.escape("10.244.9.0/29: no free address")):
        alloc.allocate("c5")
    assert str(alloc.release("c2")) == "10.244.9.4"
    assert alloc.release("c2") is None
    assert str(alloc.allocate("c5")) == "10.244.9.4"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 7)), max_size=40))
def test_random_operations_never_hand_out_duplicates_or_reserved(
        ops: list[tuple[bool, int]]) -> None:
    alloc = PodCidrAllocator(SMALL)
    for is_alloc, n in ops:
        if is_alloc:
            try:
                alloc.allocate(f"c{n}")
            except IpamExhaustedError:
                assert len(alloc.allocations) == 5
        else:
            alloc.release(f"c{n}")
        ips = list(alloc.allocations.values())
        assert len(ips) == len(set(ips))
        assert not set(ips) & alloc.reserved
        assert all(ip in SMALL for ip in ips)


def test_store_persists_across_restart(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    store = IpamStore(path, CIDR)
    a = store.allocate("ca")
    b = store.allocate("cb")
    store.release("ca")
    again = IpamStore(path, CIDR)          # a restarted agent
    assert again.lookup("cb") == b and again.lookup("ca") is None
    assert again.allocate("cb") == b
    assert again.allocate("cc") == a       # the released address is free again
    assert json.loads(path.read_text())["allocations"] == {"cb": str(b), "cc": str(a)}


def test_store_refuses_other_cidr_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    IpamStore(path, CIDR).allocate("c")
    with pytest.raises(IpamStateError, match=re.escape("10.244.2.0/24")):
        IpamStore(path, ipaddress.IPv4Network("10.244.2.0/24"))
    path.write_text("{not json")
    with pytest.raises(IpamStateError, match="ipam state"):
        IpamStore(path, CIDR)


def test_endpoint_store_keeps_ids_across_restart(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.json"
    store = EndpointStore(path)
    base = dict(pod_namespace="ns", pod_name="p", gateway="10.244.1.1", host_ifname="lxc1",
                host_ifindex=7, host_mac="02:00:00:00:00:01", pod_ifname="eth0",
                pod_mac="02:00:00:00:00:02", netns_path="/run/netns/x", node="n1",
                node_netns="cilia-x-node1")
    for cid in ("a", "b", "c"):
        store.put(Endpoint(id=store.next_id(), container_id=cid, ipv4="10.244.1.2", **base))
    store.remove("b")
    again = EndpointStore(path)
    assert [(e.container_id, e.id) for e in again.all()] == [("a", 1), ("c", 3)]
    assert again.next_id() == 2
