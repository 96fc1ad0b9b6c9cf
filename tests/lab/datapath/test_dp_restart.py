"""Agent restarts: pinned maps survive, reconciling writes only the difference, and programs
keep enforcing while no Python process holds them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import pytest

from services.common.policytypes import PROTO_TCP, Direction, PolicyKey, Verdict
from services.nodeagent.datapath import (
    EndpointEntry,
    IpcacheEntry,
    NodeMaps,
    Programs,
    attach,
    expand_policy,
    is_pinned,
    unpin,
)
from tests.support.netlab import NodeLab, tcp_blocked, tcp_ok

pytestmark = pytest.mark.datapath


def desired_state() -> tuple[dict[str, IpcacheEntry], dict[str, EndpointEntry],
                             dict[PolicyKey, Verdict]]:
    ipc = {f"10.9.{i // 200}.{i % 200 + 1}/32": IpcacheEntry(300 + i % 7) for i in range(300)}
    ipc["0.0.0.0/0"] = IpcacheEntry(2)
    eps = {f"10.9.0.{i}": EndpointEntry(i, 300 + i, 10 + i, bool(i % 2), False)
           for i in range(1, 4)}
    pol = {PolicyKey(300 + s, 300 + p, s % 2, PROTO_TCP, 1000 + p, 1000 + p * 3): Verdict.ALLOW
           for s in range(4) for p in range(5)}
    pol[PolicyKey(301, 0, 0, 0, 0, 0)] = Verdict.DENY
    return ipc, eps, pol


def test_restart_applies_only_the_difference(node_name: str) -> None:
    ipc, eps, pol = desired_state()
    progs = Programs(node_name)
    with NodeMaps(node_name) as first:
        first.ipcache.reconcile(ipc)
        first.endpoints.reconcile(eps)
        res = first.policy.reconcile(pol)
        assert res.added == len(expand_policy(pol))
    progs.close()

    # The agent comes back: recompiles and reloads (maps are reused, not flushed) ...
    progs = Programs(node_name)
    try:
        with NodeMaps(node_name) as again:
            assert again.ipcache.entries() == ipc
            assert again.endpoints.entries() == eps
            # ... and reconciling the unchanged desired state writes nothing.
            assert again.ipcache.reconcile(ipc).writes == 0
            assert again.endpoints.reconcile(eps).writes == 0
            assert again.policy.reconcile(pol).writes == 0

            # A change made while it was down is exactly the diff.
            ipc["10.9.0.1/32"] = IpcacheEntry(999)
            del ipc["10.9.0.2/32"]
            r = again.ipcache.reconcile(ipc)
            assert (r.added, r.updated, r.deleted) == (0, 1, 1)
            del pol[PolicyKey(300, 300, 0, PROTO_TCP, 1000, 1000)]
            pol[PolicyKey(302, 303, 0, PROTO_TCP, 443, 443)] = Verdict.ALLOW
            changed = {k: v for k, v in pol.items() if k.subject in (300, 302)}
            r = again.policy.reconcile(changed, subjects=[300, 302])
            assert (r.added, r.updated, r.deleted) == (1, 0, 1)
        with NodeMaps(node_name) as reader:
            assert reader.ipcache.entries() == ipc
            assert reader.policy.blocks() == expand_policy(pol)
    finally:
        progs.close()
    unpin(node_name)
    assert not is_pinned(node_name)


AGENT_SCRIPT = textwrap.dedent("""
    import sys
    from services.common.policytypes import PolicyKey, Verdict
    from services.nodeagent.datapath import (EndpointEntry, IpcacheEntry, NodeMaps, Programs,
                                             attach)
    node, node_ns, host1, host2, ip1, ip2 = sys.argv[1:7]
    progs = Programs(node)
    idx1 = attach(progs, host1, netns=node_ns)
    idx2 = attach(progs, host2, netns=node_ns)
    maps = NodeMaps(node)
    maps.ipcache.reconcile({ip1 + "/32": IpcacheEntry(1001), ip2 + "/32": IpcacheEntry(1002)})
    maps.endpoints.reconcile({ip1: EndpointEntry(1, 1001, idx1),
                              ip2: EndpointEntry(2, 1002, idx2, enforce_ingress=True)})
    maps.policy.reconcile({PolicyKey(1002, 1001, 0, 6, 80, 80): Verdict.ALLOW})
""")


@pytest.fixture
def two_pods() -> Iterator[NodeLab]:
    lab = NodeLab.create(2, subnet="10.244.9")
    try:
        yield lab
    finally:
        lab.destroy()


def test_programs_enforce_while_no_agent_runs(node_name: str, two_pods: NodeLab) -> None:
    p1, p2 = two_pods.pods
    two_pods.server(p2, [80, 8080])
    subprocess.run([sys.executable, "-c", AGENT_SCRIPT, node_name, two_pods.node_ns,
                    p1.host_if, p2.host_if, p1.ip, p2.ip], check=True, timeout=60)
    # The "agent" has exited: no process of ours holds the programs or the maps.
    assert tcp_ok(p1, p2.ip, 80)
    assert tcp_blocked(p1, p2.ip, 8080)
    # A restarted agent (new objects over the pins) realizes a change made meanwhile.
    with NodeMaps(node_name) as maps:
        desired = {PolicyKey(1002, 1001, Direction.INGRESS, PROTO_TCP, 80, 80): Verdict.ALLOW,
                   PolicyKey(1002, 1001, Direction.INGRESS, PROTO_TCP, 8080, 8080):
                       Verdict.ALLOW}
        assert maps.policy.reconcile(desired).writes == 1
    assert tcp_ok(p1, p2.ip, 8080)


def test_reload_and_reattach_under_traffic(node_name: str, two_pods: NodeLab) -> None:
    """An agent restart recompiles and re-attaches (replace) while traffic flows: no allowed
    connection fails, no denied one passes."""
    p1, p2 = two_pods.pods
    two_pods.server(p2, [80, 8080])
    subprocess.run([sys.executable, "-c", AGENT_SCRIPT, node_name, two_pods.node_ns,
                    p1.host_if, p2.host_if, p1.ip, p2.ip], check=True, timeout=60)
    outcomes: list[bool] = []
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            outcomes.append(tcp_ok(p1, p2.ip, 80))

    t = threading.Thread(target=stream)
    t.start()
    try:
        for _ in range(3):
            progs = Programs(node_name)
            attach(progs, p1.host_if, netns=two_pods.node_ns)
            attach(progs, p2.host_if, netns=two_pods.node_ns)
            progs.close()
            assert tcp_blocked(p1, p2.ip, 8080)
    finally:
        stop.set()
        t.join()
    assert len(outcomes) >= 10 and all(outcomes)
