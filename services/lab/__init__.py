"""The embedded lab: nodes as network namespaces, pods through the CNI plugin, exec.

Typical use::

    from services.lab import up, down, Kubelet, exec_in_pod
    up("cilia", nodes=2)
    result = Kubelet("cilia").apply(deployment_dict)   # ApplyResult(pods, deleted)
    exec_in_pod("deploy/frontend", ["curl", "-s", "http://10.244.1.5:8080"], namespace="prod")
    down("cilia")
"""

from services.common.world import WORLD_IP, WORLD_IPS
from services.lab.errors import (
    CniInvokeError,
    LabConfigError,
    LabError,
    LabExistsError,
    LabNotFoundError,
    PodNotFoundError,
    PodSpecError,
    TopologyError,
    WorkloadError,
)
from services.lab.kubelet import ApplyResult, Kubelet
from services.lab.plan import (
    CLUSTER_POD_CIDR,
    EXTERNAL_IP,
    UNDERLAY_CIDR,
    LabPlan,
    NodePlan,
    plan_lab,
)
from services.lab.podexec import exec_in_netns, exec_in_pod, resolve_pod
from services.lab.state import LabState, list_labs, load_lab
from services.lab.topology import DEFAULT_LAB, DownReport, down, start_agent, stop_agent, up

__all__ = [
    "CLUSTER_POD_CIDR",
    "DEFAULT_LAB",
    "EXTERNAL_IP",
    "UNDERLAY_CIDR",
    "WORLD_IP",
    "WORLD_IPS",
    "ApplyResult",
    "CniInvokeError",
    "DownReport",
    "Kubelet",
    "LabConfigError",
    "LabError",
    "LabExistsError",
    "LabNotFoundError",
    "LabPlan",
    "LabState",
    "NodePlan",
    "PodNotFoundError",
    "PodSpecError",
    "TopologyError",
    "WorkloadError",
    "down",
    "exec_in_netns",
    "exec_in_pod",
    "list_labs",
    "load_lab",
    "plan_lab",
    "resolve_pod",
    "start_agent",
    "stop_agent",
    "up",
]
