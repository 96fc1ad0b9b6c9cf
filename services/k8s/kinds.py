"""Every kind a source accepts, and the one check an object passes before a source publishes it.

Both sources publish cluster objects on the bus: ``cilia apply -f`` (:mod:`services.cli.source`)
and the Kubernetes watcher (:mod:`services.k8s.service`). They check each object the same way,
against one registry: the core kinds (:data:`services.common.objects.KINDS`), the kinds the lb
service answers for (:data:`services.lb.kinds.KINDS`) and the policy kinds, each checked the way
the policy service reads it. The registry lives here, under the watcher and not in the CLI,
because the CLI sits above every service package and the watcher may not import it.
"""

from __future__ import annotations

import copy
from typing import Any

from services.common.objects import DEFAULT_NAMESPACE, KindSpec, ObjectError
from services.common.objects import KINDS as CORE_KINDS
from services.lb.kinds import KINDS as LB_KINDS
from services.policy import KIND_CCNP, KIND_CNP, KIND_KNP, PolicyValidationError, parse_policy

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"   # the API server sets it on every namespace


def _validate_policy(doc: Any) -> None:
    try:
        parse_policy(doc)
    except PolicyValidationError as exc:
        raise ObjectError(exc.path, exc.reason) from exc


POLICY_KINDS: dict[str, KindSpec] = {
    KIND_CNP: KindSpec(("cilium.io/v2",), namespaced=True, validate=_validate_policy),
    KIND_CCNP: KindSpec(("cilium.io/v2",), namespaced=False, validate=_validate_policy),
    KIND_KNP: KindSpec(("networking.k8s.io/v1",), namespaced=True, validate=_validate_policy),
}
# Every kind a source accepts.
KINDS: dict[str, KindSpec] = {**CORE_KINDS, **LB_KINDS, **POLICY_KINDS}


def validate_document(doc: Any) -> dict[str, Any]:
    """Validate one decoded document; returns a copy with defaults filled in.

    Raises:
        ObjectError: naming the field at fault.
    """
    if not isinstance(doc, dict):
        raise ObjectError("", f"a manifest must be a map, got {type(doc).__name__}")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ObjectError("kind", "is required")
    spec = KINDS.get(kind)
    if spec is None:
        raise ObjectError("kind", f"unsupported kind {kind!r} (supported: "
                                  f"{', '.join(sorted(KINDS))})")
    if doc.get("apiVersion") not in spec.api_versions:
        raise ObjectError("apiVersion", f"{kind} needs apiVersion "
                                        f"{' or '.join(spec.api_versions)}, "
                                        f"got {doc.get('apiVersion')!r}")
    spec.validate(doc)
    obj = copy.deepcopy(doc)
    if spec.namespaced:
        obj["metadata"].setdefault("namespace", DEFAULT_NAMESPACE)
    if kind == "Namespace":
        # The API server labels every namespace with its own name; policies select on it.
        labels = obj["metadata"].get("labels") or {}
        obj["metadata"]["labels"] = {**labels, NAMESPACE_NAME_LABEL: obj["metadata"]["name"]}
    return obj
