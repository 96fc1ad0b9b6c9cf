"""Numeric security identities: Cilium's reserved numbers and the allocation ranges."""

from __future__ import annotations

from services.common.labels import SOURCE_RESERVED, Label, Labels

# Reserved identities, with Cilium's numbers.
ID_UNKNOWN = 0          # no identity (never allocated; "any peer" in policy keys)
ID_HOST = 1             # the local node
ID_WORLD = 2            # anything outside the cluster
ID_UNMANAGED = 3        # endpoints not managed by cilia
ID_HEALTH = 4           # the health endpoint
ID_INIT = 5             # endpoints whose identity is not resolved yet
ID_REMOTE_NODE = 6      # other nodes of the cluster
ID_KUBE_APISERVER = 7   # the Kubernetes API server
ID_INGRESS = 8          # the ingress proxy

# Cluster-scoped identities allocated for label sets.
MIN_CLUSTER_ID = 256
MAX_CLUSTER_ID = 65535

# Node-local identities (CIDR identities) start here, as in Cilium's local scope.
LOCAL_IDENTITY_FLAG = 1 << 24

RESERVED: dict[int, str] = {
    ID_HOST: "host",
    ID_WORLD: "world",
    ID_UNMANAGED: "unmanaged",
    ID_HEALTH: "health",
    ID_INIT: "init",
    ID_REMOTE_NODE: "remote-node",
    ID_KUBE_APISERVER: "kube-apiserver",
    ID_INGRESS: "ingress",
}
RESERVED_BY_NAME: dict[str, int] = {name: num for num, name in RESERVED.items()}


def reserved_labels(identity: int) -> Labels:
    """The label set of a reserved identity (``reserved:<name>``)."""
    return Labels([Label(SOURCE_RESERVED, RESERVED[identity])])


def is_reserved(identity: int) -> bool:
    return 0 < identity < MIN_CLUSTER_ID


def is_cluster(identity: int) -> bool:
    """Identities allocated for label sets (pods), neither reserved nor node-local."""
    return MIN_CLUSTER_ID <= identity <= MAX_CLUSTER_ID


def is_local(identity: int) -> bool:
    """Node-local (CIDR) identities carry the local-scope flag."""
    return identity >= LOCAL_IDENTITY_FLAG
