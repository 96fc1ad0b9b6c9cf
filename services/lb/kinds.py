"""The kinds the lb service answers for, as entries of the object-kind registry.

``cilia apply`` (:mod:`services.cli.manifests`) checks every document before publishing it
against one registry: the core kinds (:data:`services.common.objects.KINDS`), these, and the
policy kinds. A Service or EndpointSlice is checked the way the lb service reads it
(:func:`~services.lb.model.parse_service`, :func:`~services.lb.model.parse_endpointslice`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from services.common.objects import KindSpec, ObjectError, validate_metadata
from services.lb.errors import ServiceSpecError
from services.lb.model import parse_endpointslice, parse_service


def _validator(parse: Callable[[Mapping[str, Any]], object],
               dns_label: bool) -> Callable[[Mapping[str, Any]], None]:
    """The registry's check of a kind the lb service reads with ``parse``."""
    def validate(obj: Mapping[str, Any]) -> None:
        validate_metadata(obj, namespaced=True, dns_label=dns_label)
        try:
            parse(obj)
        except ServiceSpecError as exc:
            raise ObjectError(exc.path, exc.reason) from None
    return validate


KINDS: dict[str, KindSpec] = {
    "Service": KindSpec(("v1",), namespaced=True,
                        validate=_validator(parse_service, dns_label=True)),
    "EndpointSlice": KindSpec(("discovery.k8s.io/v1",), namespaced=True,
                              validate=_validator(parse_endpointslice, dns_label=False)),
}
