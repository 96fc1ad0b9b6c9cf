"""`lab down` tells the bus its pods and nodes are gone; re-applying after `lab up` runs them."""

from __future__ import annotations

import asyncio

from services.common.roles import CLI
from tests.support.cluster import Cluster
from tests.support.procs import REPO

EXAMPLES = REPO / "examples" / "three-tier"
APP = ("-f", str(EXAMPLES / "00-namespace.yaml"), "-f", str(EXAMPLES / "deployments.yaml"))


def test_lab_down_up_and_reapply(lab: Cluster) -> None:
    lab.ok("apply", *APP)
    lab.wait("three endpoints", lambda: len([e for e in lab.endpoints()
                                             if e["identity"] >= 256]) == 3)
    out = lab.ok("lab", "down", "--name", lab.lab)
    assert "deleted 4 pods and nodes from the bus" in out    # 3 pods and the node
    # The identity service withdrew the pods' ipcache entries.
    lab.wait("no pod in the ipcache", lambda: _no_pod_ipcache(lab))
    lab.ok("lab", "up", "--nodes", "1", "--name", lab.lab)
    again = lab.ok("apply", *APP)
    assert "deployment/frontend unchanged" in again
    lab.wait("the pods run again", lambda: len([e for e in lab.endpoints()
                                                if e["identity"] >= 256]) == 3)


def _no_pod_ipcache(lab: Cluster) -> bool:
    async def read() -> bool:
        bus = await lab.bus(CLI)
        try:
            snap = await bus.snapshot(["cilia.ipcache.k8s.>"])
        finally:
            await bus.close()
        return not [d for d in snap.values() if d.event.type == "ipcache.upsert"]

    return asyncio.run(read())
