"""What the node's DNS proxy decides about one message (pure, dnspython).

- a query: its question (name and type), or None for what is not a query of one question;
- the answers the proxy makes itself: ``REFUSED`` for a query the DNS rules deny (Cilium's
  default; the verdict is :func:`services.nodeagent.dnspolicy.query_allowed`'s), ``SERVFAIL``
  for one it cannot answer safely;
- whether an upstream message is the answer to the query (its id and question);
- an upstream answer: the addresses each name got, following the CNAME chain from the question
  (every name on the chain is associated with the final addresses, as Cilium's NameManager
  does, so ``toFQDNs: matchName: www.example.com`` selects what its CNAME resolves to), with
  the TTL each record gave, raised to a minimum.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype

from services.policy.fqdnmatch import normalize


@dataclass(frozen=True)
class Question:
    """The question of a query."""

    name: str          # normalized (lower case, no trailing dot)
    rdtype: int


@dataclass(frozen=True)
class Learned:
    """The addresses a name resolved to, and for how long (seconds)."""

    name: str
    addresses: tuple[ipaddress.IPv4Address, ...]
    ttl: int


def question(wire: bytes) -> tuple[dns.message.Message, Question] | None:
    """The parsed query and its question; None when ``wire`` is not a standard query with
    exactly one question (the proxy refuses or drops those)."""
    try:
        msg = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError):
        return None
    if msg.flags & dns.flags.QR or msg.opcode() != dns.opcode.QUERY or len(msg.question) != 1:
        return None
    q = msg.question[0]
    return msg, Question(normalize(q.name.to_text()), q.rdtype)


def refused(query: dns.message.Message) -> bytes:
    """The ``REFUSED`` answer to a denied query."""
    return _answer(query, dns.rcode.REFUSED)


def servfail(query: dns.message.Message) -> bytes:
    """The ``SERVFAIL`` answer to a query the proxy could not answer safely (its addresses
    were not allowed in time): the pod's resolver asks again."""
    return _answer(query, dns.rcode.SERVFAIL)


def _answer(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return response.to_wire()


def answers(query: dns.message.Message, response_wire: bytes) -> dns.message.Message | None:
    """The upstream response to ``query``, parsed; None when it is not one (malformed,
    another id, another question)."""
    try:
        response = dns.message.from_wire(response_wire)
    except (dns.exception.DNSException, ValueError):
        return None
    if response.id != query.id or not response.flags & dns.flags.QR \
            or response.question != query.question:
        return None
    return response


def learned(response_wire: bytes | dns.message.Message, asked: Question,
            min_ttl: int = 0) -> list[Learned]:
    """The names an upstream answer resolves, with their addresses and TTL.

    Follows CNAMEs from the question's name; each name on the chain gets the final A
    records. The TTL is the smallest on the way, raised to ``min_ttl``. A malformed answer,
    one for another question, or one without addresses teaches nothing.
    """
    if isinstance(response_wire, dns.message.Message):
        response = response_wire
    else:
        try:
            response = dns.message.from_wire(response_wire)
        except (dns.exception.DNSException, ValueError):
            return []
    if not response.question or normalize(response.question[0].name.to_text()) != asked.name \
            or response.rcode() != dns.rcode.NOERROR:
        return []
    cnames: dict[str, tuple[str, int]] = {}
    addresses: dict[str, tuple[set[ipaddress.IPv4Address], int]] = {}
    for rrset in response.answer:
        owner = normalize(rrset.name.to_text())
        if rrset.rdtype == dns.rdatatype.CNAME:
            cnames[owner] = (normalize(rrset[0].target.to_text()), rrset.ttl)
        elif rrset.rdtype == dns.rdatatype.A:
            ips, ttl = addresses.get(owner, (set(), rrset.ttl))
            ips |= {ipaddress.IPv4Address(rr.address) for rr in rrset}
            addresses[owner] = (ips, min(ttl, rrset.ttl))
    chain, name = [asked.name], asked.name
    link_ttls: list[int] = []
    while name in cnames and len(chain) <= len(cnames):
        name, link_ttl = cnames[name]
        link_ttls.append(link_ttl)
        chain.append(name)
    if name not in addresses:
        return []
    ips, a_ttl = addresses[name]
    ttl = max(min([a_ttl, *link_ttls]), min_ttl)
    found = tuple(sorted(ips))
    return [Learned(n, found, ttl) for n in dict.fromkeys(chain)]
