"""The lab's outside world, as the parts that reach it know it.

The lab has no internet. Its external host stands for it: it answers HTTP (and a UDP echo) on
a few "internet" addresses from the documentation ranges (RFC 5737 TEST-NET-2 and TEST-NET-3,
outside every cluster CIDR; :mod:`services.lab.topology` puts them on the host), and the
cluster DNS (:mod:`services.dns`) gives them names. A :class:`World` is those names:

- A records: ``NAME=IP`` (``cilia lab up --external-name``), where NAME may be a wildcard
  ``*.cdn.example.net`` that stands for every name below it (one label or more, as a DNS
  wildcard does), and a name may have several addresses (the option repeated);
- CNAME records: ``ALIAS=TARGET`` (``--external-cname``), followed as a resolver does, up to
  :data:`MAX_CNAME_CHAIN` links.

:data:`DEFAULT_WORLD` holds the names every lab has (:data:`DEFAULT_NAMES`, listed in the
README); what a lab is given is added to them, and a name given again replaces the default.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.common.errors import CiliaError

WORLD_IP = ipaddress.IPv4Address("203.0.113.10")   # RFC 5737 TEST-NET-3
# the external host's own addresses, named under cilia.test
WORLD_IPS = tuple(WORLD_IP + i for i in range(4))
EXTERNAL_DOMAIN = "cilia.test"
# where a lab's names may point: the documentation ranges (never a real host, never a cluster)
WORLD_NETS = (ipaddress.IPv4Network("203.0.113.0/24"), ipaddress.IPv4Network("198.51.100.0/24"))
MAX_CNAME_CHAIN = 8          # links a lookup follows before it gives up (a loop is refused)
MAX_NAME = 253
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_NAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})+$")

# Every lab's names: the external host's (external.cilia.test, world1..world3.cilia.test),
# and names of the kind the seed's exercises use: an API to allow and others to block.
DEFAULT_NAMES: tuple[str, ...] = (
    f"external.{EXTERNAL_DOMAIN}={WORLD_IPS[0]}",
    *(f"world{i}.{EXTERNAL_DOMAIN}={ip}" for i, ip in enumerate(WORLD_IPS[1:], 1)),
    "api.example.com=203.0.113.20",
    "www.example.com=203.0.113.21",
    "api.example.org=198.51.100.20",
    "*.cdn.example.net=203.0.113.40",
)
DEFAULT_CNAMES: tuple[str, ...] = ("assets.example.com=static.cdn.example.net",)


class WorldError(CiliaError):
    """A lab name or address that cannot be (names the option value and what is wrong)."""


@dataclass(frozen=True)
class Resolution:
    """What a name resolves to: the CNAME links followed (alias, target), then the
    addresses of the last name."""

    chain: tuple[tuple[str, str], ...]
    addresses: tuple[ipaddress.IPv4Address, ...]


@dataclass(frozen=True)
class World:
    """The lab's names: A records (exact or ``*.`` wildcard) and CNAMEs."""

    names: Mapping[str, tuple[ipaddress.IPv4Address, ...]] = field(default_factory=dict)
    cnames: Mapping[str, str] = field(default_factory=dict)

    def addresses(self) -> list[ipaddress.IPv4Address]:
        """Every address the external host answers on (its own ones first)."""
        extra = {ip for ips in self.names.values() for ip in ips} - set(WORLD_IPS)
        return [*WORLD_IPS, *sorted(extra)]

    def address_records(self, name: str) -> tuple[ipaddress.IPv4Address, ...] | None:
        """The A records of ``name`` itself (exact, else the closest wildcard above it)."""
        name = name.lower().rstrip(".")
        if name in self.names:
            return self.names[name]
        labels = name.split(".")
        for i in range(1, len(labels)):
            wild = "*." + ".".join(labels[i:])
            if wild in self.names:
                return self.names[wild]
        return None

    def resolve(self, name: str) -> Resolution | None:
        """Follow ``name``'s CNAMEs and return the addresses; None: not a name of the world."""
        name = name.lower().rstrip(".")
        chain: list[tuple[str, str]] = []
        while name in self.cnames:
            target = self.cnames[name]
            chain.append((name, target))
            name = target
        addrs = self.address_records(name)
        if addrs is None:
            return None if not chain else Resolution(tuple(chain), ())
        return Resolution(tuple(chain), addrs)

    def to_args(self) -> list[str]:
        """The world as ``--external-name``/``--external-cname`` options (what the DNS pods
        and the lab's state carry)."""
        out: list[str] = []
        for name, ips in sorted(self.names.items()):
            for ip in ips:
                out += ["--external-name", f"{name}={ip}"]
        for alias, target in sorted(self.cnames.items()):
            out += ["--external-cname", f"{alias}={target}"]
        return out

    def to_json(self) -> dict[str, list[str]]:
        return {"names": [f"{n}={ip}" for n, ips in sorted(self.names.items()) for ip in ips],
                "cnames": [f"{a}={t}" for a, t in sorted(self.cnames.items())]}

    @classmethod
    def from_json(cls, data: Mapping[str, Iterable[str]]) -> World:
        """Raises: WorldError (a saved world that no longer parses)."""
        return world(data.get("names", ()), data.get("cnames", ()), defaults=False)


