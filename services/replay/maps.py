"""Pure renderings of a folded replay: every map as ``{key: value}`` with string keys and
JSON values, so that state, diff and explain share one shape.

Control-plane maps (``cluster``): identities, policies (with status), selectors (with members),
subjects (compiled rules), ipcache (with origin), services, backends. Node maps
(``node/<name>``): the desired ipcache, endpoints and policy maps, plus lb frontends and
backends, computed by the agent's reducers. A node's local endpoints come from its Pod objects
(``spec.nodeName``, ``status.podIP``); the CNI's endpoint id and ifindex are not on the bus and
show as 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from services.common.identities import ID_INIT
from services.common.policytypes import PROTO_NAMES, Direction, PolicyKey, Verdict
from services.nodeagent.datapath.encode import EndpointEntry, IpcacheEntry
from services.nodeagent.state import LocalEndpoint, NodeState

from .fold import NodeFold, Replay

FlatMap = dict[str, Any]
CLUSTER_SCOPE = "cluster"
CLUSTER_MAPS = ("identities", "policies", "selectors", "subjects", "ipcache", "services",
                "backends")
NODE_MAPS = ("ipcache", "endpoints", "policy", "lb_services", "lb_backends")
UNKNOWN = 0     # endpoint id and ifindex: the CNI's, not on the bus


def node_scope(node: str) -> str:
    return f"node/{node}"


# -- control plane --------------------------------------------------------------------------

def identities(rp: Replay) -> FlatMap:
    return {str(i): labels.strings() for i, labels in sorted(rp.cluster.identities.items())}


def policies(rp: Replay) -> FlatMap:
    """Policies in force (status from the policy service's own status events) and rejected
    ones that have no version in force."""
    out: FlatMap = {}
    for policy in rp.repo.policies():
        ref = policy.ref
        key = f"{ref.kind}/{ref.namespace}/{ref.name}"
        st = rp.outputs.policies.get(key, {})
        status = {"set": "OK", "error": "Rejected"}.get(st.get("op", ""), "Pending")
        error = rp.rejected.get(key) or (st.get("error") if st.get("op") == "error" else "")
        # The revision users see is the one the service published (the input's sequence).
        out[key] = {"rules": len(policy.rules), "revision": int(st.get("revision") or 0),
                    "status": status, "error": error or ""}
    for key, error in rp.rejected.items():
        out.setdefault(key, {"rules": 0, "revision": 0, "status": "Rejected", "error": error})
    return dict(sorted(out.items()))


def selectors(rp: Replay) -> FlatMap:
    cache = rp.repo.cache
    return {sid: {"selector": cache.selector(sid).canonical,
                  "members": sorted(rp.repo.members(sid))}
            for sid in sorted(cache.selector_ids())}


def subjects(rp: Replay) -> FlatMap:
    out: FlatMap = {}
    for ident, sp in sorted(rp.repo.subjects().items()):
        out[str(ident)] = {"ingress_enforced": sp.enforced(Direction.INGRESS),
                           "egress_enforced": sp.enforced(Direction.EGRESS),
                           "rules": [str(r.origin) for r in sp.rules]}
    return out


def cluster_ipcache(rp: Replay) -> FlatMap:
    return {p: {"identity": r.identity, "host_ip": r.host_ip, "node": r.node,
                "origin": r.origin, "pod": r.pod}
            for p, r in sorted(rp.cluster.ipcache.items())}


def services(rp: Replay) -> FlatMap:
    view = rp.cluster_lb.view
    out: FlatMap = {}
    for sid, svc in sorted(view.services.items()):
        members = sorted(view.members.get(sid, ()))
        out[str(sid)] = {"service": f"{svc.get('namespace')}/{svc.get('name')}",
                         "type": svc.get("type", ""), "cluster_ip": svc.get("cluster_ip", ""),
                         "ports": [f"{p.get('port')}/{p.get('protocol')}"
                                   + (f" nodePort {p['node_port']}" if p.get("node_port")
                                      else "") for p in svc.get("ports") or []],
                         "backends": [f"{name}:{bid}" for name, bid in members]}
    return out


def backends(rp: Replay) -> FlatMap:
    return {str(bid): {"address": f"{b.get('address')}:{b.get('port')}/{b.get('protocol')}",
                       "node": b.get("node") or "", "pod": b.get("pod") or "",
                       "state": b.get("state") or "active"}
            for bid, b in sorted(rp.cluster_lb.view.backends.items())}


CLUSTER_RENDER = {"identities": identities, "policies": policies, "selectors": selectors,
                  "subjects": subjects, "ipcache": cluster_ipcache, "services": services,
                  "backends": backends}


def cluster_maps(rp: Replay) -> dict[str, FlatMap]:
    return {name: CLUSTER_RENDER[name](rp) for name in CLUSTER_MAPS}


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


def policy_key(k: PolicyKey) -> str:
    """``<subject> <ingress|egress> <peer|any> <PROTO>/<port[-end]|any>``."""
    direction = Direction(k.direction).name.lower()
    peer = str(k.peer) if k.peer else "any"
    proto = PROTO_NAMES.get(k.proto, str(k.proto)) if k.proto else "ANY"
    port = "any" if not k.port else (str(k.port) if k.end_port in (0, k.port)
                                     else f"{k.port}-{k.end_port}")
    return f"{k.subject} {direction} {peer} {proto}/{port}"


def flat_ipcache(entries: dict[str, IpcacheEntry]) -> FlatMap:
    return {p: {"identity": e.identity, "tunnel_endpoint": e.tunnel_endpoint}
            for p, e in sorted(entries.items())}


def flat_endpoints(entries: dict[str, EndpointEntry], eps: Iterable[LocalEndpoint]) -> FlatMap:
    pods = {ep.ip: ep.pod for ep in eps}
    return {ip: {"pod": pods.get(ip, ""), "identity": e.identity,
                 "enforce_ingress": e.enforce_ingress, "enforce_egress": e.enforce_egress}
            for ip, e in sorted(entries.items())}


def flat_policy(entries: dict[PolicyKey, Verdict]) -> FlatMap:
    return {policy_key(k): v.name for k, v in sorted(entries.items())}


def lb_maps(nf: NodeFold) -> tuple[FlatMap, FlatMap]:
    plan = nf.lb.plan()
    fronts = {f"{f.address}:{f.port}/{f.protocol}": {
        "frontend_id": e.svc_id, "backends": e.size_int, "external": e.external,
        "affinity_timeout": e.affinity_timeout} for f, e in sorted(plan.services.items())}
    bes = {str(bid): {"address": f"{b.address}:{b.port}/{b.protocol}", "local": b.local,
                      "terminating": b.terminating} for bid, b in sorted(plan.backends.items())}
    return fronts, bes


def node_maps(rp: Replay, node: str) -> dict[str, FlatMap]:
    nf = rp.node(node)
    ipc, eps_entries, pol = desired(nf)
    fronts, bes = lb_maps(nf)
    return {"ipcache": flat_ipcache(ipc),
            "endpoints": flat_endpoints(eps_entries, local_endpoints(nf.state, node)),
            "policy": flat_policy(pol), "lb_services": fronts, "lb_backends": bes}


def all_maps(rp: Replay) -> dict[str, dict[str, FlatMap]]:
    """Every scope: ``cluster`` and ``node/<name>`` for each node the replay folds."""
    out = {CLUSTER_SCOPE: cluster_maps(rp)}
    for node in rp.nodes:
        out[node_scope(node)] = node_maps(rp, node)
    return out
