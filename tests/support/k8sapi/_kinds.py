"""The resources the test API server serves: group, version, plural, kind, scope, subresources."""

from __future__ import annotations

from dataclasses import dataclass

# Field selector labels every kind accepts (the apiserver's DefaultClusterScopedAttr /
# DefaultNamespaceScopedAttr).
COMMON_FIELDS = ("metadata.name", "metadata.namespace")


@dataclass(frozen=True)
class Kind:
    """One served resource, as its discovery document describes it."""

    group: str            # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    status: bool          # has a /status subresource: a main PUT keeps the stored status
    crd: bool = False     # served as a CustomResourceDefinition (no strategic merge patch)
    fields: tuple[str, ...] = ()   # field selector labels beyond COMMON_FIELDS
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def qualified(self) -> str:
        """How errors name the resource: ``pods``, ``ciliumnetworkpolicies.cilium.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def field_labels(self) -> tuple[str, ...]:
        return COMMON_FIELDS + self.fields


POD_FIELDS = ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
              "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP",
              "status.nominatedNodeName")
EVENT_FIELDS = ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                "involvedObject.uid", "involvedObject.apiVersion",
                "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
                "reportingComponent", "source", "type")

KINDS: tuple[Kind, ...] = (
    Kind("", "v1", "namespaces", "Namespace", False, True, fields=("status.phase",),
         short_names=("ns",)),
    Kind("", "v1", "nodes", "Node", False, True, fields=("spec.unschedulable",),
         short_names=("no",)),
    Kind("", "v1", "pods", "Pod", True, True, fields=POD_FIELDS, short_names=("po",)),
    Kind("", "v1", "services", "Service", True, True, fields=("spec.clusterIP", "spec.type"),
         short_names=("svc",)),
    Kind("", "v1", "events", "Event", True, False, fields=EVENT_FIELDS, short_names=("ev",)),
    Kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True, False),
    Kind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, False,
         short_names=("netpol",)),
    Kind("cilium.io", "v2", "ciliumnetworkpolicies", "CiliumNetworkPolicy", True, True,
         crd=True, short_names=("cnp", "ciliumnp")),
    Kind("cilium.io", "v2", "ciliumclusterwidenetworkpolicies",
         "CiliumClusterwideNetworkPolicy", False, True, crd=True,
         short_names=("ccnp",)),
    Kind("coordination.k8s.io", "v1", "leases", "Lease", True, False),
    Kind("apps", "v1", "deployments", "Deployment", True, True, short_names=("deploy",)),
)

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
STATUS_VERBS = ["get", "patch", "update"]


def by_resource(group: str, version: str, plural: str) -> Kind | None:
    """The kind served at ``/api[s]/<group>/<version>/<plural>``, if any."""
    for k in KINDS:
        if (k.group, k.version, k.plural) == (group, version, plural):
            return k
    return None


def by_kind(api_version: str, kind: str) -> Kind | None:
    """The kind an object's ``apiVersion`` and ``kind`` name, if served."""
    for k in KINDS:
        if (k.api_version, k.kind) == (api_version, kind):
            return k
    return None


def group_versions() -> dict[str, list[str]]:
    """Served versions per group, core ("") included, in registry order."""
    out: dict[str, list[str]] = {}
    for k in KINDS:
        versions = out.setdefault(k.group, [])
        if k.version not in versions:
            versions.append(k.version)
    return out


def resource_list(group: str, version: str) -> dict | None:
    """The APIResourceList of ``<group>/<version>`` (discovery), or None if not served."""
    kinds = [k for k in KINDS if (k.group, k.version) == (group, version)]
    if not kinds:
        return None
    resources: list[dict] = []
    for k in kinds:
        resources.append({"name": k.plural, "singularName": k.kind.lower(),
                          "namespaced": k.namespaced, "kind": k.kind, "verbs": VERBS,
                          "shortNames": list(k.short_names)})
        if k.status:
            resources.append({"name": f"{k.plural}/status", "singularName": "",
                              "namespaced": k.namespaced, "kind": k.kind,
                              "verbs": STATUS_VERBS})
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": kinds[0].api_version, "resources": resources}


def api_group(group: str) -> dict | None:
    """The APIGroup document of a named group, or None if not served."""
    versions = group_versions().get(group)
    if not group or not versions:
        return None
    listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": listed,
            "preferredVersion": listed[0]}
