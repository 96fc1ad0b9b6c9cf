"""A DNS server a test controls: one name, whose address the test changes between lookups.

It listens in a pod's netns (a socket made there) and answers from a thread of the test
process; every other name is NXDOMAIN.
"""

from __future__ import annotations

import socket
import threading
import time

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.support.netlab import in_netns


class FakeDns:
    """Answers ``name`` with ``address`` (settable) and ``ttl``."""

    def __init__(self, netns: str, ip: str, name: str, address: str, ttl: int) -> None:
        self.name, self.address, self.ttl = name, address, ttl
        self.queries = 0
        self.answered: dict[int, float] = {}   # query id -> when its answer was sent
        self._sock = in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        self._sock.bind((ip, 53))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, client = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            q = query.question[0]
            self.queries += 1
            if q.name.to_text().rstrip(".").lower() == self.name and q.rdtype == dns.rdatatype.A:
                response.answer.append(dns.rrset.from_text(
                    q.name, self.ttl, dns.rdataclass.IN, dns.rdatatype.A, self.address))
            elif q.name.to_text().rstrip(".").lower() != self.name:
                response.set_rcode(dns.rcode.NXDOMAIN)
            self._sock.sendto(response.to_wire(), client)
            self.answered[query.id] = time.perf_counter()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
