"""Pure encoding of domain entries into kernel map bytes, and back.

Nothing here touches the kernel: the typed maps call these functions and hand the bytes to a
reconciler. Validation errors name the entry and the field, and happen before any write.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath._byteorder import (
    be32_to_ip,
    ip_to_be32,
)
from services.nodeagent.datapath.errors import DatapathError
from services.nodeagent.datapath.twins import (
    EndpointKey,
    EndpointValue,
    IpcacheKey,
    IpcacheValue,
)

U32_MAX = (1 << 32) - 1
U16_MAX = (1 << 16) - 1
U8_MAX = (1 << 8) - 1


class EncodeError(DatapathError, ValueError):
    """A desired entry is malformed; the message names the entry and the field."""


class IpcacheEntry(NamedTuple):
    """What the ipcache says about a prefix."""

    identity: int
    tunnel_endpoint: str = ""   # IPv4 of the node hosting the prefix; "" for none/local
    flags: int = 0


class EndpointEntry(NamedTuple):
    """A local endpoint, keyed by its pod IPv4."""

    endpoint_id: int
    identity: int
    ifindex: int = 0            # host-side veth ifindex in the node namespace; 0 = no check
    enforce_ingress: bool = False
    enforce_egress: bool = False


def _check_range(what: str, fld: str, value: int, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise EncodeError(f"{what}: field {fld}={value!r} is not an integer in [{lo}, {hi}]")


def _network(prefix: str | ipaddress.IPv4Network, what: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(prefix, strict=True)
    except ValueError as exc:
        raise EncodeError(f"{what}: field prefix: {exc}") from exc
    if not isinstance(net, ipaddress.IPv4Network):
        raise EncodeError(f"{what}: field prefix: only IPv4 is supported")
    return net


# ---- ipcache -------------------------------------------------------------------------------

def _collect(errors: list[EncodeError] | None, exc: EncodeError) -> None:
    """Raise ``exc``, or (lenient encoding) remember it and go on with the next entry."""
    if errors is None:
        raise exc
    errors.append(exc)


def encode_ipcache(desired: Mapping[str, IpcacheEntry],
                   errors: list[EncodeError] | None = None) -> dict[bytes, bytes]:
    """ipcache entries (``"10.0.1.5/32"`` or ``"10.0.0.0/8"`` -> entry) as map bytes.

    Args:
        errors: collect malformed entries here and leave them out (else the first raises).
    """
    out: dict[bytes, bytes] = {}
    for prefix, entry in desired.items():
        try:
            key, val = _ipcache_entry(prefix, entry)
        except EncodeError as exc:
            _collect(errors, exc)
        else:
            out[key] = val
    return out


def _ipcache_entry(prefix: str, entry: IpcacheEntry) -> tuple[bytes, bytes]:
    what = f"ipcache entry {prefix!s}"
    net = _network(prefix, what)
    _check_range(what, "identity", entry.identity, 1, U32_MAX)
    _check_range(what, "flags", entry.flags, 0, U8_MAX)
    try:
        tunnel = ip_to_be32(entry.tunnel_endpoint) if entry.tunnel_endpoint else 0
    except ValueError as exc:
        raise EncodeError(f"{what}: field tunnel_endpoint: {exc}") from exc
    key = IpcacheKey(prefixlen=net.prefixlen, addr=ip_to_be32(net.network_address))
    val = IpcacheValue(identity=entry.identity, tunnel_endpoint=tunnel, flags=entry.flags)
    return key.to_bytes(), val.to_bytes()


def ipcache_keys(prefixes: Iterable[str]) -> list[bytes]:
    """The map keys of some prefixes (to scope an incremental reconcile)."""
    out = []
    for prefix in prefixes:
        net = _network(prefix, f"ipcache entry {prefix!s}")
        out.append(IpcacheKey(prefixlen=net.prefixlen,
                              addr=ip_to_be32(net.network_address)).to_bytes())
    return out


def decode_ipcache(raw: Mapping[bytes, bytes]) -> dict[str, IpcacheEntry]:
    out: dict[str, IpcacheEntry] = {}
    for kb, vb in raw.items():
        key = IpcacheKey.from_buffer_copy(kb)
        val = IpcacheValue.from_buffer_copy(vb)
        prefix = f"{be32_to_ip(key.addr)}/{key.prefixlen}"
        tunnel = be32_to_ip(val.tunnel_endpoint) if val.tunnel_endpoint else ""
        out[prefix] = IpcacheEntry(val.identity, tunnel, val.flags)
    return out


# ---- endpoints -----------------------------------------------------------------------------

def encode_endpoints(desired: Mapping[str, EndpointEntry],
                     errors: list[EncodeError] | None = None) -> dict[bytes, bytes]:
    """Local endpoints (pod IPv4 -> entry) as map bytes.

    Args:
        errors: collect malformed entries here and leave them out (else the first raises).
    """
    out: dict[bytes, bytes] = {}
    for ip, entry in desired.items():
        try:
            key, val = _endpoint_entry(ip, entry)
        except EncodeError as exc:
            _collect(errors, exc)
        else:
            out[key] = val
    return out


def _endpoint_entry(ip: str, entry: EndpointEntry) -> tuple[bytes, bytes]:
    what = f"endpoint {ip!s}"
    try:
        addr = ip_to_be32(ip)
    except ValueError as exc:
        raise EncodeError(f"{what}: field ip: {exc}") from exc
    _check_range(what, "endpoint_id", entry.endpoint_id, 0, U16_MAX)
    _check_range(what, "identity", entry.identity, 1, U32_MAX)
    _check_range(what, "ifindex", entry.ifindex, 0, U32_MAX)
    flags = ((c.ENDPOINT_F_ENFORCE_INGRESS if entry.enforce_ingress else 0)
             | (c.ENDPOINT_F_ENFORCE_EGRESS if entry.enforce_egress else 0))
    val = EndpointValue(identity=entry.identity, ifindex=entry.ifindex,
                        endpoint_id=entry.endpoint_id, flags=flags)
    return EndpointKey(addr=addr).to_bytes(), val.to_bytes()


def endpoint_keys(ips: Iterable[str]) -> list[bytes]:
    """The map keys of some endpoint addresses (to scope an incremental reconcile)."""
    out = []
    for ip in ips:
        try:
            out.append(EndpointKey(addr=ip_to_be32(ip)).to_bytes())
        except ValueError as exc:
            raise EncodeError(f"endpoint {ip!s}: field ip: {exc}") from exc
    return out


def decode_endpoints(raw: Mapping[bytes, bytes]) -> dict[str, EndpointEntry]:
    out: dict[str, EndpointEntry] = {}
    for kb, vb in raw.items():
        key = EndpointKey.from_buffer_copy(kb)
        val = EndpointValue.from_buffer_copy(vb)
        out[be32_to_ip(key.addr)] = EndpointEntry(
            val.endpoint_id, val.identity, val.ifindex,
            bool(val.flags & c.ENDPOINT_F_ENFORCE_INGRESS),
            bool(val.flags & c.ENDPOINT_F_ENFORCE_EGRESS))
    return out
