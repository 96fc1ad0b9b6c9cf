"""The identity service's exception hierarchy."""

from __future__ import annotations

from services.common.errors import CiliaError


class IdentityError(CiliaError):
    """Base of the identity service's errors."""


class IdentitySpaceExhausted(IdentityError):
    pass
