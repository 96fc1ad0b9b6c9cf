"""``lab up`` / ``lab down``: namespaces, the underlay bridge, node routes and node agents.

Nothing is created in the root namespace: every link is made inside a lab netns (a veth's peer
is created directly in its target netns), every route lives in a lab netns. The only things
outside namespaces are files: state, sockets, logs and bpffs pins, all removed by ``down``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from services.common.netns import off_loop, open_iproute
from services.common.paths import PIN_ROOT, run_root, state_root, write_json_atomic
from services.common.processes import ProcRef, is_alive, stop_process
from services.common.world import DEFAULT_WORLD, World
from services.lab import netns as ns
from services.lab._workload import start_workload
from services.lab.errors import LabError, LabExistsError, TopologyError, WorkloadError
from services.lab.plan import (
    BRIDGE,
    EXTERNAL_IP,
    EXTERNAL_PORT,
    NODE_UPLINK,
    UNDERLAY_CIDR,
    LabPlan,
    NodePlan,
    lab_prefix,
    plan_lab,
    validate_lab_name,
)
from services.lab.state import (
    LabState,
    cni_conf_path,
    lab_dir,
    lab_lock,
    load_lab,
    log_dir,
    node_run_dir,
    node_state_dir,
)
from services.nodeagent.datapath.overlay import (
    OVERLAY_DEVICE,
    OVERLAY_PORT,
    ROUTING_NATIVE,
    overlay_mtu,
)
from services.nodeagent.endpoints import NODE_SOURCE_ENV, NodeConfig

log = logging.getLogger("cilia.lab")

RTNH_F_ONLINK = 4              # route flag: the gateway is on the link, no subnet needed

DEFAULT_LAB = "cilia"
DEFAULT_AGENT_MODULE = "services.nodeagent.cniserver"
AGENT_MODULE_ENV = "CILIA_AGENT_MODULE"
SOCKET_POLL_S = 0.1           # between tries to connect to a starting agent's socket
AGENT_READY_TIMEOUT = 30.0     # seconds for an agent to open its CNI socket (bcc compiles first)
CNI_NETWORK_NAME = "cilia"
CNI_PLUGIN_TYPE = "cilia-cni"
CNI_CONF_VERSION = "1.0.0"
DEFAULT_EXTERNAL_PORTS = (80,)
EXTERNAL_NAME = "external"     # the external host server's HTTP body


@dataclass
class DownReport:
    """What ``down`` removed."""

    netns: list[str] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    pins: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@contextmanager
def _ipr(netns: str) -> Iterator[IPRoute]:
    ipr = open_iproute(netns)
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise TopologyError(f"interface {ifname} not found")
    return int(found[0])


def _uplink(underlay: IPRoute, port: str, target_netns: str, bridge_idx: int) -> None:
    """A veth ``port`` on the bridge whose peer is ``eth0`` in ``target_netns``."""
    fd = os.open(ns.netns_path(target_netns), os.O_RDONLY)
    try:
        underlay.link("add", ifname=port, kind="veth",
                      peer={"ifname": NODE_UPLINK, "net_ns_fd": fd})
    finally:
        os.close(fd)
    idx = _index(underlay, port)
    underlay.link("set", index=idx, master=bridge_idx, state="up")


def _up_host(ipr: IPRoute, address: str, prefixlen: int) -> int:
    ipr.link("set", index=_index(ipr, "lo"), state="up")
    idx = _index(ipr, NODE_UPLINK)
    ipr.link("set", index=idx, state="up")
    ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
    return idx


def _build_underlay(plan: LabPlan) -> int:
    ns.create_ipv4_netns(plan.underlay_netns)
    with _ipr(plan.underlay_netns) as ipr:
        ipr.link("set", index=_index(ipr, "lo"), state="up")
        ipr.link("add", ifname=BRIDGE, kind="bridge")
        idx = _index(ipr, BRIDGE)
        ipr.link("set", index=idx, state="up")
        return idx


def _build_node(plan: LabPlan, node: NodePlan, bridge_idx: int) -> None:
    ns.create_ipv4_netns(node.netns)
    with _ipr(plan.underlay_netns) as underlay:
        _uplink(underlay, node.underlay_port, node.netns, bridge_idx)
    with _ipr(node.netns) as ipr:
        _up_host(ipr, str(node.node_ip), UNDERLAY_CIDR.prefixlen)
        # the pod gateway: a node address inside the pod CIDR (Cilium's router IP)
        ipr.addr("add", index=_index(ipr, "lo"), address=str(node.gateway), prefixlen=32)
        # unallocated local pod addresses must not leak to the default route
        ipr.route("add", dst=str(node.pod_cidr), type="unreachable")
        peers = [peer for peer in plan.nodes if peer.name != node.name]
        if plan.tunnel:
            _build_overlay(ipr, node, peers)
        else:
            for peer in peers:
                ipr.route("add", dst=str(peer.pod_cidr), gateway=str(peer.node_ip))
        ipr.route("add", dst="0.0.0.0/0", gateway=str(EXTERNAL_IP))
    ns.write_sysctl(node.netns, "net.ipv4.ip_forward", "1")


def _build_overlay(ipr: IPRoute, node: NodePlan, peers: Sequence[NodePlan]) -> None:
    """Tunnel mode: the VXLAN device (collect-metadata) and remote pod CIDRs routed into it.

    The device has no fixed remote or VNI: the overlay programs set both per packet (the
    remote from the ipcache, else from this route's gateway). Each remote pod CIDR goes
    ``via <remote node address> onlink`` with a permanent neighbour entry for the remote
    device's MAC, so no ARP crosses the tunnel and the receiving device accepts the frame as
    its own.
    """
    ipr.link("add", ifname=OVERLAY_DEVICE, kind="vxlan", vxlan_collect_metadata=1,
             vxlan_port=OVERLAY_PORT, vxlan_learning=0, address=node.overlay_mac,
             mtu=overlay_mtu())
    idx = _index(ipr, OVERLAY_DEVICE)
    ipr.link("set", index=idx, state="up")
    for peer in peers:
        ipr.neigh("add", dst=str(peer.node_ip), lladdr=peer.overlay_mac, ifindex=idx,
                  state="permanent")
        # the node's own packets leave with its underlay address, which every node's ipcache
        # knows (a reply finds its tunnel endpoint; the source is remote-node there)
        ipr.route("add", dst=str(peer.pod_cidr), gateway=str(peer.node_ip), oif=idx,
                  flags=RTNH_F_ONLINK, prefsrc=str(node.node_ip))


def _build_external(plan: LabPlan, bridge_idx: int) -> None:
    ns.create_ipv4_netns(plan.external_netns)
    with _ipr(plan.underlay_netns) as underlay:
        _uplink(underlay, EXTERNAL_PORT, plan.external_netns, bridge_idx)
    with _ipr(plan.external_netns) as ipr:
        idx = _up_host(ipr, str(EXTERNAL_IP), UNDERLAY_CIDR.prefixlen)
        for address in plan.world.addresses():
            ipr.addr("add", index=idx, address=str(address), prefixlen=32)
        for node in plan.nodes:
            ipr.route("add", dst=str(node.pod_cidr), gateway=str(node.node_ip))
    # a host, not a router: whatever is not addressed to it is dropped here
    ns.write_sysctl(plan.external_netns, "net.ipv4.ip_forward", "0")


def _build(plan: LabPlan) -> None:
    bridge_idx = _build_underlay(plan)
    for node in plan.nodes:
        _build_node(plan, node, bridge_idx)
    _build_external(plan, bridge_idx)


def node_config(node: NodePlan, plan: LabPlan | None = None) -> NodeConfig:
    """The agent's config of a lab node (with the lab's routing mode and pod MTU)."""
    cfg = NodeConfig.default_paths(node.name, str(node.node_ip), str(node.pod_cidr),
                                   node.netns)
    if plan is None:
        return cfg
    return replace(cfg, routing=plan.routing, pod_mtu=plan.pod_mtu)


def cni_netconf(node: NodeConfig) -> dict[str, object]:
    """The network config the node's runtime passes to the plugin on stdin."""
    return {"cniVersion": CNI_CONF_VERSION, "name": CNI_NETWORK_NAME, "type": CNI_PLUGIN_TYPE,
            "socketPath": node.socket_path}