def _split(spec: str, option: str) -> tuple[str, str]:
    left, sep, right = spec.partition("=")
    if not sep or not left or not right:
        raise WorldError(f"{option} {spec!r}: expected NAME=VALUE")
    return left.strip().lower().rstrip("."), right.strip()


def _check_name(name: str, spec: str, option: str, wildcard: bool) -> None:
    base = name[2:] if wildcard and name.startswith("*.") else name
    if len(name) > MAX_NAME or not _NAME_RE.match(base):
        what = "a DNS name with two labels or more" + (", or *. and one" if wildcard else "")
        raise WorldError(f"{option} {spec!r}: {name!r} is not {what}")


def _address(value: str, spec: str) -> ipaddress.IPv4Address:
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        raise WorldError(f"--external-name {spec!r}: {value!r} is not an IPv4 address") from None
    if not any(ip in net for net in WORLD_NETS):
        raise WorldError(f"--external-name {spec!r}: {ip} is outside the lab's internet "
                         f"({', '.join(str(n) for n in WORLD_NETS)})")
    return ip


def world(names: Iterable[str] = (), cnames: Iterable[str] = (), *,
          defaults: bool = True) -> World:
    """The world with ``names`` (``NAME=IP``, repeated for several addresses) and ``cnames``
    (``ALIAS=TARGET``) added to the defaults (a name given replaces its default records).

    Raises:
        WorldError: a malformed name or address, an address outside :data:`WORLD_NETS`, a
            name that is both a CNAME and has addresses, a CNAME chain that loops, is longer
            than :data:`MAX_CNAME_CHAIN` or ends at no address.
    """
    given: dict[str, list[ipaddress.IPv4Address]] = {}
    for spec in names:
        name, value = _split(spec, "--external-name")
        _check_name(name, spec, "--external-name", wildcard=True)
        ip = _address(value, spec)
        if ip not in given.setdefault(name, []):
            given[name].append(ip)
    aliases: dict[str, str] = {}
    for spec in cnames:
        alias, target = _split(spec, "--external-cname")
        target = target.lower().rstrip(".")
        _check_name(alias, spec, "--external-cname", wildcard=False)
        _check_name(target, spec, "--external-cname", wildcard=False)
        if aliases.get(alias, target) != target:
            raise WorldError(f"--external-cname {spec!r}: {alias} is already an alias of "
                             f"{aliases[alias]}")
        aliases[alias] = target
    base = world(DEFAULT_NAMES, DEFAULT_CNAMES, defaults=False) if defaults else World()
    merged_names = {**base.names, **{n: tuple(ips) for n, ips in given.items()}}
    merged_cnames = {a: t for a, t in base.cnames.items() if a not in merged_names}
    merged_cnames.update(aliases)
    for name in set(merged_cnames) & set(merged_names):
        if name in given or name not in aliases:
            raise WorldError(f"{name}: a name is either a CNAME or has addresses, not both")
        del merged_names[name]      # a given CNAME replaces a default name
    out = World(merged_names, merged_cnames)
    for alias in merged_cnames:
        _check_chain(out, alias)
    return out


def _check_chain(w: World, alias: str) -> None:
    seen = [alias]
    name = alias
    while name in w.cnames:
        name = w.cnames[name]
        if name in seen:
            raise WorldError(f"--external-cname: {' -> '.join([*seen, name])} is a loop")
        seen.append(name)
        if len(seen) > MAX_CNAME_CHAIN + 1:
            raise WorldError(f"--external-cname: {alias} is more than {MAX_CNAME_CHAIN} "
                             "CNAMEs from an address")
    if w.address_records(name) is None:
        raise WorldError(f"--external-cname: {' -> '.join(seen)} ends at no address")


DEFAULT_WORLD = world()
