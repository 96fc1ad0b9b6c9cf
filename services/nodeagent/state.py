"""The node agent's reducer: bus events in, what one node's maps should hold out. Pure.

The agent runs it live; replay tools run the very same code over a stored history, so both
agree on what a node's datapath held at any moment. Local endpoints (pod IP -> veth) come from
the CNI on the node, everything else from the bus.

Fail closed: an endpoint is written with the init identity and enforcement on in both
directions (no policy entry exists for the init identity, so it drops everything) until its
address has a pod ipcache entry naming this very pod and that identity's policy is computed
(a ``policy.rules`` message, possibly with no rules, received after the identity's last label
change).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from services.common.contract import (
    IPCACHE_SOURCE_K8S,
    KIND_NODE,
    KIND_POD,
    IdentityDelete,
    IdentityUpsert,
    IpcacheDelete,
    IpcacheUpsert,
    ObjectDelete,
    ObjectUpsert,
    Payload,
    parse_ipcache_origin,
)
from services.common.contract.objects import object_key
from services.common.contract.policy import PolicyRules, PolicySelector
from services.common.identities import ID_HOST, ID_INIT, ID_REMOTE_NODE
from services.common.labels import Labels
from services.common.policytypes import PROTO_BY_NAME, Direction, PolicyKey, Verdict
from services.nodeagent.datapath.maps.endpoints import EndpointEntry
from services.nodeagent.datapath.maps.ipcache import IpcacheEntry
from services.nodeagent.dnspolicy import uses_dns_proxy
from services.policy.compiler import SubjectPolicy, expand
from services.policy.publish import fold_selector

SNAPSHOT_VERSION = 1   # version of NodeState.snapshot()'s layout


@dataclass(frozen=True)
class LocalEndpoint:
    """A pod on this node, as the CNI created it."""

    endpoint_id: int
    ip: str
    ifindex: int
    ifname: str
    pod: str            # namespace/name


@dataclass
class Dirty:
    """What an applied event may have changed."""

    ipcache: bool = False
    endpoints: bool = False
    subjects: set[int] = field(default_factory=set)
    all_subjects: bool = False

    def merge(self, other: Dirty) -> None:
        self.ipcache |= other.ipcache
        self.endpoints |= other.endpoints
        self.subjects |= other.subjects
        self.all_subjects |= other.all_subjects

    def __bool__(self) -> bool:
        return self.ipcache or self.endpoints or bool(self.subjects) or self.all_subjects


@dataclass(frozen=True)
class IpcacheRecord:
    identity: int
    host_ip: str
    node: str
    origin: str
    pod: str = ""


class NodeState:
    """Everything a node agent folds from the bus (pure; no I/O)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.identities: dict[int, Labels] = {}
        self.ipcache: dict[str, IpcacheRecord] = {}
        self.subjects: dict[int, SubjectPolicy] = {}
        self.subject_revision: dict[int, int] = {}
        self.members: dict[str, set[int]] = {}
        self.subjects_of_selector: dict[str, set[int]] = defaultdict(set)
        self.pods: dict[str, dict[str, Any]] = {}
        self.node_ips: dict[str, str] = {}
        self.revision = 0

    # -- durable position -------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything folded so far, msgpack-friendly; with ``revision``, a resume point."""
        return {"v": SNAPSHOT_VERSION, "node": self.node, "revision": self.revision,
                "identities": {i: ls.strings() for i, ls in self.identities.items()},
                "ipcache": {p: [r.identity, r.host_ip, r.node, r.origin, r.pod]
                            for p, r in self.ipcache.items()},
                "subjects": {i: sp.to_dict() for i, sp in self.subjects.items()},
                "subject_revision": dict(self.subject_revision),
                "members": {sid: sorted(m) for sid, m in self.members.items()},
                "pods": dict(self.pods), "node_ips": dict(self.node_ips)}

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> NodeState:
        """Rebuild a state saved by :meth:`snapshot`.

        Raises:
            ValueError: another layout version.
        """
        if data.get("v") != SNAPSHOT_VERSION:
            raise ValueError(f"node state snapshot version {data.get('v')!r} is not "
                             f"{SNAPSHOT_VERSION}")
        st = cls(data["node"])
        st.revision = data["revision"]
        st.identities = {int(i): Labels.parse(ls) for i, ls in data["identities"].items()}
        st.ipcache = {p: IpcacheRecord(*r) for p, r in data["ipcache"].items()}
        for i, doc in data["subjects"].items():
            sp = SubjectPolicy.from_dict(doc)
            st.subjects[int(i)] = sp
            for sid in sp.selector_ids():
                st.subjects_of_selector[sid].add(int(i))
        st.subject_revision = {int(i): r for i, r in data["subject_revision"].items()}
        st.members = {sid: set(m) for sid, m in data["members"].items()}
        st.pods = dict(data["pods"])
        st.node_ips = dict(data["node_ips"])
        return st

    # -- folding events ---------------------------------------------------------------------

    def apply(self, subject: str, payload: Payload, seq: int) -> Dirty:
        """Fold one event (its typed payload, as the contract decoded it on ``subject``);
        returns what it may have changed."""
        self.revision = max(self.revision, seq)
        dirty = Dirty()
        match payload:
            case IdentityUpsert(id=ident):
                labels = Labels.parse(payload.labels)
                old = self.identities.get(ident)
                self.identities[ident] = labels
                if old is not None and old != labels:
                    self._forget_policy(ident, dirty)
            case IdentityDelete(id=ident):
                self.identities.pop(ident, None)
                self._forget_policy(ident, dirty)
            case IpcacheUpsert() | IpcacheDelete():
                self._ipcache(subject, payload, dirty)
            case PolicyRules():
                self._rules(payload, dirty)
            case PolicySelector():
                sid = fold_selector(self.members, payload)
                dirty.subjects |= self.subjects_of_selector.get(sid, set())
            case ObjectUpsert() | ObjectDelete():
                self._object(payload, dirty)
        return dirty

    def _ipcache(self, subject: str, payload: IpcacheUpsert | IpcacheDelete,
                 dirty: Dirty) -> None:
        origin = parse_ipcache_origin(subject)
        prefix = payload.prefix
        old = self.ipcache.get(prefix)
        if isinstance(payload, IpcacheUpsert):
            rec = IpcacheRecord(payload.identity, payload.host_ip or "", payload.node or "",
                                origin, payload.pod or "")
            # Pod addresses win over CIDR identities for the same prefix, as in Cilium.
            if old is not None and old.origin == IPCACHE_SOURCE_K8S \
                    and origin != IPCACHE_SOURCE_K8S:
                return
            self.ipcache[prefix] = rec
        else:
            if old is None or old.origin != origin:
                return
            del self.ipcache[prefix]
        dirty.ipcache = True
        dirty.endpoints = True
        dirty.all_subjects = True   # local identities and named ports may have moved

    def _rules(self, payload: PolicyRules, dirty: Dirty) -> None:
        ident = payload.identity
        # before any change
        sp = SubjectPolicy.from_payload(payload) if payload.rules else None
        old = self.subjects.get(ident)
        if old is not None:
            for sid in old.selector_ids():
                self.subjects_of_selector[sid].discard(ident)
        if sp is not None:
            self.subjects[ident] = sp
            for sid in sp.selector_ids():
                self.subjects_of_selector[sid].add(ident)
        else:
            self.subjects.pop(ident, None)
        self.subject_revision[ident] = payload.revision
        dirty.subjects.add(ident)
        dirty.endpoints = True      # enforcement flags follow the rules

    def _forget_policy(self, ident: int, dirty: Dirty) -> None:
        """The identity's labels changed or it is gone: its policy is not computed (any more)
        until the policy service says so again."""
        old = self.subjects.pop(ident, None)
        if old is not None:
            for sid in old.selector_ids():
                self.subjects_of_selector[sid].discard(ident)
        if self.subject_revision.pop(ident, None) is not None or old is not None:
            dirty.subjects.add(ident)
            dirty.endpoints = True

    def _object(self, payload: ObjectUpsert | ObjectDelete, dirty: Dirty) -> None:
        name = payload.name
        key = object_key(payload)
        if payload.kind == KIND_POD:
            if isinstance(payload, ObjectUpsert):
                self.pods[key] = payload.object
            else:
                self.pods.pop(key, None)
            dirty.all_subjects = True   # named ports
        elif payload.kind == KIND_NODE:
            if isinstance(payload, ObjectUpsert):
                ip = node_internal_ip(payload.object)
                if ip:
                    self.node_ips[name] = ip
            else:
                self.node_ips.pop(name, None)
            dirty.ipcache = True

    # -- desired map contents ---------------------------------------------------------------

    def identity_of(self, ip: str) -> int | None:
        rec = self.ipcache.get(f"{ip}/32")
        return rec.identity if rec is not None else None

    def desired_ipcache(self) -> dict[str, IpcacheEntry]:
        """Every prefix with its identity; node addresses are host here, remote-node elsewhere."""
        out: dict[str, IpcacheEntry] = {}
        for prefix, rec in self.ipcache.items():
            if ":" in prefix:
                continue    # IPv6 CIDR identities: the datapath is IPv4 only
            remote = rec.host_ip if rec.node and rec.node != self.node else ""
            out[prefix] = IpcacheEntry(rec.identity, remote)
        for name, ip in self.node_ips.items():
            ident = ID_HOST if name == self.node else ID_REMOTE_NODE
            out[f"{ip}/32"] = IpcacheEntry(ident, "" if name == self.node else ip)
        return out

    def endpoint_identity(self, ep: LocalEndpoint) -> int:
        """The identity of a local endpoint, or the init identity while it is not resolved:
        its address must have a pod ipcache entry, for this pod (not a previous owner of a
        reused address)."""
        rec = self.ipcache.get(f"{ep.ip}/32")
        if rec is None or rec.origin != IPCACHE_SOURCE_K8S or (ep.pod and rec.pod != ep.pod):
            return ID_INIT
        return rec.identity

    def policy_computed(self, ident: int) -> bool:
        """Whether the policy service has published the identity's policy (for its current
        labels); the init identity never has one."""
        return ident != ID_INIT and ident in self.subject_revision

    def local_identities(self, endpoints: Iterable[LocalEndpoint]) -> set[int]:
        return {self.endpoint_identity(ep) for ep in endpoints}

    def desired_endpoints(self, endpoints: Iterable[LocalEndpoint]) -> dict[str, EndpointEntry]:
        out: dict[str, EndpointEntry] = {}
        for ep in endpoints:
            ident = self.endpoint_identity(ep)
            if not self.policy_computed(ident):
                # Fail closed: init identity, default deny both ways, no policy entry.
                out[ep.ip] = EndpointEntry(ep.endpoint_id, ID_INIT, ep.ifindex,
                                           enforce_ingress=True, enforce_egress=True)
                continue
            sp = self.subjects.get(ident)
            out[ep.ip] = EndpointEntry(
                ep.endpoint_id, ident, ep.ifindex,
                enforce_ingress=bool(sp and sp.enforced(Direction.INGRESS)),
                enforce_egress=bool(sp and sp.enforced(Direction.EGRESS)),
                dns_proxy=uses_dns_proxy(sp))
        return out

    def named_ports(self) -> dict[int, dict[str, set[tuple[int, int]]]]:
        """identity -> port name -> {(proto, port)}, from the pods' container ports."""
        named: dict[int, dict[str, set[tuple[int, int]]]] = {}
        for pod in self.pods.values():
            ip = (pod.get("status") or {}).get("podIP")
            ident = self.identity_of(ip) if ip else None
            if ident is None:
                continue
            for c in (pod.get("spec") or {}).get("containers") or []:
                for p in c.get("ports") or []:
                    if "name" in p:
                        named.setdefault(ident, {}).setdefault(p["name"], set()).add(
                            (PROTO_BY_NAME[p.get("protocol", "TCP")], p["containerPort"]))
        return named

    def desired_policy(self, subjects: Iterable[int]) -> dict[PolicyKey, Verdict]:
        """The policy entries of ``subjects`` (rules x selector members); none for a subject
        whose policy is not computed (an empty policy would open it both ways)."""
        named = self.named_ports()
        out: dict[PolicyKey, Verdict] = {}
        for ident in subjects:
            if not self.policy_computed(ident):
                continue
            policy = self.subjects.get(ident) or SubjectPolicy(ident)
            out.update(expand(policy, self.members, named).entries)
        return out

    def realized(self, subjects: Iterable[int]) -> dict[int, int]:
        """Policy revision per local subject (what `cilia status` compares across nodes)."""
        return {i: self.subject_revision.get(i, 0) for i in subjects}


def node_internal_ip(node: dict[str, Any]) -> str | None:
    for addr in (node.get("status") or {}).get("addresses") or []:
        if addr.get("type") == "InternalIP":
            return str(addr.get("address"))
    return None
