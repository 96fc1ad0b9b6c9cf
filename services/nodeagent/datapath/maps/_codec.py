"""Validation helpers shared by the map modules' encoders (pure).

Every check raises :class:`~services.nodeagent.datapath.errors.EncodeError` naming the entry
(``what``) and the field, before anything is written.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import TypeVar

from services.nodeagent.datapath._byteorder import ip_to_be32
from services.nodeagent.datapath.errors import EncodeError

U32_MAX = (1 << 32) - 1
U16_MAX = (1 << 16) - 1
U8_MAX = (1 << 8) - 1
PORT_MAX = U16_MAX

K = TypeVar("K")
E = TypeVar("E")


def check_range(what: str, fld: str, value: int, lo: int, hi: int) -> None:
    """``value`` must be an integer (not a bool) within ``[lo, hi]``."""
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise EncodeError(f"{what}: field {fld}={value!r} is not an integer in [{lo}, {hi}]")


def network(prefix: str | ipaddress.IPv4Network, what: str) -> ipaddress.IPv4Network:
    """An IPv4 prefix (host bits clear)."""
    try:
        net = ipaddress.ip_network(prefix, strict=True)
    except ValueError as exc:
        raise EncodeError(f"{what}: field prefix: {exc}") from exc
    if not isinstance(net, ipaddress.IPv4Network):
        raise EncodeError(f"{what}: field prefix: only IPv4 is supported")
    return net


def address(what: str, value: str, fld: str = "address") -> int:
    """An IPv4 address as its network-order ``u32`` field."""
    try:
        return ip_to_be32(value)
    except ValueError as exc:
        raise EncodeError(f"{what}: field {fld}: {exc}") from exc


# Protocols a service frontend or backend may use (lib/lb.h keeps the IP protocol number).
LB_PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
LB_PROTOCOL_NAMES = {v: k for k, v in LB_PROTOCOLS.items()}


def protocol(what: str, value: str) -> int:
    """A frontend's or backend's protocol name as its IP protocol number."""
    if value not in LB_PROTOCOLS:
        raise EncodeError(f"{what}: field protocol={value!r} is not TCP, UDP or SCTP")
    return LB_PROTOCOLS[value]


def protocol_name(number: int) -> str:
    return LB_PROTOCOL_NAMES.get(number, str(number))


def collect(errors: list[EncodeError] | None, exc: EncodeError) -> None:
    """Raise ``exc``, or (lenient encoding) remember it and go on with the next entry."""
    if errors is None:
        raise exc
    errors.append(exc)


def encode_all(desired: Mapping[K, E], one: Callable[[K, E], tuple[bytes, bytes]],
               errors: list[EncodeError] | None) -> dict[bytes, bytes]:
    """Encode each entry with ``one``; a malformed one raises, or with ``errors`` is
    collected there and left out."""
    out: dict[bytes, bytes] = {}
    for key, entry in desired.items():
        try:
            kb, vb = one(key, entry)
        except EncodeError as exc:
            collect(errors, exc)
        else:
            out[kb] = vb
    return out
