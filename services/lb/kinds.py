"""The kinds the lb service answers for, as entries of the object-kind registry.

``cilia apply`` (:mod:`services.cli.manifests`) checks every document before publishing it
against one registry: the core kinds (:data:`services.common.objects.KINDS`), these, and the
policy kinds. A Service or EndpointSlice is checked the way the lb service reads it
(:func:`~services.lb.model.parse_service`, :func:`~services.lb.model.parse_endpointslice`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.common.objects import KindSpec, ObjectError, validate_metadata
from services.lb.errors import ServiceSpecError
from services.lb.model import parse_endpointslice, parse_service


def validate_service(obj: Mapping[str, Any]) -> None:
    validate_metadata(obj, namespaced=True, dns_label=True)
    try:
        parse_service(obj)
    except ServiceSpecError as exc:
        raise ObjectError(exc.path, exc.reason) from None


def validate_endpointslice(obj: Mapping[str, Any]) -> None:
    validate_metadata(obj, namespaced=True, dns_label=False)
    try:
        parse_endpointslice(obj)
    except ServiceSpecError as exc:
        raise ObjectError(exc.path, exc.reason) from None


KINDS: dict[str, KindSpec] = {
    "Service": KindSpec(("v1",), namespaced=True, validate=validate_service),
    "EndpointSlice": KindSpec(("discovery.k8s.io/v1",), namespaced=True,
                              validate=validate_endpointslice),
}
