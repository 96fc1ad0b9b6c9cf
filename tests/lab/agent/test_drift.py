"""Kernel maps that drift from what the agent wrote are put back, counted, and shown.

A lab agent checks its maps every second here (``CILIA_AGENT_DRIFT_INTERVAL_S``). The test
writes and deletes entries behind its back, through the node's pinned maps: an ipcache entry
gone and a foreign one added, an endpoint's ingress enforcement turned off, a policy entry
gone and an allow the policy does not have, a service frontend gone, a backend's port and a
Maglev slot changed. The agent puts back exactly those entries, per map, and ``cilia status``
shows it; the packets go as the policy says again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from services.common.identities import ID_WORLD
from services.common.policytypes import PROTO_TCP, Direction, PolicyKey, Verdict
from services.nodeagent.agent import DRIFT_INTERVAL_ENV
from services.nodeagent.datapath import IpcacheEntry, NodeMaps
from services.nodeagent.datapath.lb import LbMaps
from services.nodeagent.datapath.maps.endpoints import encode_endpoints
from services.nodeagent.datapath.maps.ipcache import encode_ipcache, ipcache_keys
from services.nodeagent.datapath.maps.lb_backends import encode_backends
from services.nodeagent.datapath.maps.lb_maglev_slots import read_slots, write_slots
from services.nodeagent.datapath.maps.lb_services import decode_services
from services.nodeagent.datapath.maps.policy import encode_policy, encode_prefix
from tests.support.cluster import Cluster, temp_cluster
from tests.support.procs import REPO

pytestmark = pytest.mark.datapath

EXAMPLES = REPO / "examples"
NS = "production"
DRIFT_CHECK_S = "1"       # the agents' drift check period in this lab
JUNK_PREFIX = "10.123.0.0/16"
EXPECTED = {"ipcache": 2, "endpoints": 1, "policy": 2, "lb_services": 1, "lb_backends": 1,
            "lb_maglev_slots": 1}


@pytest.fixture(scope="module")
def lab() -> Iterator[Cluster]:
    with temp_cluster(nodes=1, extra_env={DRIFT_INTERVAL_ENV: DRIFT_CHECK_S}) as c:
        yield c


def _kernel(node: str) -> dict[str, Any]:
    with NodeMaps(node) as maps, LbMaps(node) as lb:
        services = lb.service_entries()
        return {"ipcache": maps.ipcache.entries(), "endpoints": maps.endpoints.entries(),
                "policy": maps.policy.blocks(), "lb_services": services,
                "lb_backends": lb.backend_entries(),
                "lb_maglev_slots": {fe: lb.kernel_table(e.table_int, e.size_int)
                                    for fe, e in services.items()}}


def _agent(lab: Cluster) -> dict[str, Any]:
    health = lab.json("status")["health"]
    return next(iter(health["agents"]))  # type: ignore[no-any-return]


def test_drift_is_put_back_counted_and_shown(lab: Cluster) -> None:
    three = EXAMPLES / "three-tier"
    lab.ok("apply", "-f", str(three / "00-namespace.yaml"), "-f", str(three / "deployments.yaml"),
           "-f", str(three / "policy.yaml"), "-f",
           str(EXAMPLES / "services" / "echo-clusterip.yaml"))
    lab.wait("six pods with identities", lambda: len(
        [e for e in lab.endpoints() if e["identity"] >= 256]) == 6, timeout=60)
    lab.settle()
    ids = {e["pod"].split("/")[1].split("-")[0]: e for e in lab.endpoints()}
    node = ids["frontend"]["node"]
    ips = lab.pod_ips(NS)
    fe_id, be_id, db_id = (ids[a]["identity"] for a in ("frontend", "backend", "database"))
    echo_vip = next(s["frontend"].split(":")[0] for s in lab.json("service", "list")
                    if s["service"] == "default/echo")
    assert lab.connect("deploy/frontend", NS, ips["database"], 5432) == "timeout"
    before = _kernel(node)
    assert _agent(lab)["drift"] == {}

    with NodeMaps(node) as maps, LbMaps(node) as lb:
        ipcache = maps.ipcache.reconciler.backend
        ipcache.delete(ipcache_keys([f"{ips['frontend']}/32"]))
        ipcache.update(list(encode_ipcache({JUNK_PREFIX: IpcacheEntry(ID_WORLD)}).items()))
        open_backend = before["endpoints"][ips["backend"]]._replace(enforce_ingress=False)
        maps.endpoints.reconciler.backend.update(
            list(encode_endpoints({ips["backend"]: open_backend}).items()))
        policy = maps.policy.reconciler.backend
        allow = next(p for p in before["policy"] if (p.subject, p.peer) == (be_id, fe_id))
        policy.delete([encode_prefix(allow)])
        policy.update(list(encode_policy({PolicyKey(db_id, fe_id, Direction.INGRESS,
                                                    PROTO_TCP, 5432, 5432):
                                          Verdict.ALLOW}).items()))
        raw = lb.services.backend.read_all()
        echo_key = next(k for k, v in raw.items()
                        if next(iter(decode_services({k: v}))).address == echo_vip)
        lb.services.backend.delete([echo_key])
        echo = before["lb_services"][next(fe for fe in before["lb_services"]
                                          if fe.address == echo_vip)]
        table = before["lb_maglev_slots"][next(fe for fe in before["lb_services"]
                                               if fe.address == echo_vip)]
        bid = table[0]
        lb.backends.backend.update(list(encode_backends(
            {bid: before["lb_backends"][bid]._replace(port=9)}).items()))
        other = next(b for b in table if b != bid)
        write_slots(lb.maglev.backend, [(echo.table_int, other)])
        assert read_slots(lb.maglev.backend, echo.table_int, 1) == [other]

    lab.wait("drift put back", lambda: _agent(lab)["drift"] == EXPECTED, timeout=30)
    assert _kernel(node) == before
    agent = _agent(lab)
    assert agent["health"] == "OK" and agent["errors"] == {}
    row = next(line for line in lab.ok("status").splitlines() if line.startswith(node))
    assert ("endpoints=1 ipcache=2 lb_backends=1 lb_maglev_slots=1 lb_services=1 policy=2"
            in row), row
    # What the policy says holds on real packets again.
    assert lab.connect("deploy/frontend", NS, ips["backend"], 8080) == "OK"
    assert lab.connect("deploy/frontend", NS, ips["database"], 5432) == "timeout"
