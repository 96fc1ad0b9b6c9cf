"""Entry point of the policy model: YAML-loaded documents in, validated :class:`Policy` out."""

from __future__ import annotations

from typing import Any

from ._cilium import parse_cilium
from ._k8s import parse_k8s
from .errors import PolicyValidationError
from .model import KIND_CCNP, KIND_CNP, KIND_KNP, Policy

API_CILIUM = "cilium.io/v2"
API_NETWORKING = "networking.k8s.io/v1"
DEFAULT_NAMESPACE = "default"  # what kubectl uses when a namespaced object names none

SUPPORTED: dict[str, str] = {KIND_CNP: API_CILIUM, KIND_CCNP: API_CILIUM,
                             KIND_KNP: API_NETWORKING}


def is_policy_document(doc: Any) -> bool:
    """True if ``doc`` is one of the policy kinds this package handles (for ``cilia apply``)."""
    return isinstance(doc, dict) and doc.get("kind") in SUPPORTED


def parse_policy(doc: Any, default_namespace: str = DEFAULT_NAMESPACE) -> Policy:
    """Validate one policy document and translate it into the model.

    Nothing is applied anywhere: a document either yields a whole :class:`Policy` or raises.

    Args:
        doc: a YAML-loaded mapping (``CiliumNetworkPolicy``, ``CiliumClusterwideNetworkPolicy``
            or ``networking.k8s.io/v1`` ``NetworkPolicy``).
        default_namespace: namespace of a namespaced object that names none.

    Raises:
        PolicyValidationError: naming the kind, namespace/name and field path at fault
            (:class:`~services.policy.errors.UnsupportedFieldError` for fields cilia knows but
            does not implement).
    """
    if not isinstance(doc, dict):
        raise PolicyValidationError(f"a policy document must be a mapping, got "
                                    f"{type(doc).__name__}")
    kind = doc.get("kind")
    raw_meta = doc.get("metadata")
    name = raw_meta.get("name", "") if isinstance(raw_meta, dict) else ""
    namespace = raw_meta.get("namespace", "") if isinstance(raw_meta, dict) else ""
    if kind not in SUPPORTED:
        raise PolicyValidationError(f"unsupported kind {kind!r} (expected one of "
                                    f"{', '.join(SUPPORTED)})", "kind", str(kind or ""),
                                    str(namespace or ""), str(name))
    api = doc.get("apiVersion")
    if api != SUPPORTED[kind]:
        raise PolicyValidationError(f"apiVersion {api!r} is not supported for {kind} "
                                    f"(expected {SUPPORTED[kind]})", "apiVersion", kind,
                                    str(namespace or ""), str(name))
    if kind == KIND_KNP:
        return parse_k8s(doc, default_namespace)
    return parse_cilium(doc, kind, default_namespace)
