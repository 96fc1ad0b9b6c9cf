"""Lab fixtures: an isolated state/run directory and labs that are always taken down.

Every lab a test makes has a unique name (``l<pid><n>``) so that parallel sessions never share
namespaces, and is removed by ``down`` in a ``finally`` whatever the test did.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from services.lab import LabState, down, up
from services.lab import netns as ns

_COUNTER = itertools.count(1)
CNI_PLUGIN = str(Path(sys.executable).parent / "cilia-cni")
CONNECT = str(Path(sys.executable).parent / "cilia-connect")


def unique_lab() -> str:
    return f"l{os.getpid()}{next(_COUNTER)}"


@dataclass(frozen=True)
class RootSnapshot:
    links: frozenset[tuple[int, str]]
    routes: frozenset[tuple[Any, ...]]
    netns: frozenset[str]


def root_snapshot() -> RootSnapshot:
    """Links and routes of the root namespace (every table, both families)."""
    with IPRoute() as ipr:
        links = frozenset((int(link["index"]), str(link.get("ifname")))
                          for link in ipr.get_links())
        routes = frozenset(
            (r["family"], r.get("table"), r.get("dst"), r["dst_len"], r.get("oif"),
             r.get("gateway"), r["type"])
            for family in (socket.AF_INET, socket.AF_INET6)
            for r in ipr.get_routes(family=family, table=0))
    return RootSnapshot(links, routes, frozenset(ns.list_netns()))


@pytest.fixture(scope="module")
def lab_dirs() -> Iterator[tuple[Path, Path]]:
    """CILIA_STATE_DIR and CILIA_RUN_DIR in temporary directories for this module."""
    saved = {k: os.environ.get(k) for k in ("CILIA_STATE_DIR", "CILIA_RUN_DIR")}
    state = Path(tempfile.mkdtemp(prefix="cilia-state-"))
    run = Path(tempfile.mkdtemp(prefix="crun", dir="/tmp"))  # short: unix socket paths
    os.environ["CILIA_STATE_DIR"] = str(state)
    os.environ["CILIA_RUN_DIR"] = str(run)
    try:
        yield state, run
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture(scope="module")
def lab2(lab_dirs: tuple[Path, Path]) -> Iterator[LabState]:
    """A lab with two nodes and their agents (the standalone CNI server)."""
    name = unique_lab()
    try:
        yield up(name, nodes=2)
    finally:
        down(name)


def cni_env(command: str, container_id: str = "", netns: str = "", ifname: str = "eth0",
            args: str = "") -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
           "CNI_PATH": str(Path(CNI_PLUGIN).parent)}
    for key, value in (("CNI_CONTAINERID", container_id), ("CNI_NETNS", netns),
                       ("CNI_IFNAME", ifname), ("CNI_ARGS", args)):
        if value:
            env[key] = value
    return env


@contextmanager
def sandbox_netns(*names: str) -> Iterator[list[str]]:
    """Named netns standing in for pod sandboxes (their paths); removed afterwards, also when
    the test fails."""
    try:
        for name in names:
            ns.create_netns(name)
        yield [ns.netns_path(name) for name in names]
    finally:
        for name in names:
            ns.remove_netns(name)
