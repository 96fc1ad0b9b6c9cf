"""Pure renderings of a folded replay: every map as ``{key: value}`` with string keys and
JSON values, so that state, diff and explain share one shape.

Control-plane maps (``cluster``): identities, policies (with status), selectors (with members),
subjects (compiled rules), ipcache (with origin), services, backends. Node maps
(``node/<name>``): the desired ipcache, endpoints and policy maps, plus lb frontends and
backends, computed by the agent's reducers. A node's local endpoints come from its Pod objects
(``spec.nodeName``, ``status.podIP``); the CNI's endpoint id and ifindex are not on the bus and
show as 0. Which node maps are shown, and how, is each map module's ``flat`` rendering, in the
order of :func:`services.nodeagent.datapath.maps.registry.replayed`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from services.common.identities import ID_INIT
from services.common.policytypes import Direction, PolicyKey, Verdict
from services.nodeagent.datapath.maps import (
    endpoints,
    ipcache,
    lb_backends,
    lb_services,
    policy,
    registry,
)
from services.nodeagent.datapath.maps.endpoints import EndpointEntry
from services.nodeagent.datapath.maps.ipcache import IpcacheEntry
from services.nodeagent.datapath.maps.spec import FlatContext
from services.nodeagent.state import LocalEndpoint, NodeState
from services.policy.model import PolicyRef

from .fold import NodeFold, Replay

FlatMap = dict[str, Any]
CLUSTER_SCOPE = "cluster"
CLUSTER_MAPS = ("identities", "policies", "selectors", "subjects", "ipcache", "services",
                "backends")
NODE_MAPS = tuple(spec.name for spec in registry.replayed())
UNKNOWN = 0     # endpoint id and ifindex: the CNI's, not on the bus


def node_scope(node: str) -> str:
    return f"node/{node}"


# -- control plane --------------------------------------------------------------------------

# Each control-plane map is a set of keys and one entry per key, so that a tracker can
# re-render only the keys an event touched.

def _identity_keys(rp: Replay) -> Iterable[str]:
    return (str(i) for i in rp.cluster.identities)


def _identity(rp: Replay, key: str) -> Any:
    labels = rp.cluster.identities.get(int(key))
    return labels.strings() if labels is not None else None


def _policy_keys(rp: Replay) -> Iterable[str]:
    keys = {f"{p.ref.kind}/{p.ref.namespace}/{p.ref.name}" for p in rp.repo.policies()}
    return keys | set(rp.rejected)


def _policy(rp: Replay, key: str) -> Any:
    """A policy in force (status from the policy service's own status events), or a rejected
    one that has no version in force."""
    kind, namespace, name = key.split("/", 2)
    policy = rp.repo.policy(PolicyRef(kind, namespace, name))
    if policy is None:
        error = rp.rejected.get(key)
        return None if error is None else {"rules": 0, "revision": 0, "status": "Rejected",
                                           "error": error}
    st = rp.outputs.policies.get(key)
    op = "" if st is None else st.op
    status = {"set": "OK", "error": "Rejected"}.get(op, "Pending")
    error = rp.rejected.get(key) or (st.error if st is not None and op == "error" else "")
    # The revision users see is the one the service published (the input's sequence).
    return {"rules": len(policy.rules), "revision": 0 if st is None else st.revision,
            "status": status, "error": error or ""}


def _selector_keys(rp: Replay) -> Iterable[str]:
    return rp.repo.cache.selector_ids()


def _selector(rp: Replay, key: str) -> Any:
    cache = rp.repo.cache
    if not cache.refs(key):
        return None
    return {"selector": cache.selector(key).canonical, "members": sorted(rp.repo.members(key))}


def _subject_keys(rp: Replay) -> Iterable[str]:
    return (str(i) for i in rp.repo.subjects())


def _subject(rp: Replay, key: str) -> Any:
    sp = rp.repo.subject_policy(int(key))
    if not sp.rules:
        return None
    return {"ingress_enforced": sp.enforced(Direction.INGRESS),
            "egress_enforced": sp.enforced(Direction.EGRESS),
            "rules": [str(r.origin) for r in sp.rules]}


def _ipcache_keys(rp: Replay) -> Iterable[str]:
    return rp.cluster.ipcache


def _ipcache(rp: Replay, key: str) -> Any:
    r = rp.cluster.ipcache.get(key)
    if r is None:
        return None
    return {"identity": r.identity, "host_ip": r.host_ip, "node": r.node, "origin": r.origin,
            "pod": r.pod}


def _service_keys(rp: Replay) -> Iterable[str]:
    return (str(i) for i in rp.cluster_lb.view.services)


def _service(rp: Replay, key: str) -> Any:
    view = rp.cluster_lb.view
    svc = view.services.get(int(key))
    if svc is None:
        return None
    members = sorted(view.members.get(int(key), ()))
    return {"service": f"{svc.namespace}/{svc.name}",
            "type": svc.type, "cluster_ip": svc.cluster_ip,
            "ports": [f"{p.port}/{p.protocol}"
                      + (f" nodePort {p.node_port}" if p.node_port else "")
                      for p in svc.ports],
            "backends": [f"{name}:{bid}" for name, bid in members]}


def _backend_keys(rp: Replay) -> Iterable[str]:
    return (str(i) for i in rp.cluster_lb.view.backends)


def _backend(rp: Replay, key: str) -> Any:
    b = rp.cluster_lb.view.backends.get(int(key))
    if b is None:
        return None
    return {"address": f"{b.address}:{b.port}/{b.protocol}",
            "node": b.node or "", "pod": b.pod or "", "state": b.state or "active"}


_CLUSTER: dict[str, tuple[Callable[[Replay], Iterable[str]], Callable[[Replay, str], Any]]] = {
    "identities": (_identity_keys, _identity), "policies": (_policy_keys, _policy),
    "selectors": (_selector_keys, _selector), "subjects": (_subject_keys, _subject),
    "ipcache": (_ipcache_keys, _ipcache), "services": (_service_keys, _service),
    "backends": (_backend_keys, _backend)}


def _sort_key(key: str) -> tuple[int, str]:
    return (int(key), "") if key.isdigit() else (0, key)


def cluster_map(rp: Replay, name: str, only: Iterable[str] | None = None) -> FlatMap:
    """One control-plane map (only the entries of ``only``, when given; absent keys are
    left out)."""
    all_keys, entry = _CLUSTER[name]
    keys = sorted(all_keys(rp) if only is None else only, key=_sort_key)
    out: FlatMap = {}
    for key in keys:
        value = entry(rp, key)
        if value is not None:
            out[key] = value
    return out


def cluster_maps(rp: Replay) -> dict[str, FlatMap]:
    return {name: cluster_map(rp, name) for name in CLUSTER_MAPS}


# -- one node -------------------------------------------------------------------------------

def local_endpoints(state: NodeState, node: str,
                    pods: Iterable[str] | None = None) -> list[LocalEndpoint]:
    """The node's pods with an address, as the CNI would have created them (only those of
    ``pods``, ``namespace/name`` keys, when given)."""
    out = []
    items = sorted(state.pods.items()) if pods is None else \
        [(k, state.pods[k]) for k in sorted(pods) if k in state.pods]
    for key, pod in items:
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        if spec.get("nodeName") == node and status.get("podIP"):
            out.append(LocalEndpoint(UNKNOWN, str(status["podIP"]), UNKNOWN, "", key))
    return out


def local_subjects(state: NodeState, eps: Iterable[LocalEndpoint]) -> set[int]:
    """Identities whose policy the node's map holds (as the agent computes them)."""
    return state.local_identities(eps) - {ID_INIT}


