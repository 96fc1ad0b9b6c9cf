"""One patch of a node's maps, computed from the folded state as of one revision. Pure.

The agent computes a :class:`NodePlan` on its event loop, where it folds the bus, so the plan
is exactly the state of revision ``plan.revision``; the plan holds fresh, read-only copies and
nothing else, and it is all the writer thread sees. When every part of the plan is written,
the maps hold that revision: that, and nothing folded later, is what the agent reports
realized.

What a plan patches follows what changed (:class:`~services.nodeagent.state.Dirty`):
the ipcache and endpoints maps are given their complete contents (the reconciler diffs them);
the policy map is patched per subject identity (the local subjects whose rules, members or
named ports may have moved, and the subjects no longer local, whose entries go). A part named
in ``full`` (one that failed, or the first patch after start) is rewritten whole: the policy
map then holds exactly the local subjects' entries, and anything else in it is deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from services.common.contract import IPCACHE_SOURCE_K8S
from services.common.identities import ID_INIT
from services.nodeagent.datapath.maps.endpoints import EndpointEntry
from services.nodeagent.datapath.maps.ipcache import IpcacheEntry
from services.nodeagent.health import PART_ENDPOINTS, PART_IPCACHE, PART_POLICY
from services.nodeagent.state import Dirty, LocalEndpoint, NodeState


@dataclass(frozen=True)
class MapPatch:
    """What one written map must hold: ``desired`` covers ``scope`` (the keys or partitions
    the map's view reconciles; None: the whole map)."""

    desired: Mapping[Any, Any]
    scope: frozenset[Any] | None = None


@dataclass(frozen=True)
class NodePlan:
    """What the node maps must hold for ``revision``; a part left None is not patched."""

    revision: int
    local_subjects: frozenset[int]
    policy_revisions: Mapping[int, int]       # local subject -> its policy revision
    endpoint_identities: Mapping[str, int]    # local endpoint IP -> identity (ID_INIT: none)
    ipcache: Mapping[str, IpcacheEntry] | None = None
    endpoints: Mapping[str, EndpointEntry] | None = None
    policy: MapPatch | None = None   # scope: the subjects patched (None: every one)
    parts: tuple[str, ...] = field(default=())
    # with the ipcache part: who each pod address is (identity, pod) as of ``revision``
    owners: Mapping[str, tuple[int, str]] | None = None

    def __bool__(self) -> bool:
        return bool(self.parts)

    def patches(self) -> dict[str, MapPatch]:
        """The plan's parts as map patches, by map name (a node part is named after its map),
        in write order."""
        out: dict[str, MapPatch] = {}
        if self.ipcache is not None:
            out[PART_IPCACHE] = MapPatch(self.ipcache)
        if self.endpoints is not None:
            out[PART_ENDPOINTS] = MapPatch(self.endpoints)
        if self.policy is not None:
            out[PART_POLICY] = self.policy
        return out


def plan_node(state: NodeState, dirty: Dirty, endpoints: Iterable[LocalEndpoint],
              written: frozenset[int] | None, full: Iterable[str] = (),
              skip: Iterable[str] = ()) -> NodePlan:
    """The patch that brings the node maps to ``state`` (as of ``state.revision``).

    Args:
        state: the folded state.
        dirty: what changed since the last successful patch.
        endpoints: this node's endpoints.
        written: the subjects whose policy entries the map holds (None: unknown, e.g. after
            a start, so the policy map is rewritten whole).
        full: parts to rewrite whole, whatever ``dirty`` says.
        skip: parts left out of this plan (failing ones waiting for their retry, which
            rewrites them whole: what changed meanwhile is not lost).
    """
    full = set(full)
    skip = set(skip)
    eps = list(endpoints)
    identities = {ep.ip: state.endpoint_identity(ep) for ep in eps}
    local = frozenset(set(identities.values()) - {ID_INIT})
    parts: list[str] = []
    ipcache = endpoint_entries = owners = None
    if (dirty.ipcache or PART_IPCACHE in full) and PART_IPCACHE not in skip:
        ipcache = MappingProxyType(state.desired_ipcache())
        owners = MappingProxyType(address_owners(state))
        parts.append(PART_IPCACHE)
    if (dirty.endpoints or PART_ENDPOINTS in full) and PART_ENDPOINTS not in skip:
        endpoint_entries = MappingProxyType(state.desired_endpoints(eps))
        parts.append(PART_ENDPOINTS)
    policy = None
    if PART_POLICY in skip:
        pass
    elif written is None or PART_POLICY in full:
        policy = MapPatch(MappingProxyType(state.desired_policy(sorted(local))))
    else:
        touched = local if dirty.all_subjects else dirty.subjects & local
        scope = touched | (written - local)
        if scope:
            policy = MapPatch(MappingProxyType(state.desired_policy(sorted(touched))),
                              frozenset(scope))
    if policy is not None:
        parts.append(PART_POLICY)
    return NodePlan(state.revision, local, MappingProxyType(state.realized(sorted(local))),
                    MappingProxyType(identities), ipcache, endpoint_entries, policy,
                    tuple(parts), owners)


def address_owners(state: NodeState) -> dict[str, tuple[int, str]]:
    """Pod address -> (identity, pod) of every pod ipcache entry."""
    return {prefix.removesuffix("/32"): (rec.identity, rec.pod)
            for prefix, rec in state.ipcache.items()
            if rec.origin == IPCACHE_SOURCE_K8S and prefix.endswith("/32")}


def reassigned(before: Mapping[str, tuple[int, str]],
               after: Mapping[str, tuple[int, str]]) -> list[str]:
    """Addresses whose pod went away or whose identity or pod changed: flows tracked for them
    belong to an endpoint that is gone, and must not let the next owner's packets through as
    replies."""
    return sorted(addr for addr, owner in before.items() if after.get(addr) != owner)

