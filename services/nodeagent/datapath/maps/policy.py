"""The policy map (``lib/policy.h``): LPM trie, (subject, direction, peer, proto, port block)
-> allow / deny; and the pure translation of policy entries into its port blocks.

A :class:`~services.common.policytypes.PolicyKey` carries an inclusive port range; the kernel
map matches a destination port by longest prefix, so each range is split into aligned
power-of-two blocks (:func:`port_range_prefixes`). Because the kernel reads only the longest
matching block per (subject, direction, peer, proto), every block also takes on the deny of
any wider block of the same group that contains it (deny wins). :func:`decide` is the kernel's
decision in Python, used by tests and available to ``policy trace``.

The map is partitioned by subject identity, so a change to one subject diffs only that
subject's entries. An entry that cannot be encoded is left out and counted while the others
are written; that fails closed: a subject whose deny cannot be encoded loses its allows too.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from services.common.policytypes import (
    ANY_PEER,
    ANY_PROTO,
    PROTO_NAMES,
    Direction,
    PolicyKey,
    Verdict,
)
from services.nodeagent.datapath._byteorder import be16_to_port, port_to_be16
from services.nodeagent.datapath.backend import MapBackend
from services.nodeagent.datapath.constants import MAX_PORT, PORT_BITS
from services.nodeagent.datapath.errors import EncodeError
from services.nodeagent.datapath.maps._codec import U8_MAX, U32_MAX, check_range, collect
from services.nodeagent.datapath.maps.spec import (
    GROUP_NODE,
    FlatContext,
    FlatMap,
    MapSpec,
    Renderer,
    Row,
    Twin,
    u8,
    u16,
    u32,
)
from services.nodeagent.datapath.maps.view import ReconciledMap
from services.nodeagent.datapath.reconciler import ReconcileResult

NAME = "policy"
MAX_ENTRIES = 65536
# LPM bits of the policy key that are always matched (subject, peer, direction, proto).
POLICY_FIXED_PREFIX_BITS = 80


# struct policy_key (lib/policy.h)
class PolicyMapKey(Twin):
    C_STRUCT, C_HEADER = "policy_key", "policy.h"
    _fields_ = (("prefixlen", u32), ("subject", u32), ("peer", u32), ("direction", u8),
                ("proto", u8), ("dport", u16))  # dport: network byte order


# struct policy_value (lib/policy.h)
class PolicyMapValue(Twin):
    C_STRUCT, C_HEADER = "policy_value", "policy.h"
    _fields_ = (("verdict", u8), ("pad", u8 * 3))


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
    if not 0 <= lo <= hi <= MAX_PORT:
        raise ValueError(f"port range {lo}-{hi} is not within 0-{MAX_PORT}")
    out: list[tuple[int, int]] = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << PORT_BITS
        while lo + size - 1 > hi:
            size >>= 1
        out.append((lo, PORT_BITS - (size.bit_length() - 1)))
        lo += size
    return out


def prefix_range(port: int, plen: int) -> tuple[int, int]:
    """The inclusive port range an aligned block covers."""
    return port, port + (1 << (PORT_BITS - plen)) - 1


def _validate(key: PolicyKey, verdict: Verdict) -> tuple[int, int]:
    what = (f"policy entry (subject={key.subject}, peer={key.peer}, direction={key.direction}, "
            f"proto={key.proto}, port={key.port}, end_port={key.end_port})")
    for fld, value, lo, hi in (("subject", key.subject, 1, U32_MAX),
                               ("peer", key.peer, 0, U32_MAX), ("proto", key.proto, 0, U8_MAX),
                               ("port", key.port, 0, MAX_PORT),
                               ("end_port", key.end_port, 0, MAX_PORT)):
        check_range(what, fld, value, lo, hi)
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
            collect(errors, exc)
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
    shift = PORT_BITS - plen
    return p._replace(port=(p.port >> shift) << shift if plen else 0, plen=plen)


def encode_prefix(p: PortPrefix) -> bytes:
    return PolicyMapKey(prefixlen=POLICY_FIXED_PREFIX_BITS + p.plen, subject=p.subject,
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
                       k.prefixlen - POLICY_FIXED_PREFIX_BITS)] = Verdict(v.verdict)
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


def _longest(lookup: Callable[[PortPrefix], Verdict | None], subject: int, peer: int,
             direction: int, proto: int, port: int) -> Verdict | None:
    for plen in range(PORT_BITS, -1, -1):
        shift = PORT_BITS - plen
        found = lookup(PortPrefix(subject, peer, direction, proto,
                                  (port >> shift) << shift if plen else 0, plen))
        if found is not None:
            return found
    return None


def decide(blocks: Mapping[PortPrefix, Verdict] | Callable[[PortPrefix], Verdict | None],
           subject: int, peer: int, direction: int, proto: int, port: int) -> Verdict | None:
    """The kernel's policy decision for a new flow (lib/policy.h), None if nothing matches.

    ``blocks``: the map's port blocks, or a lookup of one block (:func:`held_block`)."""
    lookup = blocks.get if isinstance(blocks, Mapping) else blocks
    found = [_longest(lookup, subject, pe, direction, pr, port)
             for pe in (peer, ANY_PEER) for pr in (proto, ANY_PROTO)]
    if Verdict.DENY in found:
        return Verdict.DENY
    if Verdict.ALLOW in found:
        return Verdict.ALLOW
    return None


