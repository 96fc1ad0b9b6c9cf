"""The cluster DNS server's exception hierarchy."""

from __future__ import annotations

from services.common.errors import CiliaError


class DnsError(CiliaError):
    """Base of every error raised by ``services.dns``."""


class DnsStartError(DnsError):
    """The DNS server could not bind its sockets in the pod's netns or did not start."""
