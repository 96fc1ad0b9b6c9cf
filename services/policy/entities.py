"""Cilium's policy entities as selectors over reserved labels.

Mirrors Cilium's ``EntitySelectorMapping`` (``pkg/policy/api/entity.go``):

* ``all`` is the wildcard selector: every identity, world and CIDR identities included.
* ``world`` selects ``reserved:world``; CIDR identities carry ``reserved:world`` too (as in
  Cilium), so ``world`` covers every address outside the cluster.
* ``host``, ``remote-node``, ``kube-apiserver``, ``health``, ``init``, ``unmanaged`` and
  ``ingress`` select their reserved label.
* ``cluster`` is, in Cilium, host + remote-node + init + ingress + health + unmanaged +
  kube-apiserver + every pod of the local cluster (``io.cilium.k8s.policy.cluster=<name>``).
  cilia runs one cluster, so that is exactly "every identity that is not world":
  ``reserved:world DoesNotExist``, one selector instead of Cilium's eight.
"""

from __future__ import annotations

from services.common.identities import RESERVED
from services.common.labels import SOURCE_K8S, SOURCE_RESERVED

from .selector import (
    OP_DOES_NOT_EXIST,
    OP_EXISTS,
    OP_IN,
    POD_NAMESPACE_KEY,
    EndpointSelector,
    Requirement,
)

ENTITY_ALL = "all"
ENTITY_CLUSTER = "cluster"
ENTITY_WORLD = "world"


def reserved_selector(name: str) -> EndpointSelector:
    """The selector of one reserved identity, same as ``matchLabels: {reserved:<name>: ""}``."""
    return EndpointSelector((Requirement(SOURCE_RESERVED, name, OP_IN, ("",)),))


# Every managed pod (the identity service gives each pod its namespace label), never world
# nor host: what ``{}`` means in a clusterwide policy.
ALL_PODS = EndpointSelector((Requirement(SOURCE_K8S, POD_NAMESPACE_KEY, OP_EXISTS),))

ENTITY_SELECTORS: dict[str, EndpointSelector] = {
    ENTITY_ALL: EndpointSelector(()),
    ENTITY_CLUSTER: EndpointSelector(
        (Requirement(SOURCE_RESERVED, ENTITY_WORLD, OP_DOES_NOT_EXIST),)),
    **{name: reserved_selector(name) for name in RESERVED.values()},
}

ENTITIES = tuple(sorted(ENTITY_SELECTORS))
