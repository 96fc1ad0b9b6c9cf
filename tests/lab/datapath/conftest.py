"""Fixtures of the datapath tests: a unique node with its pins, and a pod lab."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from services.nodeagent.datapath import NodeMaps, Programs, attach, unpin
from tests.support.netlab import EchoServer, NodeLab, Pod

# Identities and ports of the lab's pods.
ID_POD1, ID_POD2, ID_POD3 = 1001, 1002, 1003
SERVER_PORTS = [80, 5432, 8080, 9000, 9003, 9008]


@dataclass
class Env:
    node: str
    lab: NodeLab
    programs: Programs
    maps: NodeMaps
    servers: list[EchoServer]

    @property
    def pods(self) -> list[Pod]:
        return self.lab.pods


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    """Three pods on one node with the programs attached to every host-side veth; pods 1
    and 2 serve TCP echo on SERVER_PORTS; pod 3 is left out of the maps by default."""
    node = f"test-{uuid.uuid4().hex[:8]}"
    lab = NodeLab.create(3)
    programs = None
    maps = None
    try:
        programs = Programs(node)
        for pod in lab.pods:
            attach(programs, pod.host_if, netns=lab.node_ns)
        maps = NodeMaps(node)
        servers = [lab.server(pod, SERVER_PORTS) for pod in lab.pods]
        yield Env(node, lab, programs, maps, servers)
    finally:
        if maps is not None:
            maps.close()
        if programs is not None:
            programs.close()
        lab.destroy()
        unpin(node)
