"""The Kubernetes resources the watcher lists and watches, as data.

One :class:`Resource` per kind: its group/version, its plural (the URL's last segment) and its
scope. The watcher always lists and watches across every namespace (``/api/v1/pods``, not
``/api/v1/namespaces/<ns>/pods``), as the Cilium operator does for cluster-wide objects.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.contract.objects import (
    KIND_CCNP,
    KIND_CNP,
    KIND_ENDPOINTSLICE,
    KIND_KNP,
    KIND_NAMESPACE,
    KIND_NODE,
    KIND_POD,
    KIND_SERVICE,
)


@dataclass(frozen=True)
class Resource:
    """One kind the watcher reflects."""

    kind: str
    api_version: str        # "v1", "discovery.k8s.io/v1", "cilium.io/v2"
    plural: str
    namespaced: bool

    @property
    def path(self) -> str:
        """The cluster-wide collection's URL path (list and watch)."""
        prefix = "/api" if "/" not in self.api_version else "/apis"
        return f"{prefix}/{self.api_version}/{self.plural}"

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"


RESOURCES: tuple[Resource, ...] = (
    Resource(KIND_NAMESPACE, "v1", "namespaces", namespaced=False),
    Resource(KIND_NODE, "v1", "nodes", namespaced=False),
    Resource(KIND_POD, "v1", "pods", namespaced=True),
    Resource(KIND_SERVICE, "v1", "services", namespaced=True),
    Resource(KIND_ENDPOINTSLICE, "discovery.k8s.io/v1", "endpointslices", namespaced=True),
    Resource(KIND_KNP, "networking.k8s.io/v1", "networkpolicies", namespaced=True),
    Resource(KIND_CNP, "cilium.io/v2", "ciliumnetworkpolicies", namespaced=True),
    Resource(KIND_CCNP, "cilium.io/v2", "ciliumclusterwidenetworkpolicies", namespaced=False),
)
BY_KIND: dict[str, Resource] = {r.kind: r for r in RESOURCES}
