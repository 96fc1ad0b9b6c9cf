"""Policy entries -> LPM policy map entries (pure).

A :class:`~services.common.policytypes.PolicyKey` carries an inclusive port range; the kernel
map matches a destination port by longest prefix, so each range is split into aligned
power-of-two blocks (:func:`port_range_prefixes`). Because the kernel reads only the longest
matching block per (subject, direction, peer, proto), every block also takes on the deny of
any wider block of the same group that contains it (deny wins). :func:`decide` is the kernel's
decision in Python, used by tests and available to ``policy trace``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import NamedTuple

from services.common.policytypes import ANY_PEER, ANY_PROTO, Direction, PolicyKey, Verdict
from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath._byteorder import be16_to_port, port_to_be16
from services.nodeagent.datapath.encode import U8_MAX, U32_MAX, EncodeError
from services.nodeagent.datapath.twins import PolicyMapKey, PolicyMapValue


class PortPrefix(NamedTuple):
    """A policy map entry: one aligned port block of one (subject, direction, peer, proto)."""

    subject: int
    peer: int
    direction: int
    proto: int
    port: int       # first port of the block (0 with plen 0: any port)
    plen: int       # number of leading port bits matched, 0..16


def port_range_prefixes(lo: int, hi: int) -> list[tuple[int, int]]:
    """Split the inclusive range [lo, hi] into the fewest aligned (start, prefix_len) blocks.

    ``(0, 0)`` is the whole port space.
    """
    if not 0 <= lo <= hi <= c.MAX_PORT:
        raise ValueError(f"port range {lo}-{hi} is not within 0-{c.MAX_PORT}")
    out: list[tuple[int, int]] = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << c.PORT_BITS
        while lo + size - 1 > hi:
            size >>= 1
        out.append((lo, c.PORT_BITS - (size.bit_length() - 1)))
        lo += size
    return out


def prefix_range(port: int, plen: int) -> tuple[int, int]:
    """The inclusive port range an aligned block covers."""
    return port, port + (1 << (c.PORT_BITS - plen)) - 1


def _validate(key: PolicyKey, verdict: Verdict) -> tuple[int, int]:
    what = (f"policy entry (subject={key.subject}, peer={key.peer}, direction={key.direction}, "
            f"proto={key.proto}, port={key.port}, end_port={key.end_port})")

    def check(fld: str, value: int, lo: int, hi: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise EncodeError(f"{what}: field {fld}={value!r} is not an integer in [{lo}, {hi}]")

    check("subject", key.subject, 1, U32_MAX)
    check("peer", key.peer, 0, U32_MAX)
    check("proto", key.proto, 0, U8_MAX)
    check("port", key.port, 0, c.MAX_PORT)
    check("end_port", key.end_port, 0, c.MAX_PORT)
    if key.direction not in (Direction.INGRESS, Direction.EGRESS):
        raise EncodeError(f"{what}: field direction={key.direction!r} is not 0 or 1")
    if verdict not in (Verdict.ALLOW, Verdict.DENY):
        raise EncodeError(f"{what}: verdict {verdict!r} is not ALLOW or DENY")
    if key.port == 0 and key.end_port != 0:
        raise EncodeError(f"{what}: field port=0 (any) needs end_port=0")
    end = key.end_port or key.port
    if end < key.port:
        raise EncodeError(f"{what}: field end_port={key.end_port} is below port={key.port}")
    return key.port, end


def expand_policy(desired: Mapping[PolicyKey, Verdict],
                  errors: list[EncodeError] | None = None) -> dict[PortPrefix, Verdict]:
    """Policy entries as port blocks, with denies folded into the blocks they contain.

    Args:
        errors: collect malformed entries here and leave them out, failing closed: when one
            is not an allow, the allows of its subject are left out too, so that a deny that
            cannot be written never leaves allows to pass what it denied. Without it, the
            first malformed entry raises.

    Raises:
        EncodeError: an entry is malformed (names the entry and the field).
    """
    blocks: dict[PortPrefix, Verdict] = {}
    closed: set[int] = set()    # subjects with a malformed deny: allows left out
    for key, verdict in desired.items():
        try:
            lo, hi = _validate(key, verdict)
        except EncodeError as exc:
            if errors is None:
                raise
            errors.append(exc)
            if verdict != Verdict.ALLOW:
                closed.add(key.subject)
            continue
        spans = [(0, 0)] if lo == 0 else port_range_prefixes(lo, hi)
        for port, plen in spans:
            p = PortPrefix(key.subject, key.peer, int(key.direction), key.proto, port, plen)
            if blocks.get(p) != Verdict.DENY:
                blocks[p] = Verdict(verdict)
    if closed:
        blocks = {p: v for p, v in blocks.items()
                  if p.subject not in closed or v == Verdict.DENY}
    denies = {p for p, v in blocks.items() if v == Verdict.DENY}
    if not denies:
        return blocks
    for p, v in blocks.items():
        if v == Verdict.ALLOW and any(_ancestor(p, plen) in denies for plen in range(p.plen)):
            blocks[p] = Verdict.DENY
    return blocks


def _ancestor(p: PortPrefix, plen: int) -> PortPrefix:
    shift = c.PORT_BITS - plen
    return p._replace(port=(p.port >> shift) << shift if plen else 0, plen=plen)


def encode_prefix(p: PortPrefix) -> bytes:
    return PolicyMapKey(prefixlen=c.POLICY_FIXED_PREFIX_BITS + p.plen, subject=p.subject,
                        peer=p.peer, direction=p.direction, proto=p.proto,
                        dport=port_to_be16(p.port)).to_bytes()


def encode_policy(desired: Mapping[PolicyKey, Verdict],
                  errors: list[EncodeError] | None = None) -> dict[bytes, bytes]:
    """Policy entries as policy map bytes (see :func:`expand_policy`)."""
    return {encode_prefix(p): PolicyMapValue(verdict=int(v)).to_bytes()
            for p, v in expand_policy(desired, errors).items()}


def decode_policy(raw: Mapping[bytes, bytes]) -> dict[PortPrefix, Verdict]:
    """Policy map bytes back to port blocks."""
    out: dict[PortPrefix, Verdict] = {}
    for kb, vb in raw.items():
        k = PolicyMapKey.from_buffer_copy(kb)
        v = PolicyMapValue.from_buffer_copy(vb)
        out[PortPrefix(k.subject, k.peer, k.direction, k.proto, be16_to_port(k.dport),
                       k.prefixlen - c.POLICY_FIXED_PREFIX_BITS)] = Verdict(v.verdict)
    return out


def prefix_to_key(p: PortPrefix) -> PolicyKey:
    """A port block as a PolicyKey with its range (plen 0 is any port)."""
    lo, hi = (0, 0) if p.plen == 0 else prefix_range(p.port, p.plen)
    return PolicyKey(p.subject, p.peer, p.direction, p.proto, lo, hi)


_SUBJECT = struct.Struct("=I")
_SUBJECT_OFFSET = PolicyMapKey.subject.offset


def policy_partition(key: bytes) -> int:
    """The subject identity of a raw policy map key (the reconciler's partition)."""
    return int(_SUBJECT.unpack_from(key, _SUBJECT_OFFSET)[0])


def _longest(blocks: Mapping[PortPrefix, Verdict], subject: int, peer: int, direction: int,
             proto: int, port: int) -> Verdict | None:
    for plen in range(c.PORT_BITS, -1, -1):
        shift = c.PORT_BITS - plen
        block = PortPrefix(subject, peer, direction, proto,
                           (port >> shift) << shift if plen else 0, plen)
        if block in blocks:
            return blocks[block]
    return None


def decide(blocks: Mapping[PortPrefix, Verdict], subject: int, peer: int, direction: int,
           proto: int, port: int) -> Verdict | None:
    """The kernel's policy decision for a new flow (lib/policy.h), None if nothing matches."""
    found = [_longest(blocks, subject, pe, direction, pr, port)
             for pe in (peer, ANY_PEER) for pr in (proto, ANY_PROTO)]
    if Verdict.DENY in found:
        return Verdict.DENY
    if Verdict.ALLOW in found:
        return Verdict.ALLOW
    return None
