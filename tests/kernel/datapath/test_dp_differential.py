"""Differential test: the kernel's verdict on synthetic packets (BPF_PROG_TEST_RUN against
the live maps) equals the policy semantics written out in Python, for random policies."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.identities import ID_WORLD
from services.common.policytypes import PROTO_ICMP, PROTO_TCP, PROTO_UDP, PolicyKey, Verdict
from services.nodeagent.datapath import EndpointEntry, IpcacheEntry, NodeMaps, Programs, unpin
from services.nodeagent.datapath.kernel.testrun import ipv4_packet, passes
from tests.unit.datapath.test_dp_policykeys import reference

pytestmark = pytest.mark.datapath

# Two local endpoints (subjects) and two remote peers; 10.99.9.9 is in no map (world).
ENDPOINTS = {"10.99.0.1": 300, "10.99.0.2": 301}
PEERS = {"10.99.1.1": 400, "10.99.1.2": 401, "10.99.9.9": ID_WORLD}
_sports = itertools.count(10000)


@pytest.fixture(scope="module")
def kernel() -> Iterator[tuple[Programs, NodeMaps]]:
    node = f"test-{uuid.uuid4().hex[:8]}"
    progs = Programs(node)
    maps = NodeMaps(node)
    try:
        maps.ipcache.reconcile({f"{ip}/32": IpcacheEntry(i) for ip, i in
                                list(ENDPOINTS.items()) + list(PEERS.items())
                                if i != ID_WORLD})
        yield progs, maps
    finally:
        maps.close()
        progs.close()
        unpin(node)


rules = st.builds(
    lambda subject, peer, direction, proto, ports: PolicyKey(subject, peer, direction, proto,
                                                             *ports),
    st.sampled_from(sorted(ENDPOINTS.values())),
    st.sampled_from([0, 400, 401, ID_WORLD]),
    st.sampled_from([0, 1]),
    st.sampled_from([0, PROTO_TCP, PROTO_UDP, PROTO_ICMP]),
    st.one_of(st.just((0, 0)),
              st.integers(1, 40).flatmap(lambda lo: st.tuples(st.just(lo),
                                                              st.integers(lo, 48)))))

queries = st.tuples(st.sampled_from(sorted(ENDPOINTS)), st.sampled_from(sorted(PEERS)),
                    st.sampled_from([0, 1]), st.sampled_from([PROTO_TCP, PROTO_UDP, PROTO_ICMP]),
                    st.integers(0, 50))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=st.dictionaries(rules, st.sampled_from([Verdict.ALLOW, Verdict.DENY]),
                              max_size=10),
       enforce=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
       samples=st.lists(queries, min_size=1, max_size=12))
def test_kernel_verdict_equals_policy_semantics(
        kernel: tuple[Programs, NodeMaps], policy: dict[PolicyKey, Verdict],
        enforce: tuple[bool, bool, bool, bool],
        samples: list[tuple[str, str, int, int, int]]) -> None:
    progs, maps = kernel
    flags = {ip: (enforce[2 * n], enforce[2 * n + 1]) for n, ip in enumerate(sorted(ENDPOINTS))}
    maps.endpoints.reconcile({ip: EndpointEntry(n + 1, ENDPOINTS[ip], 0, *flags[ip])
                              for n, ip in enumerate(sorted(ENDPOINTS))})
    maps.policy.reconcile(policy)
    maps.conntrack.gc(now_ns=2**64 - 1)
    for ep_ip, peer_ip, direction, proto, port in samples:
        subject, peer = ENDPOINTS[ep_ip], PEERS[peer_ip]
        # ICMP echo requests carry no port: only "any port" entries can match them.
        dport = 0 if proto == PROTO_ICMP else port
        sport = next(_sports)
        if direction == 1:   # egress: the endpoint sends, checked by cil_from_pod
            pkt, prog = ipv4_packet(ep_ip, peer_ip, proto, sport, dport), "cil_from_pod"
        else:                # ingress: the endpoint receives, checked by cil_to_pod
            pkt, prog = ipv4_packet(peer_ip, ep_ip, proto, sport, dport), "cil_to_pod"
        want = reference(policy, subject, peer, direction, proto, dport)
        expected = want == Verdict.ALLOW or (want is None and not flags[ep_ip][direction])
        assert passes(progs, prog, pkt) == expected, (ep_ip, peer_ip, direction, proto, dport)
