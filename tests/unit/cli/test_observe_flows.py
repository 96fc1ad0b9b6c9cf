"""`cilia observe`: the type filter, and how a DNS flow reads next to a datapath verdict."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner

from services.cli.agentcli import flow_matches, format_flow, observe
from services.common.contract import validate


def _l3_l4() -> dict[str, Any]:
    return {"time_ns": 5, "verdict": "DROPPED", "reason": 133, "reason_name": "policy denied",
            "direction": "ingress", "src_identity": 300, "dst_identity": 301,
            "src_ip": "10.0.1.5", "dst_ip": "10.0.1.6", "src_port": 4000, "dst_port": 5432,
            "proto": 6, "proto_name": "TCP", "ifindex": 7, "endpoint_id": 3, "tcp_flags": 2,
            "time": 1700000000.5, "src_pod": "shop/web-1", "dst_pod": "shop/db-1"}


def _dns(rcode: str, ips: list[str], verdict: str = "FORWARDED") -> dict[str, Any]:
    return {**_l3_l4(), "verdict": verdict, "reason": 0, "reason_name": "", "direction": "egress",
            "dst_identity": 2, "dst_ip": "10.96.0.10", "dst_port": 53, "dst_pod": "",
            "proto": 17, "proto_name": "UDP", "type": "dns",
            "dns": {"query": "api.example.com", "qtype": "A", "rcode": rcode, "ips": ips,
                    "ttl": 30 if ips else 0}}


def test_the_samples_follow_the_contract() -> None:
    for f in (_l3_l4(), _dns("NOERROR", ["203.0.113.20"]), _dns("REFUSED", [], "DROPPED")):
        validate("flow", {"node": "node1", "flows": [f]})


def test_a_flow_is_filtered_by_its_type() -> None:
    l4, dns = _l3_l4(), _dns("NOERROR", ["203.0.113.20"])
    assert flow_matches(dns, flow_type="dns") and not flow_matches(l4, flow_type="dns")
    assert flow_matches(l4, flow_type="l3_l4") and not flow_matches(dns, flow_type="l3_l4")
    assert flow_matches(dns) and flow_matches(l4)
    old = {k: v for k, v in l4.items() if k != "type"}     # from an agent without types
    assert flow_matches(old, flow_type="l3_l4")
    assert not flow_matches(dns, verdict="dropped", flow_type="dns")
    assert flow_matches(dns, pod="shop/web-1", flow_type="dns")


def test_a_dns_flow_says_what_was_asked_and_answered() -> None:
    assert format_flow(_dns("NOERROR", ["203.0.113.20", "203.0.113.21"])) == (
        "Nov 14 22:13:20.500: shop/web-1:4000 (ID:300) -> 10.96.0.10:53 (ID:2) egress "
        "FORWARDED (DNS query api.example.com A -> NOERROR 203.0.113.20,203.0.113.21 (ttl 30))")
    assert format_flow(_dns("REFUSED", [], "DROPPED")).endswith(
        "egress DROPPED (DNS query api.example.com A -> REFUSED)")
    # the columns before it are those of any other flow
    assert format_flow(_l3_l4()) == (
        "Nov 14 22:13:20.500: shop/web-1:4000 (ID:300) -> shop/db-1:5432 (ID:301) ingress "
        "DROPPED (policy denied, TCP)")


def test_observe_takes_type_and_protocol() -> None:
    for option in ("--type", "--protocol"):
        res = CliRunner().invoke(observe, [option, "nope"])
        assert res.exit_code == 2 and "'l3_l4', 'dns'" in res.output
