"""Every event type validated whole: nested fields, value ranges, and its subject.

The reproductions of issue 10 (a bad value inside a valid envelope) are rejected with an error
naming the field; generated bad messages of every type are rejected, and decoding never fails
with anything but a codec error.
"""

from __future__ import annotations

import copy
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.codec import decode, encode
from services.common.contract import EVENTS, subject_family
from services.common.errors import CodecError, MalformedPayload
from tests.support.badmessages import VALID, Sample, bad_data, bad_payload, envelope

BY_TYPE: dict[str, Sample] = {}
for _s in VALID:
    BY_TYPE.setdefault(_s.type, _s)     # the first (fullest) sample of each type


def test_every_event_type_has_a_valid_sample() -> None:
    assert set(BY_TYPE) == set(EVENTS)


@pytest.mark.parametrize("sample", VALID, ids=lambda s: f"{s.type}@{s.subject}")
def test_valid_samples_round_trip_on_their_subject(sample: Sample) -> None:
    event = decode(encode(sample.type, sample.data), sample.subject or None)
    assert event.type == sample.type and event.data == sample.data
    assert event.payload is not None


def _data(event_type: str, **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BY_TYPE[event_type].data)
    data.update(changes)
    return data


@pytest.mark.parametrize("event_type, data, message", [
    # issue 10's reproductions
    ("ipcache.upsert", _data("ipcache.upsert", prefix="not-an-ip"),
     r"'not-an-ip' is not an IP prefix .* at `\$.prefix`"),
    ("lb.backend", _data("lb.backend", port=70000), r"<= 65535 - at `\$.port`"),
    ("identity.upsert", _data("identity.upsert", labels=[["k8s:app=web"]]),
     r"expected a label .*got list - at `\$.labels\[0\]`"),
    ("object.upsert", _data("object.upsert", object={
        **BY_TYPE["object.upsert"].data["object"],
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": ["web"]}}}),
     "object.metadata.labels.app: must be a string, got list"),
    # more values in range and shape
    ("ipcache.upsert", _data("ipcache.upsert", prefix="10.0.1.5/24"), "host bits set"),
    ("ipcache.upsert", _data("ipcache.upsert", identity=70000), "not an identity number"),
    ("ipcache.upsert", _data("ipcache.upsert", host_ip="300.1.1.1"),
     r"not an IPv4 address - at `\$.host_ip`"),
    ("identity.upsert", _data("identity.upsert", id=0), r">= 1 - at `\$.id`"),
    ("identity.upsert", _data("identity.upsert", labels=["app=web"]), "known source"),
    ("identity.upsert", _data("identity.upsert", labels=[]), "at least one label"),
    ("lb.backend", _data("lb.backend", address="10.0.1"), "not an IPv4 address"),
    ("lb.backend", _data("lb.backend", protocol="ICMP"), r"\$.protocol"),
    ("lb.service", _data("lb.service", service={**BY_TYPE["lb.service"].data["service"],
                                                 "cluster_ip": "nope"}),
     r"\$.service.cluster_ip"),
    ("lb.backends", _data("lb.backends", added=[["http", 0]]), r"\$.added\[0\]\[1\]"),
    ("policy.rules", _data("policy.rules", identity=0), r"\$.identity"),
    ("policy.rules", _data("policy.rules", ingress_enforced=False), "contradicts the rules"),
    ("policy.selector", _data("policy.selector", op="delta", members=None),
     "added: required by op"),
    ("policy.selector", _data("policy.selector", selector="xyz"), "not a selector id"),
    ("policy.status", _data("policy.status", op="error"), "error: required"),
    ("agent.realized", _data("agent.realized", identities={"x": 1}), "not an identity"),
    ("endpoint.upsert", _data("endpoint.upsert", endpoint_id=70000), r"\$.endpoint_id"),
    ("object.upsert", _data("object.upsert", name="other"), "does not match the event's name"),
    ("object.upsert", _data("object.upsert", kind="Secret"), "unsupported kind 'Secret'"),
    ("object.upsert", _data("object.upsert", namespace=""), "namespace is required"),
])
def test_a_bad_value_inside_is_rejected_naming_the_field(event_type: str,
                                                         data: dict[str, Any],
                                                         message: str) -> None:
    with pytest.raises(MalformedPayload, match=message):
        encode(event_type, data)
    with pytest.raises(MalformedPayload, match=message):
        decode(envelope(event_type, data))


def test_a_bad_rule_port_is_rejected() -> None:
    data = _data("policy.rules")
    data["rules"][0]["entries"][0]["ports"] = [[6, 90, 80, ""]]
    with pytest.raises(MalformedPayload, match=r"rules\[0\]: ports\[0\]: end_port 80 is "
                                               r"below port 90 - at `\$.entries\[0\]`"):
        encode("policy.rules", data)


def test_an_invalid_policy_passes_the_bus_for_its_owner_to_report() -> None:
    # The policy service answers a bad CiliumNetworkPolicy with a policy.status error naming
    # the field; the bus only checks that the object is the one its envelope names.
    data = _data("object.upsert", kind="CiliumNetworkPolicy", name="bad", object={
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "bad", "namespace": "shop"},
        "spec": {"endpointSelector": {"matchLabels": {"app": 1}}}})
    assert decode(encode("object.upsert", data),
                  "cilia.src.ciliumnetworkpolicy.shop.bad").data == data


def test_an_event_on_another_objects_subject_is_rejected() -> None:
    payload = encode("identity.upsert", BY_TYPE["identity.upsert"].data)
    with pytest.raises(MalformedPayload, match=r"belongs on cilia\.identity\.300, not on "
                                               r"cilia\.identity\.301"):
        decode(payload, "cilia.identity.301")
    pod = encode("object.upsert", BY_TYPE["object.upsert"].data)
    with pytest.raises(MalformedPayload, match=r"belongs on cilia\.src\.pod\.shop\.web-1"):
        decode(pod, "cilia.src.pod.shop.db")


def test_deeply_nested_objects_are_rejected() -> None:
    deep: Any = "x"
    for _ in range(100):
        deep = {"a": deep}
    data = _data("object.upsert")
    data["object"] = {**data["object"], "spec": {**data["object"]["spec"], "extra": deep}}
    with pytest.raises(MalformedPayload, match="nested deeper than 64 levels"):
        encode("object.upsert", data)
    head = b"".join(msgpack.packb(x) for x in ("v", 1, "type", "object.upsert", "data"))
    nested = b"\x83" + head + b"\x91" * 100_000 + b"\x01"    # 100,000 arrays deep
    with pytest.raises(CodecError):
        decode(nested)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_mutated_value_anywhere_is_rejected(data: st.DataObject) -> None:
    sample = data.draw(st.sampled_from(VALID))
    bad = data.draw(bad_data(sample))
    with pytest.raises(MalformedPayload):
        decode(envelope(sample.type, bad), sample.subject or None)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_decoding_anything_fails_only_with_a_codec_error(data: st.DataObject) -> None:
    sample = data.draw(st.sampled_from(VALID))
    kind, payload = data.draw(bad_payload(sample))
    try:
        event = decode(payload, sample.subject or None)
    except CodecError:
        return
    # What decodes is whole: it encodes again, unchanged.
    assert decode(encode(event.type, event.data), sample.subject or None) == event
    assert kind in ("other-type", "subject", "object"), kind   # may be valid after all


@given(st.binary(max_size=256))
def test_garbage_bytes_fail_with_a_codec_error(payload: bytes) -> None:
    with pytest.raises(CodecError):
        decode(payload)


@pytest.mark.parametrize("subject, family", [
    ("cilia.src.pod.shop.web", "cilia.src.pod"), ("cilia.identity.300", "cilia.identity"),
    ("cilia.ipcache.k8s.10-0-0-1_32", "cilia.ipcache.k8s"),
    ("cilia.policy.rules.300", "cilia.policy.rules"), ("cilia.lb.backend.9", "cilia.lb.backend"),
    ("cilia.agent.realized.node1", "cilia.agent.realized"),
    ("cilia.src.junk123.a.b", "cilia.src.other"), ("elsewhere.x", "other"),
])
def test_subject_families_are_few(subject: str, family: str) -> None:
    assert subject_family(subject) == family


@given(st.one_of(st.text(alphabet="0123456789./:ab \n", max_size=20),
                 st.builds("{}.{}.{}.{}/{}".format, *([st.integers(0, 300)] * 4),
                           st.integers(0, 40))))
def test_fast_address_checks_agree_with_ipaddress(text: str) -> None:
    import ipaddress

    from services.common.contract._types import Prefix as PrefixType
    from services.common.contract._types import check_ipv4, dec_hook

    def accepts(check: Any) -> bool:
        try:
            check()
        except ValueError:
            return False
        return True

    assert accepts(lambda: check_ipv4(text)) == accepts(lambda: ipaddress.IPv4Address(text))
    assert accepts(lambda: dec_hook(PrefixType, text)) == (
        "/" in text and accepts(lambda: ipaddress.ip_network(text, strict=True)))
