"""A DNS server a test controls: one name, whose address the test changes between lookups.

It listens in a pod's netns (:class:`~tests.support.netlab.UdpEcho` with a DNS answer for a
reply); every other name is NXDOMAIN.
"""

from __future__ import annotations

import time

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.support.netlab import UdpEcho


class FakeDns:
    """Answers ``name`` with ``address`` (settable) and ``ttl``."""

    def __init__(self, netns: str, ip: str, name: str, address: str, ttl: int) -> None:
        self.name, self.address, self.ttl = name, address, ttl
        self.queries = 0
        self.answered: dict[int, float] = {}   # query id -> when its answer was sent
        self._server = UdpEcho(netns, ip, 53, reply=self._answer)

    def _answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        q = query.question[0]
        self.queries += 1
        asked = q.name.to_text().rstrip(".").lower()
        if asked == self.name and q.rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text(
                q.name, self.ttl, dns.rdataclass.IN, dns.rdatatype.A, self.address))
        elif asked != self.name:
            response.set_rcode(dns.rcode.NXDOMAIN)
        self.answered[query.id] = time.perf_counter()
        return response.to_wire()

    def close(self) -> None:
        self._server.stop()
