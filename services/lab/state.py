"""Where the lab keeps its state, and the state records themselves.

Layout (``$CILIA_STATE_DIR``, default ``/var/lib/cilia``):

- ``lab/<lab>/lab.json``     the lab: nodes, addresses, agent processes (:class:`LabState`);
- ``lab/<lab>/pods.json``    pods with their sandbox and workload process (kubelet);
- ``lab/<lab>/lock``         flock held while a command changes the lab;
- ``lab/<lab>/cni/<node>.conf``  the CNI network config each node's "kubelet" uses;
- ``lab/<lab>/logs/``        agent and workload logs;
- ``nodes/<node>/``          the node agent's state (node.json, ipam.json, endpoints.json).

Runtime files (``$CILIA_RUN_DIR``, default ``/run/cilia``): ``<node>/cni.sock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.paths import run_root, state_root, write_json_atomic
from services.common.processes import ProcRef
from services.common.world import DEFAULT_WORLD, World, WorldError
from services.lab.errors import LabError, LabNotFoundError
from services.lab.plan import ROUTING_NATIVE, LabPlan, plan_lab

LAB_STATE_VERSION = 1


def lab_dir(lab: str) -> Path:
    return state_root() / "lab" / lab


def node_state_dir(node: str) -> Path:
    return state_root() / "nodes" / node


def node_run_dir(node: str) -> Path:
    return run_root() / node


def cni_conf_path(lab: str, node: str) -> Path:
    return lab_dir(lab) / "cni" / f"{node}.conf"


def log_dir(lab: str) -> Path:
    return lab_dir(lab) / "logs"


@contextlib.contextmanager
def lab_lock(lab: str) -> Iterator[None]:
    """Hold the lab's lock (serialises lab commands run from different processes)."""
    path = lab_dir(lab) / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@dataclass
class LabState:
    """What ``lab up`` made: enough for ``lab down`` from another process."""

    name: str
    nodes: int
    agents: dict[str, ProcRef] = field(default_factory=dict)
    agent_module: str = ""
    status: str = "creating"
    external: ProcRef | None = None
    routing: str = ROUTING_NATIVE
    agent_env: dict[str, dict[str, str]] = field(default_factory=dict)  # bus credentials
    world: World = DEFAULT_WORLD
    # on a Kubernetes API (``lab up --k8s-api``): where, and the processes that serve it
    k8s: dict[str, str] = field(default_factory=dict)      # kubeconfig
    k8s_procs: dict[str, ProcRef] = field(default_factory=dict)   # runtime, watcher

    @property
    def plan(self) -> LabPlan:
        return plan_lab(self.name, self.nodes, self.routing, self.world)

    def to_json(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "version": LAB_STATE_VERSION, "name": self.name, "nodes": self.nodes,
            "status": self.status, "agentModule": self.agent_module, "routing": self.routing,
            "agents": {n: ref.to_json() for n, ref in self.agents.items()},
            "external": self.external.to_json() if self.external else None,
            "agentEnv": self.agent_env, "world": self.world.to_json(),
            "k8s": self.k8s, "k8sProcs": {n: r.to_json() for n, r in self.k8s_procs.items()},
            # informational: the plan is derived from name and node count
            "underlayNetns": plan.underlay_netns, "externalNetns": plan.external_netns,
            "nodeList": [{"name": n.name, "netns": n.netns, "nodeIP": str(n.node_ip),
                          "podCIDR": str(n.pod_cidr)} for n in plan.nodes],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        if data.get("version") != LAB_STATE_VERSION:
            raise LabError(f"lab state: unsupported version {data.get('version')!r}")
        try:
            world = World.from_json(data["world"]) if "world" in data else DEFAULT_WORLD
        except WorldError as exc:
            raise LabError(f"lab state: {exc}") from None
        return cls(name=data["name"], nodes=int(data["nodes"]), status=data.get("status", ""),
                   agent_module=data.get("agentModule", ""),
                   routing=data.get("routing", ROUTING_NATIVE),
                   agents={n: ProcRef.from_json(r) for n, r in data.get("agents", {}).items()},
                   external=ProcRef.from_json(data["external"]) if data.get("external") else None,
                   agent_env={n: dict(e) for n, e in (data.get("agentEnv") or {}).items()},
                   world=world, k8s=dict(data.get("k8s") or {}),
                   k8s_procs={n: ProcRef.from_json(r)
                              for n, r in (data.get("k8sProcs") or {}).items()})

    def save(self) -> None:
        write_json_atomic(lab_dir(self.name) / "lab.json", self.to_json())


def load_lab(lab: str) -> LabState:
    """Load a lab's state.

    Raises:
        LabNotFoundError: the lab is not up.
    """
    path = lab_dir(lab) / "lab.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabNotFoundError(f"lab {lab} is not up (no {path})") from None
    except (OSError, ValueError) as exc:
        raise LabError(f"lab {lab}: state {path}: {exc}") from exc
    return LabState.from_json(data)


def list_labs() -> list[str]:
    root = state_root() / "lab"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "lab.json").exists())
