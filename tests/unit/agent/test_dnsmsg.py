"""The DNS proxy's decisions on single messages (pure): questions, verdicts, REFUSED, and what
an upstream answer teaches (CNAME chains, TTLs)."""

from __future__ import annotations

import ipaddress

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from services.nodeagent.dnsmsg import (
    Learned,
    Question,
    answers,
    learned,
    question,
    refused,
    servfail,
)

IP = ipaddress.IPv4Address


def query(name: str, rdtype: str = "A") -> bytes:
    return dns.message.make_query(name, rdtype).to_wire()


def response(name: str, *records: tuple[str, int, str, list[str]],
             rcode: int = dns.rcode.NOERROR) -> bytes:
    msg = dns.message.make_response(dns.message.make_query(name, "A"))
    msg.set_rcode(rcode)
    for owner, ttl, rdtype, data in records:
        msg.answer.append(dns.rrset.from_text_list(owner, ttl, "IN", rdtype, data))
    return msg.to_wire()


def test_a_query_gives_its_question_and_garbage_none() -> None:
    parsed = question(query("API.Example.com."))
    assert parsed is not None and parsed[1] == Question("api.example.com", dns.rdatatype.A)
    assert question(b"\x00\x01garbage") is None
    assert question(response("a.example.com.")) is None          # an answer is no query


def test_refused_and_servfail_answer_the_query_asked() -> None:
    parsed = question(query("www.example.com."))
    assert parsed is not None
    for make, rcode in ((refused, dns.rcode.REFUSED), (servfail, dns.rcode.SERVFAIL)):
        answer = dns.message.from_wire(make(parsed[0]))
        assert answer.rcode() == rcode and answer.id == parsed[0].id
        assert answer.question == parsed[0].question


def test_only_the_servers_answer_to_the_query_counts() -> None:
    parsed = question(query("api.example.com."))
    assert parsed is not None
    q = parsed[0]
    good = dns.message.make_response(q)
    assert answers(q, good.to_wire()) is not None
    other_id = dns.message.make_response(q)
    other_id.id = (q.id + 1) % 65536
    assert answers(q, other_id.to_wire()) is None
    assert answers(q, query("api.example.com.")) is None          # a query is no answer
    assert answers(q, response("www.example.com.")) is None       # another question
    assert answers(q, b"garbage") is None


def test_an_answer_teaches_every_name_of_the_chain_the_final_addresses() -> None:
    wire = response("www.example.com.",
                    ("www.example.com.", 300, "CNAME", ["edge.cdn.example.net."]),
                    ("edge.cdn.example.net.", 60, "A", ["203.0.113.40", "203.0.113.41"]))
    got = learned(wire, Question("www.example.com", dns.rdatatype.A))
    addrs = (IP("203.0.113.40"), IP("203.0.113.41"))
    assert got == [Learned("www.example.com", addrs, 60),
                   Learned("edge.cdn.example.net", addrs, 60)]
    # a minimum TTL raises short ones
    assert {lr.ttl for lr in learned(wire, Question("www.example.com", 1), min_ttl=600)} == {600}


def test_an_answer_that_does_not_fit_teaches_nothing() -> None:
    asked = Question("api.example.com", dns.rdatatype.A)
    assert learned(b"junk", asked) == []
    assert learned(response("other.example.com.",
                            ("other.example.com.", 60, "A", ["203.0.113.9"])), asked) == []
    assert learned(response("api.example.com.", rcode=dns.rcode.NXDOMAIN), asked) == []
    # a chain that ends nowhere, or loops
    assert learned(response("api.example.com.",
                            ("api.example.com.", 60, "CNAME", ["b.example.com."])), asked) == []
    assert learned(response("api.example.com.",
                            ("api.example.com.", 60, "CNAME", ["b.example.com."]),
                            ("b.example.com.", 60, "CNAME", ["api.example.com."])), asked) == []
