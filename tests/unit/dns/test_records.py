"""The DNS zone and answers (pure): names from the lb view, NXDOMAIN, REFUSED, headless."""

from __future__ import annotations

from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
from hypothesis import given
from hypothesis import strategies as st

from services.common.clusterdns import KUBE_DNS_IP, resolv_conf
from services.common.contract import validate
from services.dns.records import answer, respond, service_name, zone_from_view
from services.lb.events import LbView


def fold(v: LbView, event_type: str, data: dict[str, Any]) -> None:
    v.apply(validate(event_type, data))


def service(name: str, cluster_ip: str) -> dict[str, Any]:
    return {"namespace": "prod", "name": name, "type": "ClusterIP", "cluster_ip": cluster_ip,
            "ports": [], "external_ips": [], "lb_ips": [], "affinity_timeout": 0,
            "ext_local": False, "int_local": False}


def view() -> LbView:
    v = LbView()
    fold(v, "lb.service", {"id": 1, "service": service("web", "10.96.0.20")})
    fold(v, "lb.service", {"id": 2, "service": service("db", "")})
    for bid, ip, state in ((7, "10.244.1.9", "active"), (8, "10.244.2.3", "active"),
                           (9, "10.244.2.4", "terminating")):
        fold(v, "lb.backend", {"id": bid, "address": ip, "port": 5432, "protocol": "TCP",
                               "state": state})
    fold(v, "lb.backends", {"service": 2, "op": "delta",
                            "added": [["", 7], ["", 8], ["", 9]], "removed": []})
    return v


def ask(name: str, rdtype: str = "A") -> dns.message.Message:
    return answer(dns.message.make_query(name, rdtype), zone_from_view(view()))


def addresses(resp: dns.message.Message) -> list[str]:
    return sorted(rr.to_text() for rrset in resp.answer for rr in rrset)


def test_service_name_answers_its_cluster_ip() -> None:
    resp = ask("web.prod.svc.cluster.local.")
    assert resp.rcode() == dns.rcode.NOERROR and resp.flags & dns.flags.AA
    assert addresses(resp) == ["10.96.0.20"]
    assert addresses(ask("WEB.Prod.svc.cluster.local.")) == ["10.96.0.20"]


def test_headless_service_answers_its_active_backends() -> None:
    assert addresses(ask("db.prod.svc.cluster.local.")) == ["10.244.1.9", "10.244.2.3"]


def test_external_host_names() -> None:
    assert addresses(ask("external.cilia.test.")) == ["203.0.113.10"]
    assert addresses(ask("world2.cilia.test.")) == ["203.0.113.12"]


def test_unknown_names_are_nxdomain_everywhere() -> None:
    assert ask("nope.prod.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
    assert ask("web.other.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
    assert ask("nope.cilia.test.").rcode() == dns.rcode.NXDOMAIN
    outside = ask("example.com.")
    assert outside.rcode() == dns.rcode.NXDOMAIN and not outside.flags & dns.flags.AA


def test_known_name_other_type_is_nodata() -> None:
    resp = ask("web.prod.svc.cluster.local.", "AAAA")
    assert resp.rcode() == dns.rcode.NOERROR and not resp.answer


def test_deleted_service_disappears() -> None:
    v = view()
    fold(v, "lb.service.delete", {"id": 1, "namespace": "prod", "name": "web"})
    zone = zone_from_view(v)
    assert service_name("prod", "web") not in zone
    resp = answer(dns.message.make_query("web.prod.svc.cluster.local.", "A"), zone)
    assert resp.rcode() == dns.rcode.NXDOMAIN


def test_wire_round_trip_keeps_the_query_id() -> None:
    query = dns.message.make_query("web.prod.svc.cluster.local.", "A")
    raw = respond(query.to_wire(), zone_from_view(view()))
    assert raw is not None
    resp = dns.message.from_wire(raw)
    assert resp.id == query.id and addresses(resp) == ["10.96.0.20"]


@given(st.binary(max_size=64))
def test_garbage_is_dropped_never_raises(data: bytes) -> None:
    out = respond(data, zone_from_view(view()))
    assert out is None or dns.message.from_wire(out).flags & dns.flags.QR


def test_resolv_conf_names_kube_dns_and_the_search_list() -> None:
    text = resolv_conf("prod")
    assert f"nameserver {KUBE_DNS_IP}\n" in text
    assert "search prod.svc.cluster.local svc.cluster.local cluster.local\n" in text
    assert "options ndots:5 timeout:1 attempts:2\n" in text


def test_large_udp_answers_are_truncated_and_complete_over_tcp() -> None:
    v = view()
    for i in range(60):
        fold(v, "lb.backend", {"id": 100 + i, "address": f"10.244.3.{i + 1}", "port": 5432,
                               "protocol": "TCP", "state": "active"})
        fold(v, "lb.backends", {"service": 2, "op": "delta", "added": [["", 100 + i]],
                                "removed": []})
    zone = zone_from_view(v)
    query = dns.message.make_query("db.prod.svc.cluster.local.", "A")
    udp = respond(query.to_wire(), zone, udp=True)
    assert udp is not None and len(udp) <= 512
    short = dns.message.from_wire(udp)
    assert short.flags & dns.flags.TC and not short.answer
    tcp = respond(query.to_wire(), zone)
    assert tcp is not None and len(addresses(dns.message.from_wire(tcp))) == 62
    big = dns.message.make_query("db.prod.svc.cluster.local.", "A", use_edns=0, payload=4096)
    full = respond(big.to_wire(), zone, udp=True)
    assert full is not None and len(addresses(dns.message.from_wire(full))) == 62
