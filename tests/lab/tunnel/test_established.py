"""Policy reaches established connections, in both routing modes, on a real lab: a long-lived
TCP connection between pods on two nodes (a request every 100 ms) stops once a policy that
denies it is in the kernel maps; and a pod reusing a deleted pod's address inherits none of
its conntrack entries."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.lab.plan import pod_netns_name
from services.nodeagent.datapath import open_maps
from tests.support.cluster import Cluster
from tests.support.netlab import EchoServer, in_netns
from tests.support.threetier import NS, backend_allows_frontend, deploy

LONG_PORT = 9090            # the long-lived connection's port (not one the policy allows)
TICK_S = 0.1                # one request per tick
RECV_TIMEOUT_S = 0.5
IN_FLIGHT_S = 0.5           # a request sent just before the maps changed may still be answered
AFTER_S = 3.0               # how long the connection is watched once the policy is realized
WARMUP_ANSWERS = 5

DENY_9090 = backend_allows_frontend("backend-8080-only", 8080)

REUSE_POD = """apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels:
    app: reuse
spec:
  nodeName: {node}
  containers:
    - name: web
      image: cilia/echo
      ports:
        - containerPort: 80
"""


@pytest.fixture(scope="module", params=["native", "tunnel"])
def lab(request: pytest.FixtureRequest) -> Cluster:
    """The package's lab of each routing mode (conftest.py)."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


class Ticker:
    """A TCP connection from a pod that sends a request every tick and notes each answer."""

    def __init__(self, netns: str, dst: str, port: int) -> None:
        self.sock = in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        self.sock.settimeout(3)
        self.sock.connect((dst, port))
        self.sock.settimeout(RECV_TIMEOUT_S)
        self.answered: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                self.sock.sendall(f"req-{n};".encode())
                if self.sock.recv(4096):
                    self.answered.append(time.monotonic())
            except OSError:
                pass
            self._stop.wait(TICK_S)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def _pod(lab: Cluster, app: str) -> dict[str, Any]:
    return next(e for e in lab.endpoints() if f"k8s:app={app}" in e["labels"])


def test_a_denied_established_connection_stops(lab: Cluster, tmp_path: Path) -> None:
    where = deploy(lab)
    assert where.nodes["frontend"] != where.nodes["backend"], "the flow crosses nodes"
    backend, frontend = _pod(lab, "backend"), _pod(lab, "frontend")
    server = EchoServer(pod_netns_name(lab.lab, NS, backend["pod"].split("/")[1]),
                        backend["ipv4"], [LONG_PORT])
    ticker = Ticker(pod_netns_name(lab.lab, NS, frontend["pod"].split("/")[1]),
                    backend["ipv4"], LONG_PORT)
    try:
        lab.wait("the connection carries requests",
                 lambda: len(ticker.answered) >= WARMUP_ANSWERS)
        policy = tmp_path / "deny.yaml"
        policy.write_text(DENY_9090)
        lab.ok("apply", "-f", str(policy))
        lab.wait("backend enforces ingress", lambda: _pod(lab, "backend")["ingress_enforcement"])
        lab.settle()
        realized = time.monotonic()
        time.sleep(AFTER_S)
        last = ticker.answered[-1]
        assert last < realized + IN_FLIGHT_S, \
            f"answers went on {last - realized:.2f}s after the policy was in the maps"
        # the flow is still tracked on the backend's node: the policy, not an expiry, stops it
        with open_maps(where.nodes["backend"]) as maps:
            tracked = [e for e in maps.conntrack.entries()
                       if e.dport == LONG_PORT and e.dst == backend["ipv4"]]
        assert tracked
        flows = lab.json("observe", "--node", where.nodes["backend"], "--verdict", "DROPPED",
                         "--last", "200")
        drops = [f for f in flows if f["dst_port"] == LONG_PORT
                 and f["src_ip"] == frontend["ipv4"]]
        assert drops and drops[-1]["reason_name"] == "policy denied"
        assert drops[-1]["src_identity"] == frontend["identity"]
    finally:
        ticker.close()
        server.stop()
        lab.cilia("delete", "-f", str(tmp_path / "deny.yaml"))


def _entries_of(node: str, ip: str) -> list[Any]:
    with open_maps(node) as maps:
        return [e for e in maps.conntrack.entries() if ip in (e.src, e.dst)]


def _apply_pod(lab: Cluster, manifest: Path, name: str) -> str:
    """Apply a one-pod manifest and wait for its endpoint; returns the pod's address."""
    lab.ok("apply", "-f", str(manifest))
    pod = f"{NS}/{name}"
    lab.wait(f"{name} has an endpoint", lambda: any(e["pod"] == pod for e in lab.endpoints()))
    return next(e["ipv4"] for e in lab.endpoints() if e["pod"] == pod)


@contextlib.contextmanager
def _removed_after(lab: Cluster, *manifests: Path) -> Iterator[None]:
    """Delete the test's pods at the end, also when it fails: the lab is shared with later
    tests, whose ``deploy()`` expects none of them (deleting one already gone is harmless)."""
    try:
        yield
    finally:
        for manifest in manifests:
            lab.cilia("delete", "-f", str(manifest))


def test_a_reused_address_starts_without_conntrack_entries(lab: Cluster,
                                                           tmp_path: Path) -> None:
    where = deploy(lab)
    node = where.nodes["frontend"]
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(REUSE_POD.format(name="reuse-a", ns=NS, node=node))
    second.write_text(REUSE_POD.format(name="reuse-b", ns=NS, node=node))
    with _removed_after(lab, first, second):
        addr = _apply_pod(lab, first, "reuse-a")
        assert lab.connect("deploy/frontend", NS, addr, 80) == "OK"
        assert _entries_of(node, addr), "the pod's flows are tracked"

        lab.ok("delete", "-f", str(first))
        lab.wait("reuse-a is gone",
                 lambda: not any(e["ipv4"] == addr for e in lab.endpoints()))
        assert _entries_of(node, addr) == [], "a deleted endpoint's flows go with it"
        # traffic to the dead address leaves an entry behind on the sender's side
        lab.connect("deploy/frontend", NS, addr, 80, timeout=0.5)
        assert _entries_of(node, addr), "a stale entry names the free address"

        before = time.monotonic_ns()
        assert _apply_pod(lab, second, "reuse-b") == addr, "the address was reused"
        inherited = [e for e in _entries_of(node, addr) if e.created_ns < before]
        assert inherited == [], "the new pod inherited conntrack entries"


def test_a_deleted_remote_pod_leaves_no_conntrack_entries_on_other_nodes(
        lab: Cluster, tmp_path: Path) -> None:
    """The frontend's node tracked flows with a pod on the other node; once that pod is gone
    (its ipcache entry deleted), those entries go too, so a later owner of the address
    cannot pass packets there as replies."""
    where = deploy(lab)
    here = where.nodes["frontend"]
    there = next(n for n in where.nodes.values() if n != here)
    manifest = tmp_path / "remote.yaml"
    manifest.write_text(REUSE_POD.format(name="remote-a", ns=NS, node=there))
    with _removed_after(lab, manifest):
        addr = _apply_pod(lab, manifest, "remote-a")
        assert lab.connect("deploy/frontend", NS, addr, 80) == "OK"
        assert _entries_of(here, addr), "the frontend's node tracks the flow"

        lab.ok("delete", "-f", str(manifest))
        lab.wait("the frontend's node forgot the address's flows",
                 lambda: _entries_of(here, addr) == [])
