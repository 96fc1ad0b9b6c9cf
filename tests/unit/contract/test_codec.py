"""The msgpack codec: pure round trips and typed rejections."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.codec import decode, encode
from services.common.errors import MalformedPayload, UnknownSchemaVersion
from services.common.schemas import SCHEMA_VERSION

LABEL_KEYS = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)
LABEL_VALUES = st.from_regex(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?)?", fullmatch=True)


@given(num=st.integers(min_value=1, max_value=65535),
       labels=st.lists(st.builds("k8s:{}={}".format, LABEL_KEYS, LABEL_VALUES), min_size=1,
                       max_size=10))
def test_identity_event_round_trip(num: int, labels: list[str]) -> None:
    event = decode(encode("identity.upsert", {"id": num, "labels": labels}),
                   f"cilia.identity.{num}")
    assert event.type == "identity.upsert"
    assert event.data == {"id": num, "labels": labels}


def test_object_event_round_trip_keeps_nested_maps() -> None:
    obj = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "a", "namespace": "default", "labels": {"x": "1"}},
           "spec": {"containers": [{"name": "c", "image": "i", "extra": {"deep": [1, 2]}}]}}
    data = {"kind": "Pod", "namespace": "default", "name": "a", "object": obj}
    assert decode(encode("object.upsert", data), "cilia.src.pod.default.a").data == data


def test_unknown_version_is_rejected_with_a_clear_error() -> None:
    payload = msgpack.packb({"v": SCHEMA_VERSION + 1, "type": "identity.upsert",
                             "data": {"id": 1, "labels": []}})
    with pytest.raises(UnknownSchemaVersion, match="schema version 2 is not supported"):
        decode(payload)


@pytest.mark.parametrize("payload, message", [
    (b"\xc1garbage", "not a msgpack payload"),
    (msgpack.packb([1, 2]), "payload must be a map"),
    (msgpack.packb({"v": SCHEMA_VERSION, "type": "nope", "data": {}}), "unknown event type"),
    (msgpack.packb({"v": SCHEMA_VERSION, "type": "identity.upsert", "data": {"id": 1}}),
     "missing field `labels`"),
    (msgpack.packb({"v": SCHEMA_VERSION, "type": "identity.upsert",
                    "data": {"id": "1", "labels": []}}), r"Expected `int`, got `str` - at `\$.id`"),
    (msgpack.packb({"v": SCHEMA_VERSION, "type": "identity.upsert",
                    "data": {"id": 300, "labels": ["k8s:app=a"], "extra": 1}}),
     "unknown field `extra`"),
])
def test_malformed_payloads_are_rejected(payload: bytes, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message):
        decode(payload)


def test_encode_validates_before_anything_is_sent() -> None:
    with pytest.raises(MalformedPayload, match=r"identity.upsert: Expected `int`, got `bool`"):
        encode("identity.upsert", {"id": True, "labels": ["k8s:a=b"]})


def test_a_decoded_payload_is_published_again_as_the_same_bytes() -> None:
    """Typed payloads hold the contract's checked strings; a consumer that republishes one
    (a resync) sends what it received."""
    wire = encode("ipcache.upsert", {"prefix": "10.0.0.1/32", "identity": 300,
                                     "host_ip": "172.31.0.1", "pod": "default/a"})
    event = decode(wire, "cilia.ipcache.k8s.10-0-0-1_32")
    assert encode(event.type, event.payload) == wire
