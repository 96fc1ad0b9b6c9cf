"""CIDR rules: prefixes, CIDR identities (Cilium's local scope) and ipcache prefix entries.

How a CIDR rule becomes identities and selectors (Cilium's own scheme):

* Every prefix a rule names (its ``except`` prefixes included) gets a CIDR identity in the local
  scope (``LOCAL_IDENTITY_FLAG`` and up) and an ipcache entry ``prefix -> identity``; the
  datapath resolves an address by longest prefix, so an address inside an ``except`` prefix
  resolves to the except's identity, never to the enclosing one.
* A CIDR identity carries the labels ``cidr:<p>`` for its own prefix and for every shorter
  prefix containing it, plus ``reserved:world``. A rule ``toCIDR: 10.0.0.0/8`` is the selector
  ``cidr:10.0.0.0/8``, which therefore matches the identity of ``10.1.0.0/16`` as well; an
  ``except: [10.1.0.0/16]`` adds ``cidr:10.1.0.0/16 DoesNotExist``, which carves it out.
* Pods and other label-based identities never carry ``cidr:`` labels, and the ipcache maps
  their addresses (/32) to their own identity, so CIDR rules apply only to peers without a
  label-based identity. ``0.0.0.0/0`` (and ``::/0``) also match ``reserved:world`` itself.

Identity numbers are ``LOCAL_IDENTITY_FLAG | h`` with ``h`` taken from SHA-256 of the prefix,
probing upward on the (rare) collision: replicas agree without coordination because the number
is a function of the prefix, and of the order of the bus' events in the collision case.
IPv6 label keys replace ``:`` by ``-`` as Cilium does (``cidr:2001-db8--/32``).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from services.common.identities import ID_WORLD, LOCAL_IDENTITY_FLAG
from services.common.labels import SOURCE_CIDR, SOURCE_RESERVED, Label, Labels

from .entities import ENTITY_WORLD
from .errors import CIDRError
from .selector import OP_DOES_NOT_EXIST, OP_IN, EndpointSelector, Requirement

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LOCAL_ID_SPACE = LOCAL_IDENTITY_FLAG - 1   # usable low bits of a local identity (1..2^24-1)
_HASH_HEX = 12                              # hex digits of SHA-256 used to seed a number


@dataclass(frozen=True)
class CIDRRule:
    """One CIDR peer: a prefix, less the ``except`` prefixes (each contained in it)."""

    prefix: str
    excepts: tuple[str, ...] = ()

    def prefixes(self) -> tuple[str, ...]:
        """Every prefix that needs an identity: the prefix and its excepts."""
        return (self.prefix, *self.excepts)


def parse_prefix(text: object) -> Network:
    """Parse ``10.0.0.0/8`` or a bare address (a /32 or /128).

    Raises:
        CIDRError: not a prefix, or host bits set (``10.0.0.1/8``).
    """
    if not isinstance(text, str) or not text:
        raise CIDRError(f"CIDR must be a string like 10.0.0.0/8, got {text!r}")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise CIDRError(f"malformed CIDR {text!r}: {exc}") from None


def make_cidr_rule(prefix: object, excepts: Iterable[object] = ()) -> CIDRRule:
    """Validate and normalise a CIDR rule.

    Raises:
        CIDRError: a malformed prefix, or an except not inside the prefix.
    """
    net = parse_prefix(prefix)
    out: list[str] = []
    for exc in excepts:
        enet = parse_prefix(exc)
        if enet.version != net.version or not enet.subnet_of(net):  # type: ignore[arg-type]
            raise CIDRError(f"except {exc!r} is not inside {prefix!r}")
        out.append(str(enet))
    return CIDRRule(str(net), tuple(sorted(set(out))))


def label_key(net: Network) -> str:
    """The ``cidr:`` label key of a prefix (IPv6 ``:`` written as ``-``)."""
    return str(net).replace(":", "-")


def prefix_selector_requirement(prefix: str, op: str = OP_IN) -> Requirement:
    """The requirement ``cidr:<prefix>`` (``In`` it, or ``DoesNotExist``)."""
    key = label_key(parse_prefix(prefix))
    return Requirement(SOURCE_CIDR, key, op, ("",) if op == OP_IN else ())


def cidr_selector(rule: CIDRRule) -> EndpointSelector:
    """The selector matching the CIDR identities of ``rule`` (excepts carved out)."""
    reqs = [prefix_selector_requirement(rule.prefix)]
    reqs += [prefix_selector_requirement(e, OP_DOES_NOT_EXIST) for e in rule.excepts]
    return EndpointSelector(tuple(reqs))


def cidr_labels(prefix: str) -> Labels:
    """The labels of a CIDR identity: its prefix, every containing prefix, reserved:world."""
    net = parse_prefix(prefix)
    lbls = [Label(SOURCE_CIDR, label_key(net.supernet(new_prefix=n)))
            for n in range(net.prefixlen + 1)]
    return Labels([*lbls, Label(SOURCE_RESERVED, ENTITY_WORLD)])


_WORLD_CIDR_LABELS = (Label(SOURCE_CIDR, label_key(ipaddress.ip_network("0.0.0.0/0"))),
                      Label(SOURCE_CIDR, label_key(ipaddress.ip_network("::/0"))))


def matching_labels(identity: int, labels: Labels) -> Labels:
    """The labels selectors see for an identity: world also answers to the /0 prefixes."""
    if identity == ID_WORLD:
        return labels | _WORLD_CIDR_LABELS
    return labels


def _seed(prefix: str) -> int:
    return int(hashlib.sha256(prefix.encode()).hexdigest()[:_HASH_HEX], 16) % LOCAL_ID_SPACE + 1


class CIDRAllocator:
    """Refcounted prefix -> local identity numbers (deterministic, see the module doc)."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._refs: dict[str, int] = {}
        self._taken: dict[int, str] = {}

    def acquire(self, prefix: str) -> tuple[int, bool]:
        """Take a reference on ``prefix``; return (identity, newly allocated).

        Raises:
            CIDRError: the local identity space is full.
        """
        if prefix in self._ids:
            self._refs[prefix] += 1
            return self._ids[prefix], False
        if len(self._taken) >= LOCAL_ID_SPACE:
            raise CIDRError("local (CIDR) identity space exhausted")
        low = _seed(prefix)
        while LOCAL_IDENTITY_FLAG | low in self._taken:
            low = low % LOCAL_ID_SPACE + 1
        ident = LOCAL_IDENTITY_FLAG | low
        self._ids[prefix], self._refs[prefix], self._taken[ident] = ident, 1, prefix
        return ident, True

    def release(self, prefix: str) -> int | None:
        """Drop a reference; return the identity if it was freed, else None."""
        self._refs[prefix] -= 1
        if self._refs[prefix]:
            return None
        ident = self._ids.pop(prefix)
        del self._refs[prefix], self._taken[ident]
        return ident

    def identity(self, prefix: str) -> int | None:
        """The identity of ``prefix``, or None if it has none."""
        return self._ids.get(prefix)

    def entries(self) -> dict[str, int]:
        """The ipcache prefix entries: prefix -> CIDR identity."""
        return dict(self._ids)


def lpm_prefix(address: str, prefixes: Iterable[str]) -> str | None:
    """The longest of ``prefixes`` holding an address (as the datapath looks it up), or None.

    Raises:
        CIDRError: ``address`` is not an IP address.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise CIDRError(f"not an IP address: {address!r}") from None
    best: str | None = None
    best_len = -1
    for prefix in prefixes:
        net = ipaddress.ip_network(prefix)
        if net.version == ip.version and ip in net and net.prefixlen > best_len:
            best, best_len = prefix, net.prefixlen
    return best


def lpm_identity(address: str, entries: dict[str, int], default: int = ID_WORLD) -> int:
    """Resolve an address against prefix entries by longest prefix (as the datapath does).

    Raises:
        CIDRError: ``address`` is not an IP address.
    """
    prefix = lpm_prefix(address, entries)
    return default if prefix is None else entries[prefix]