def held_block(view: PolicyMap) -> Callable[[PortPrefix], Verdict | None]:
    """A lookup of one port block in what the agent wrote to the map (its mirror)."""
    def lookup(p: PortPrefix) -> Verdict | None:
        raw = view.reconciler.held(encode_prefix(p))
        return None if raw is None else Verdict(PolicyMapValue.from_buffer_copy(raw).verdict)
    return lookup


class PolicyMap(ReconciledMap):
    """(subject, direction, peer, proto, port block) -> allow / deny, partitioned by subject."""

    def __init__(self, backend: MapBackend) -> None:
        super().__init__(backend, partition_of=policy_partition)

    def reconcile(self, desired: Mapping[PolicyKey, Verdict],
                  subjects: Iterable[int] | None = None) -> ReconcileResult:
        """Make the policy map hold exactly ``desired``.

        Args:
            desired: every entry of the reconciled subjects.
            subjects: reconcile only these subject identities (their entries outside
                ``desired`` are deleted; other subjects are untouched). None: the whole map.
        """
        return self.write(encode_policy, desired, partitions=subjects)

    def blocks(self) -> dict[PortPrefix, Verdict]:
        """The kernel map's entries as port blocks."""
        return decode_policy(self.reconciler.backend.read_all())

    def entries(self, subject: int | None = None) -> list[tuple[PolicyKey, Verdict]]:
        """The kernel map's entries (of one subject, if given) as keys with port ranges,
        sorted; what ``cilia bpf policy get`` shows. Adjacent blocks are not merged."""
        out = [(prefix_to_key(p), v) for p, v in self.blocks().items()
               if subject is None or p.subject == subject]
        return sorted(out)


def port_text(k: PolicyKey) -> str:
    """``ANY``, ``80`` or ``8000-8100``: the port column of ``cilia bpf policy``."""
    return "ANY" if k.port == 0 else (str(k.port) if k.port == k.end_port
                                      else f"{k.port}-{k.end_port}")


def entry_row(k: PolicyKey, v: Verdict, labels: list[str] | None = None) -> Row:
    """One policy entry as ``cilia bpf policy get|list`` prints it (``labels``: the peer's,
    when known)."""
    row: Row = {"verdict": v.name.capitalize(),
                "direction": Direction(k.direction).name.lower(), "peer": k.peer}
    if labels is not None:
        row["labels"] = labels
    row.update(port=port_text(k), proto=PROTO_NAMES.get(k.proto, str(k.proto)))
    return row


def port_proto(r: Row) -> str:
    """The PORT/PROTO cell of a row of :func:`entry_row`."""
    return "ANY" if r["port"] == "ANY" and r["proto"] == "ANY" else f"{r['port']}/{r['proto']}"


def rows(view: PolicyMap) -> list[Row]:
    return [{"subject": k.subject, **entry_row(k, v)} for k, v in view.entries()]


def cells(r: Row) -> list[Any]:
    return [r["subject"], r["verdict"], r["direction"].capitalize(), r["peer"], port_proto(r),
            r["node"]]


def flat_key(k: PolicyKey) -> str:
    """``<subject> <ingress|egress> <peer|any> <PROTO>/<port[-end]|any>``."""
    direction = Direction(k.direction).name.lower()
    peer = str(k.peer) if k.peer else "any"
    proto = PROTO_NAMES.get(k.proto, str(k.proto)) if k.proto else "ANY"
    port = "any" if not k.port else (str(k.port) if k.end_port in (0, k.port)
                                     else f"{k.port}-{k.end_port}")
    return f"{k.subject} {direction} {peer} {proto}/{port}"


def flat(entries: Mapping[PolicyKey, Verdict], _ctx: FlatContext) -> FlatMap:
    return {flat_key(k): v.name for k, v in sorted(entries.items())}


SPEC: MapSpec[PolicyMap] = MapSpec(
    name=NAME, header="policy.h", map_type="lpm_trie", key=PolicyMapKey, value=PolicyMapValue,
    max_entries=MAX_ENTRIES, cflags={"CILIA_POLICY_MAX": MAX_ENTRIES}, view=PolicyMap,
    group=GROUP_NODE, part=NAME,
    renderer=Renderer("policy", "The policy map.",
                      "List every policy map entry of each node, from the kernel.", rows,
                      ("SUBJECT", "POLICY", "DIRECTION", "IDENTITY", "PORT/PROTO", "NODE"),
                      cells, numparse=False),
    flat=flat)