def desired(nf: NodeFold) -> tuple[dict[str, IpcacheEntry], dict[str, EndpointEntry],
                                   dict[PolicyKey, Verdict]]:
    """A node's desired ipcache, endpoints and policy entries (typed, as the agent's)."""
    st = nf.state
    eps = local_endpoints(st, st.node)
    return (st.desired_ipcache(), st.desired_endpoints(eps),
            st.desired_policy(local_subjects(st, eps)))


_NO_CONTEXT = FlatContext()


def flat_ipcache(entries: dict[str, IpcacheEntry]) -> FlatMap:
    return ipcache.flat(entries, _NO_CONTEXT)


def flat_endpoints(entries: dict[str, EndpointEntry], eps: Iterable[LocalEndpoint]) -> FlatMap:
    return endpoints.flat(entries, FlatContext(pods={ep.ip: ep.pod for ep in eps}))


def flat_policy(entries: dict[PolicyKey, Verdict]) -> FlatMap:
    return policy.flat(entries, _NO_CONTEXT)


def lb_maps(nf: NodeFold) -> tuple[FlatMap, FlatMap]:
    """A node's lb frontends and backends as replay shows them."""
    plan = nf.lb.plan()
    return (lb_services.flat(plan.services, _NO_CONTEXT),
            lb_backends.flat(plan.backends, _NO_CONTEXT))


def desired_entries(nf: NodeFold) -> dict[str, Any]:
    """Each replayed node map's desired entries (typed, as the agent's), by map name."""
    ipc, eps, pol = desired(nf)
    plan = nf.lb.plan()
    return {ipcache.NAME: ipc, endpoints.NAME: eps, policy.NAME: pol,
            lb_services.NAME: plan.services, lb_backends.NAME: plan.backends}


def node_maps(rp: Replay, node: str) -> dict[str, FlatMap]:
    nf = rp.node(node)
    entries = desired_entries(nf)
    ctx = FlatContext(pods={ep.ip: ep.pod for ep in local_endpoints(nf.state, node)})
    out: dict[str, FlatMap] = {}
    for spec in registry.replayed():
        if spec.flat is not None:
            out[spec.name] = spec.flat(entries[spec.name], ctx)
    return out


def all_maps(rp: Replay) -> dict[str, dict[str, FlatMap]]:
    """Every scope: ``cluster`` and ``node/<name>`` for each node the replay folds."""
    out = {CLUSTER_SCOPE: cluster_maps(rp)}
    for node in rp.nodes:
        out[node_scope(node)] = node_maps(rp, node)
    return out
