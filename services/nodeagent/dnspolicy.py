"""What an endpoint's compiled policy says about DNS (pure; the DNS proxy asks it).

- :func:`uses_dns_proxy`: whether the endpoint's DNS goes through the node's proxy: its egress
  has DNS rules or ``toFQDNs`` peers (Cilium redirects only ports with DNS rules; cilia also
  redirects for ``toFQDNs`` alone, so a policy without a DNS rule still learns its names).
- :func:`query_allowed`: Cilium's verdict on one query. The egress allow entries that cover the
  server asked (its identity is a member of a peer selector, or the entry has any peer) and
  its port 53 decide: one without DNS rules allows every name (the plain L4 meaning); else a
  ``matchName``/``matchPattern`` of one of them must match. No entry covers it: allowed only
  when egress is not enforced.
- :func:`fqdn_ports`: the ports that the ``toFQDNs`` entries matching a name allow, which the
  node's maps must allow for the name's addresses before the proxy releases the answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Set

from services.common.policytypes import PROTO_TCP, PROTO_UDP, Direction
from services.policy.compiler import CompiledEntry, SubjectPolicy
from services.policy.fqdnmatch import dns_matcher
from services.policy.model import Section

DNS_PORT = 53
PortProto = tuple[int, int]   # (protocol, port); protocol 0 is any


def _egress(sp: SubjectPolicy | None, section: Section = Section.EGRESS
            ) -> Iterator[CompiledEntry]:
    if sp is None:
        return
    for rule in sp.rules:
        for entry in rule.entries:
            if entry.section == section:
                yield entry


def uses_dns_proxy(sp: SubjectPolicy | None) -> bool:
    """Whether the subject's DNS queries go through the node's DNS proxy."""
    return any(e.fqdns or e.dns is not None for e in _egress(sp))


def _covers_port(entry: CompiledEntry, proto: int, port: int) -> bool:
    if not entry.ports:
        return True
    return any(p.proto in (0, proto) and not p.name
               and (p.port == 0 or p.port <= port <= max(p.port, p.end_port))
               for p in entry.ports)


def query_allowed(sp: SubjectPolicy | None, members: Mapping[str, Set[int]],
                  server_identity: int, proto: int, name: str) -> bool:
    """Whether the subject may ask ``server_identity`` (on port 53 over ``proto``) for
    ``name``."""
    covering = [e for e in _egress(sp)
                if _covers_port(e, proto, DNS_PORT)
                and (e.any_peer or any(server_identity in members.get(s, ()) for s in e.selectors))]
    if not covering:
        return sp is None or not sp.enforced(Direction.EGRESS)
    for entry in covering:
        rules = entry.dns
        if rules is None or any(dns_matcher(t).matches(name) for t in rules):
            return True
    return False


def selects(sp: SubjectPolicy | None, name: str) -> bool:
    """Whether a ``toFQDNs`` entry of the subject matches ``name`` (the names worth learning,
    as Cilium's NameManager keeps only the names some selector matches)."""
    return any(dns_matcher(t).matches(name) for e in _egress(sp) for t in e.fqdns)


def fqdn_ports(sp: SubjectPolicy | None, name: str) -> list[PortProto]:
    """The (protocol, port) pairs the ``toFQDNs`` entries matching ``name`` allow (the first
    port of a range; a rule without ports gives TCP and UDP on port 0)."""
    out: list[PortProto] = []
    for entry in _egress(sp):
        if not any(dns_matcher(t).matches(name) for t in entry.fqdns):
            continue
        if not entry.ports:
            out += [(PROTO_TCP, 0), (PROTO_UDP, 0)]
        for p in entry.ports:
            if not p.name:
                out.append((p.proto or PROTO_TCP, p.port))
    return sorted(set(out))
