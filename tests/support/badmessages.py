"""Valid events of every type, and hypothesis strategies for bad ones.

:data:`VALID` holds at least one well-formed event per event type, on its subject (the round
trip test proves each one valid). :func:`bad_data` mutates a valid event's data so that its
schema must reject it: one value somewhere in it is replaced by a value of another type, or a
number by one out of every range, or a checked string by one of the known-bad strings. The
object inside ``object.upsert``/``object.delete`` and the free-form ``stats`` of a heartbeat
are left alone there (their own validators are tested apart). :func:`bad_payload` adds
garbage bytes, envelopes that are not ours, missing fields and valid events published on
another object's subject.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgpack
import msgspec
from hypothesis import strategies as st

from services.common.contract import (
    EVENTS,
    HISTORY_SUBJECTS,
    IPCACHE_SOURCE_CIDR,
    AgentEvent,
    ControlEvent,
    FlowEvent,
    IdentityEvent,
    IpcacheEvent,
    LbEvent,
    ObjectEvent,
    PolicyEvent,
    agent_endpoint_subject,
    agent_fqdn_subject,
    agent_realized_subject,
    flows_subject,
    identity_subject,
    ipcache_subject,
    lb_backend_subject,
    lb_members_subject,
    lb_service_subject,
    lb_status_subject,
    matches_any,
    policy_rules_subject,
    policy_selector_subject,
    policy_status_subject,
    source_subject,
)
from services.common.schemas import SCHEMA_VERSION

SEL = "0123456789abcdef"
SEL2 = "fedcba9876543210"


class Sample(NamedTuple):
    subject: str
    type: str
    data: dict[str, Any]


def _pod() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"nodeName": "node1", "containers": [
                {"name": "c", "image": "echo",
                 "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}]}]},
            "status": {"podIP": "10.0.1.5", "hostIP": "172.31.0.11"}}


def _rules(identity: int) -> dict[str, Any]:
    return {"schema": 1, "identity": identity, "revision": 12, "ingress_enforced": True,
            "egress_enforced": False,
            "rules": [{"kind": "CiliumNetworkPolicy", "namespace": "shop", "name": "allow",
                       "rule": 0, "subject": SEL, "default_deny_ingress": True,
                       "default_deny_egress": False,
                       "entries": [{"section": "ingress", "index": 0, "any_peer": False,
                                    "selectors": [SEL2], "ports": [[6, 80, 80, ""],
                                                                   [17, 0, 0, "dns"]],
                                    "fqdns": []}]}]}


def _service() -> dict[str, Any]:
    return {"namespace": "shop", "name": "web", "type": "NodePort", "cluster_ip": "10.96.0.10",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "node_port": 30080}],
            "external_ips": [], "lb_ips": [], "affinity_timeout": 0, "ext_local": False,
            "int_local": False}


def _flow() -> dict[str, Any]:
    return {"time_ns": 5, "verdict": "FORWARDED", "reason": 0, "reason_name": "policy",
            "direction": "ingress", "src_identity": 300, "dst_identity": 301,
            "src_ip": "10.0.1.5", "dst_ip": "10.0.1.6", "src_port": 4000, "dst_port": 80,
            "proto": 6, "proto_name": "TCP", "ifindex": 7, "endpoint_id": 3, "tcp_flags": 2,
            "time": 1700000000.5, "src_pod": "shop/web-1", "dst_pod": ""}


VALID: list[Sample] = [
    Sample(source_subject("Pod", "shop", "web-1"), ObjectEvent.UPSERT,
           {"kind": "Pod", "namespace": "shop", "name": "web-1", "object": _pod()}),
    Sample(source_subject("Namespace", "", "shop"), ObjectEvent.UPSERT,
           {"kind": "Namespace", "namespace": "", "name": "shop",
            "object": {"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": "shop", "labels": {"team": "a"}}}}),
    Sample(source_subject("Node", "", "node1"), ObjectEvent.UPSERT,
           {"kind": "Node", "namespace": "", "name": "node1",
            "object": {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"},
                       "spec": {"podCIDR": "10.0.1.0/24"},
                       "status": {"addresses": [{"type": "InternalIP",
                                                 "address": "172.31.0.11"}]}}}),
    Sample(source_subject("CiliumNetworkPolicy", "shop", "allow"), ObjectEvent.UPSERT,
           {"kind": "CiliumNetworkPolicy", "namespace": "shop", "name": "allow",
            "object": {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                       "metadata": {"name": "allow", "namespace": "shop"},
                       "spec": {"endpointSelector": {}}}}),
    Sample(source_subject("Pod", "shop", "web-1"), ObjectEvent.DELETE,
           {"kind": "Pod", "namespace": "shop", "name": "web-1"}),
    Sample(identity_subject(300), IdentityEvent.UPSERT,
           {"id": 300, "labels": ["k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop"]}),
    Sample(identity_subject(2), IdentityEvent.UPSERT, {"id": 2, "labels": ["reserved:world"]}),
    Sample(identity_subject(300), IdentityEvent.DELETE, {"id": 300, "labels": ["k8s:app=web"]}),
    Sample(ipcache_subject("10.0.1.5/32"), IpcacheEvent.UPSERT,
           {"prefix": "10.0.1.5/32", "identity": 300, "host_ip": "172.31.0.11",
            "pod": "shop/web-1", "node": "node1"}),
    Sample(ipcache_subject("10.0.0.0/8", IPCACHE_SOURCE_CIDR), IpcacheEvent.UPSERT,
           {"prefix": "10.0.0.0/8", "identity": (1 << 24) + 7, "revision": 4}),
    Sample(ipcache_subject("10.0.1.5/32"), IpcacheEvent.DELETE,
           {"prefix": "10.0.1.5/32", "identity": 300}),
    Sample(policy_rules_subject(300), PolicyEvent.RULES, _rules(300)),
    Sample(policy_rules_subject(301), PolicyEvent.RULES,
           {"schema": 1, "identity": 301, "revision": 3, "ingress_enforced": False,
            "egress_enforced": False, "rules": []}),
    Sample(policy_selector_subject(SEL), PolicyEvent.SELECTOR,
           {"selector": SEL, "revision": 12, "op": "set", "canonical": "{any:app In (web)}",
            "selector_spec": {"id": SEL, "matchExpressions": [
                {"key": "any:app", "operator": "In", "values": ["web"]}]},
            "members": [300, 301]}),
    Sample(policy_selector_subject(SEL2), PolicyEvent.SELECTOR,
           {"selector": SEL2, "revision": 13, "op": "delta", "added": [302], "removed": []}),
    Sample(policy_status_subject("CiliumNetworkPolicy", "shop", "allow"), PolicyEvent.STATUS,
           {"kind": "CiliumNetworkPolicy", "namespace": "shop", "name": "allow",
            "revision": 12, "op": "set", "rules": 1, "selectors": [SEL, SEL2]}),
    Sample(lb_service_subject("shop", "web"), LbEvent.SERVICE, {"id": 4, "service": _service()}),
    Sample(lb_service_subject("shop", "web"), LbEvent.SERVICE_DELETE,
           {"id": 4, "namespace": "shop", "name": "web"}),
    Sample(lb_backend_subject(9), LbEvent.BACKEND,
           {"id": 9, "address": "10.0.1.5", "port": 8080, "protocol": "TCP", "node": "node1",
            "pod": "shop/web-1", "state": "active"}),
    Sample(lb_backend_subject(9), LbEvent.BACKEND_DELETE, {"id": 9}),
    Sample(lb_members_subject(4), LbEvent.MEMBERS,
           {"service": 4, "op": "delta", "added": [["http", 9]], "removed": []}),
    Sample(lb_status_subject("shop", "web"), LbEvent.STATUS,
           {"namespace": "shop", "name": "web", "op": "ok", "id": 4}),
    Sample(agent_realized_subject("node1"), AgentEvent.REALIZED,
           {"node": "node1", "revision": 40, "identities": {"300": 12}}),
    Sample(agent_endpoint_subject("node1", "shop", "web-1"), AgentEvent.ENDPOINT_UPSERT,
           {"node": "node1", "namespace": "shop", "pod": "web-1", "ip": "10.0.1.5",
            "endpoint_id": 3, "container_id": "abc"}),
    Sample(agent_endpoint_subject("node1", "shop", "web-1"), AgentEvent.ENDPOINT_DELETE,
           {"node": "node1", "namespace": "shop", "pod": "web-1"}),
    Sample(agent_fqdn_subject("node1", "api.example.com"), AgentEvent.FQDN_NAMES,
           {"node": "node1", "name": "api.example.com", "endpoints": ["shop/web-1"],
            "addresses": [{"ip": "203.0.113.20", "ttl": 30, "expires": 1700000030.5}]}),
    Sample(flows_subject("node1"), FlowEvent.FLOW, {"node": "node1", "flows": [_flow()]}),
    Sample(flows_subject("node1"), FlowEvent.FLOW, {"node": "node1", "flows": [{
        **_flow(), "type": "dns", "dns": {"query": "api.example.com", "qtype": "A",
                                           "rcode": "NOERROR", "ips": ["203.0.113.20"],
                                           "ttl": 30}}]}),
    Sample("", ControlEvent.STATUS,
           {"service": "policy", "replica": "h-1", "pid": 42, "state": "ok", "uptime_s": 3.5,
            "stats": {"rejected": 0}}),
]

# Where a mutation would not make a payload bad: free-form parts checked elsewhere.
_FREE = {(ObjectEvent.UPSERT, "object"), (ObjectEvent.DELETE, "object"),
         (ControlEvent.STATUS, "stats")}
_OTHER_TYPES: dict[type, list[Any]] = {
    int: ["7", [7], {"n": 7}, True, 1.5, -1],   # every number a payload carries is >= 0
    float: ["1.5", [1.5], {"t": 1}],
    str: [7, ["x"], {"x": "y"}, True],
    bool: [1, "true", [True]],
    list: ["x", 7, {"a": 1}],
    dict: ["x", 7, ["a"]],
}


def paths(data: Any, event_type: str, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``data`` a schema checks."""
    out: list[tuple[Any, ...]] = []
    if prefix and (event_type, prefix[0]) in _FREE:
        return out
    if prefix:
        out.append(prefix)
    if isinstance(data, dict):
        for key, value in data.items():
            out += paths(value, event_type, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += paths(value, event_type, (*prefix, i))
    return out


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        data = data[step]
    return data


def _replace(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    """``data`` with the value at ``path`` replaced; only the containers on the path are
    copied (a whole copy of a large object per draw is what made drawing slow)."""
    if not path:
        return value
    step, rest = path[0], path[1:]
    copied = dict(data) if isinstance(data, dict) else list(data)
    copied[step] = _replace(data[step], rest, value)
    return copied


_PATHS: dict[int, tuple[Any, list[tuple[Any, ...]]]] = {}


def _paths_of(data: Any, event_type: str) -> list[tuple[Any, ...]]:
    """:func:`paths`, remembered per object (the samples do not change)."""
    known = _PATHS.get(id(data))
    if known is None or known[0] is not data:
        known = (data, paths(data, event_type))
        _PATHS[id(data)] = known
    return known[1]


def _bad_values(old: Any) -> list[Any]:
    """Values that cannot stand where ``old`` stands (no schema field takes both)."""
    return _OTHER_TYPES[bool if isinstance(old, bool) else type(old)]


def required(event_type: str) -> list[str]:
    """The fields an event type's payload must carry."""
    return [f.encode_name for f in msgspec.structs.fields(EVENTS[event_type]) if f.required]


@functools.cache
def _index(n: int) -> st.SearchStrategy[int]:
    # One strategy per size: building a strategy per draw is what hypothesis spends most on.
    return st.integers(0, n - 1)


def _pick(draw: st.DrawFn, items: Sequence[Any]) -> Any:
    return items[draw(_index(len(items)))]


@st.composite
def bad_data(draw: st.DrawFn, sample: Sample) -> dict[str, Any]:
    """``sample``'s data with one checked value replaced by one its schema must reject."""
    return _bad_data(draw, sample)


def _bad_data(draw: st.DrawFn, sample: Sample) -> dict[str, Any]:
    choice = _pick(draw, _paths_of(sample.data, sample.type))
    value = _pick(draw, _bad_values(_get(sample.data, choice)))
    return dict(_replace(sample.data, choice, value))


def envelope(event_type: Any, data: Any, version: Any = SCHEMA_VERSION) -> bytes:
    return msgpack.packb({"v": version, "type": event_type, "data": data}, use_bin_type=True)


KINDS = ("mutated", "garbage", "alien", "version", "other-type", "missing", "subject",
         "object")


def _bad_object(draw: st.DrawFn, sample: Sample) -> dict[str, Any]:
    """``sample``'s data with one value inside its object replaced by one of another type
    (an object's own validator may or may not care: filter with the codec)."""
    obj = sample.data.get("object")
    inner = _paths_of(obj, "") if isinstance(obj, dict) else []
    if not inner:
        return dict(sample.data)
    choice = _pick(draw, inner)
    value = _pick(draw, _bad_values(_get(obj, choice)))
    return dict(_replace(sample.data, ("object", *choice), value))


@st.composite
def bad_payload(draw: st.DrawFn, sample: Sample) -> tuple[str, bytes]:
    """(kind of badness, bytes) that no consumer may apply on ``sample``'s subject."""
    return _bad_payload(draw, sample)


def _bad_payload(draw: st.DrawFn, sample: Sample) -> tuple[str, bytes]:
    kind = _pick(draw, _KIND_CHOICES[1 if "object" in sample.data else 0])
    if kind == "mutated":
        return kind, envelope(sample.type, _bad_data(draw, sample))
    if kind == "object":
        return kind, envelope(sample.type, _bad_object(draw, sample))
    if kind == "garbage":
        return kind, draw(_GARBAGE)
    if kind == "alien":     # a valid msgpack value that is no envelope of ours
        return kind, msgpack.packb(draw(_ALIEN))
    if kind == "version":
        return kind, envelope(sample.type, sample.data, _pick(draw, [0, 2, "1", None, True]))
    if kind == "other-type":    # another event type's data under this type
        other = _pick(draw, [s for s in VALID if s.type != sample.type])
        return kind, envelope(sample.type, other.data)
    if kind == "missing":
        field = _pick(draw, required(sample.type))
        return kind, envelope(sample.type,
                              {k: v for k, v in sample.data.items() if k != field})
    # a valid event of the same type about another object (or on another subject)
    other = _pick(draw, [s for s in VALID if s.type == sample.type
                         and s.subject != sample.subject] or [sample])
    return kind, envelope(other.type, other.data)


_KIND_CHOICES = (["mutated"] * 3 + list(KINDS[1:-1]),
                 ["mutated"] * 3 + list(KINDS[1:-1]) + ["object"] * 3)
_GARBAGE = st.binary(max_size=64)
_ALIEN = st.one_of(st.integers(-(2 ** 63), 2 ** 64 - 1), st.text(max_size=20),
                   st.lists(st.integers(0, 255), max_size=4),
                   st.dictionaries(st.text(max_size=5), st.integers(0, 1000), max_size=3))


def stored() -> list[Sample]:
    """The samples of event types the history stream stores (not replies or flows)."""
    return [s for s in VALID if matches_any(s.subject, HISTORY_SUBJECTS)]


BATCH = 50     # messages drawn per hypothesis example (its per-example cost dominates)


def generate(bases: list[Sample], count: int, seed: int = 0) -> list[tuple[str, str, bytes]]:
    """``count`` messages (subject, kind, bytes) that the codec rejects on their subject,
    drawn by hypothesis from ``bases`` (real events of a cluster, and :data:`VALID`)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    from services.common.codec import decode
    from services.common.errors import CodecError

    out: list[tuple[str, str, bytes]] = []

    @st.composite
    def message(draw: st.DrawFn) -> tuple[str, str, bytes]:
        base = _pick(draw, bases)
        kind, payload = _bad_payload(draw, base)
        return base.subject, kind, payload

    def run(seed: int) -> None:
        @hseed(seed)
        @settings(max_examples=count * 6 // 5 // BATCH + 1, database=None, deadline=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(st.lists(message(), min_size=BATCH, max_size=BATCH))
        def draw(batch: list[tuple[str, str, bytes]]) -> None:
            for subject, kind, payload in batch:
                try:
                    decode(payload, subject)
                except CodecError:
                    if len(out) < count:
                        out.append((subject, kind, payload))

        draw()

    while len(out) < count:     # a few drawn messages were valid after all: draw again
        run(seed)
        seed += 1
    return out