def _wait_socket(path: str, proc: ProcRef, node: str, logfile: Path) -> None:
    deadline = time.monotonic() + AGENT_READY_TIMEOUT
    while time.monotonic() < deadline:
        if not is_alive(proc):
            tail = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
            raise TopologyError(f"node {node}: agent exited during start:\n{tail}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return
        except OSError:
            time.sleep(SOCKET_POLL_S)
        finally:
            sock.close()
    raise TopologyError(f"node {node}: agent did not open {path} within "
                        f"{AGENT_READY_TIMEOUT:.0f}s (log: {logfile})")


def _start_agent(lab: str, cfg: NodeConfig, module: str,
                 env: Mapping[str, str] | None = None) -> ProcRef:
    conf_file = Path(cfg.state_dir) / "node.json"
    write_json_atomic(conf_file, cfg.to_json())
    logs = log_dir(lab)
    logs.mkdir(parents=True, exist_ok=True)
    logfile = logs / f"{cfg.name}-agent.log"
    with logfile.open("ab") as out, open(os.devnull, "rb") as devnull:
        # the agent runs in the root netns (it talks to the bus) and works on the node's netns;
        # ``env`` adds its bus role's credentials to what it inherits
        proc = ns.spawn(None, [sys.executable, "-m", module, "--node-config", str(conf_file)],
                        env={**os.environ, **env} if env else None,
                        stdin=devnull, stdout=out, stderr=out, detach=True)
    ref = ns.proc_ref(proc.pid)
    _wait_socket(cfg.socket_path, ref, cfg.name, logfile)
    return ref


def _start_external_server(name: str, plan: LabPlan, ports: Sequence[int]) -> ProcRef:
    """The external host's server: the same workload, answering with its name "external"."""
    try:
        return start_workload(plan.external_netns, EXTERNAL_NAME, EXTERNAL_NAME, ports,
                              log_dir(name) / "external.log")
    except WorkloadError as exc:
        raise TopologyError(f"lab {name}: external host server: {exc}") from exc


@dataclass(frozen=True)
class K8sSource:
    """A Kubernetes API server the lab's nodes belong to (``lab up --k8s-api``).

    ``kubeconfig``: its credentials (and address); ``watcher_env``: the environment of cilia's
    watcher (its bus role's credentials)."""

    kubeconfig: str
    watcher_env: Mapping[str, str] = field(default_factory=dict)

    def args(self) -> list[str]:
        return ["--kubeconfig", self.kubeconfig]


def _start_k8s(lab: str, source: K8sSource) -> dict[str, ProcRef]:
    """The lab's kubelet/scheduler/controller on the API, and cilia's watcher reading it."""
    logs = log_dir(lab)
    logs.mkdir(parents=True, exist_ok=True)
    out: dict[str, ProcRef] = {}
    for role, argv, env in (
            ("runtime", [sys.executable, "-m", "services.lab.k8sruntime", "--lab", lab,
                         *source.args()], None),
            ("watcher", [sys.executable, "-m", "services.k8s", *source.args()],
             {**os.environ, **source.watcher_env})):
        with (logs / f"k8s-{role}.log").open("ab") as log_out, \
                open(os.devnull, "rb") as devnull:
            proc = ns.spawn(None, argv, env=env, stdin=devnull, stdout=log_out,
                            stderr=log_out, detach=True)
        out[role] = ns.proc_ref(proc.pid)
    return out


def up(name: str = DEFAULT_LAB, nodes: int = 1, *, start_agents: bool = True,
       agent_module: str | None = None,
       external_ports: Sequence[int] = DEFAULT_EXTERNAL_PORTS,
       routing: str = ROUTING_NATIVE,
       agent_env: Callable[[str], Mapping[str, str]] | None = None,
       world: World = DEFAULT_WORLD, k8s: K8sSource | None = None) -> LabState:
    """Create a lab with ``nodes`` nodes and start one agent per node.

    Args:
        name: lab name (letters and digits; every netns is ``cilia-<name>-...``).
        nodes: number of nodes.
        start_agents: start the node agents (False: topology only).
        agent_module: the agent's module, run as ``python -m <module> --node-config <path>``;
            default ``$CILIA_AGENT_MODULE`` or ``services.nodeagent.cniserver``.
        external_ports: ports the external host serves (HTTP body ``external``, UDP echo) on
            every address of the world and ``EXTERNAL_IP``; empty: no server.
        routing: ``native`` (remote pod CIDRs via the node addresses) or ``tunnel`` (VXLAN
            overlay with the source identity in the VNI).
        agent_env: environment variables of a node's agent (its bus credentials), by node
            name; kept in the lab's state so that a restarted agent gets them too.
        world: the names and addresses of the lab's world (the external host answers on
            every address; the cluster DNS pods serve the names).
        k8s: run the lab as nodes of this Kubernetes API server: its Nodes are registered
            there, its Pods and Deployments run from there, and cilia's watcher publishes
            what the API holds (agents do not register their Nodes on the bus themselves).

    Returns:
        The lab's state (also persisted in ``$CILIA_STATE_DIR/lab/<name>/lab.json``).

    Raises:
        LabExistsError: the lab is up already.
        LabConfigError: bad name, node count or routing mode.
        TopologyError: creation failed; everything created is removed again.
    """
    plan = plan_lab(name, nodes, routing, world)
    module = agent_module or os.environ.get(AGENT_MODULE_ENV) or DEFAULT_AGENT_MODULE
    with lab_lock(name):
        if (lab_dir(name) / "lab.json").exists() or ns.list_netns(plan.prefix):
            raise LabExistsError(f"lab {name} is already up (run lab down first)")
        state = LabState(name=name, nodes=nodes, agent_module=module if start_agents else "",
                         routing=routing, world=world,
                         k8s={"kubeconfig": k8s.kubeconfig} if k8s else {})
        state.save()
        try:
            off_loop(lambda: _build(plan))
            if external_ports:
                state.external = _start_external_server(name, plan, external_ports)
                state.save()
            for node in plan.nodes:
                cfg = node_config(node, plan)
                write_json_atomic(cni_conf_path(name, node.name), cni_netconf(cfg))
                if start_agents:
                    if agent_env is not None:
                        state.agent_env[node.name] = dict(agent_env(node.name))
                    if k8s is not None:     # the API registers the node, not the agent
                        state.agent_env.setdefault(node.name, {})[NODE_SOURCE_ENV] = "k8s"
                    state.agents[node.name] = _start_agent(name, cfg, module,
                                                           state.agent_env.get(node.name))
                    state.save()
            if k8s is not None:
                state.k8s_procs = _start_k8s(name, k8s)
            state.status = "up"
            state.save()
        except BaseException as exc:
            # nothing half-made survives a failed up, whatever failed (even ^C)
            _teardown(name, state)
            (lab_dir(name) / "lab.json").unlink(missing_ok=True)
            if isinstance(exc, NetlinkError | OSError):
                raise TopologyError(f"lab {name}: up failed: {exc}") from exc
            raise
    log.info("lab %s up: %d node(s), %s routing", name, nodes, routing)
    return state


def start_agent(name: str, node: str, agent_module: str | None = None) -> ProcRef:
    """(Re)start the agent of one node of a running lab; returns its process.

    Raises:
        LabNotFoundError: the lab is not up.
        LabConfigError: no such node.
        TopologyError: an agent is running already, or the new one did not start.
    """
    with lab_lock(name):
        state = load_lab(name)
        plan_node = state.plan.node(node)
        running = state.agents.get(node)
        if running is not None and is_alive(running):
            raise TopologyError(f"node {node}: agent {running.pid} is running already")
        module = (agent_module or state.agent_module or os.environ.get(AGENT_MODULE_ENV)
                  or DEFAULT_AGENT_MODULE)
        ref = _start_agent(name, node_config(plan_node, state.plan), module,
                           state.agent_env.get(node))
        state.agents[node] = ref
        state.agent_module = module
        state.save()
        return ref


def stop_agent(name: str, node: str) -> bool:
    """Stop the agent of one node (SIGTERM, then SIGKILL); False if it was not running.

    The datapath keeps working while it is down: maps and programs stay pinned/attached.
    """
    with lab_lock(name):
        state = load_lab(name)
        state.plan.node(node)
        ref = state.agents.pop(node, None)
        stopped = stop_process(ref) if ref is not None else False
        state.save()
        return stopped


def _remove_tree(path: Path, report: DownReport) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
        report.files.append(str(path))


def _pods_processes(lab: str) -> list[ProcRef]:
    path = lab_dir(lab) / "pods.json"
    try:
        pods = json.loads(path.read_text()).get("pods", {})
    except (OSError, ValueError):
        return []
    return [ProcRef.from_json(p["runtime"]["workload"]) for p in pods.values()
            if p.get("runtime", {}).get("workload")]


def _teardown(name: str, state: LabState | None) -> DownReport:
    report = DownReport()
    prefix = lab_prefix(name)
    # the Kubernetes side first: its kubelet would start pods again as they go
    refs = list(state.k8s_procs.values()) if state is not None else []
    refs += _pods_processes(name)
    if state is not None:
        refs += list(state.agents.values()) + ([state.external] if state.external else [])
    for ref in refs:
        if stop_process(ref):
            report.processes.append(ref.pid)
    netns_names = ns.list_netns(prefix)
    # anything still running inside a lab namespace was started there by the lab (or exec)
    for netns in netns_names:
        for pid in ns.pids_in_netns(netns):
            found = _ref_or_none(pid)
            if found is not None and stop_process(found):
                report.processes.append(pid)
    for netns in netns_names:
        if ns.remove_netns(netns):
            report.netns.append(netns)
    node_re = re.compile(rf"^{re.escape(name)}-node\d+$")
    node_names = {n.name for n in state.plan.nodes} if state else set()
    for root in (PIN_ROOT, run_root(), state_root() / "nodes"):
        if root.is_dir():
            node_names.update(p.name for p in root.iterdir() if node_re.match(p.name))
    for node in sorted(node_names):
        pins = PIN_ROOT / node
        if pins.exists():
            shutil.rmtree(pins, ignore_errors=True)
            report.pins.append(str(pins))
        _remove_tree(node_run_dir(node), report)
        _remove_tree(node_state_dir(node), report)
    return report


def _ref_or_none(pid: int) -> ProcRef | None:
    try:
        return ns.proc_ref(pid)
    except TopologyError:
        return None


def down(name: str = DEFAULT_LAB) -> DownReport:
    """Remove every namespace, link, pin, file and process of a lab.

    Works without a state file too (after a crash): namespaces are found by their
    ``cilia-<name>-`` prefix and node directories by ``<name>-node<i>``.
    """
    validate_lab_name(name)
    with lab_lock(name):
        try:
            state: LabState | None = load_lab(name)
        except LabError:
            state = None
        report = _teardown(name, state)
        lab_files = lab_dir(name)
    # the lock file lives in the lab dir; remove it once the lock is released
    _remove_tree(lab_files, report)
    log.info("lab %s down: %d netns, %d processes", name, len(report.netns),
             len(report.processes))
    return report
