"""Event schemas: per event type, the fields a payload must carry and their types.

The codec validates every payload against this table on encode and on decode. Field types are
Python types as msgpack decodes them (``list`` for arrays, ``dict`` for maps). Optional fields
may be absent or ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Current schema version of every payload. Decoders reject any other.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Schema:
    required: dict[str, type | tuple[type, ...]]
    optional: dict[str, type | tuple[type, ...]] = field(default_factory=dict)


SCHEMAS: dict[str, Schema] = {
    # Cluster objects entering the bus from a source (cilia apply, or a Kubernetes watcher).
    "object.upsert": Schema({"kind": str, "namespace": str, "name": str, "object": dict}),
    "object.delete": Schema({"kind": str, "namespace": str, "name": str},
                            {"object": dict}),
    # Identity service.
    "identity.upsert": Schema({"id": int, "labels": list}),
    "identity.delete": Schema({"id": int}, {"labels": list}),
    "ipcache.upsert": Schema({"prefix": str, "identity": int},
                             {"host_ip": str, "pod": str, "node": str, "revision": int}),
    "ipcache.delete": Schema({"prefix": str}, {"identity": int, "revision": int}),
    # Policy service. Per subject identity: its compiled rules (referring to selector ids).
    "policy.rules": Schema({"identity": int, "revision": int, "rules": list},
                           {"schema": int, "ingress_enforced": bool, "egress_enforced": bool}),
    # Per selector: "set" (whole member set, when it appears), "delta", or "delete".
    "policy.selector": Schema({"selector": str, "revision": int, "op": str},
                              {"members": list, "added": list, "removed": list,
                               "canonical": str, "selector_spec": dict}),
    # Per policy object: "set", "delete" or "error" (the previous version stays in force).
    "policy.status": Schema({"kind": str, "namespace": str, "name": str, "revision": int,
                             "op": str}, {"rules": int, "selectors": list, "error": str}),
    # Load balancer service (services/lb/events.py documents subjects and fields).
    "lb.service": Schema({"id": int, "service": dict}),
    "lb.service.delete": Schema({"id": int}, {"namespace": str, "name": str}),
    "lb.backend": Schema({"id": int, "address": str, "port": int, "protocol": str},
                         {"node": str, "pod": str, "state": str}),
    "lb.backend.delete": Schema({"id": int}),
    # Per service: membership delta of (port name, backend id) pairs ("op": "delta" or "set").
    "lb.backends": Schema({"service": int, "added": list, "removed": list}, {"op": str}),
    "lb.status": Schema({"namespace": str, "name": str, "op": str}, {"error": str, "id": int}),
    # Node agents.
    "agent.realized": Schema({"node": str, "revision": int}, {"identities": dict}),
    # Per local endpoint (cilia.agent.endpoint.<node>.<ns>.<pod>): created by CNI ADD, gone.
    "endpoint.upsert": Schema({"node": str, "namespace": str, "pod": str, "ip": str,
                               "endpoint_id": int, "container_id": str}),
    "endpoint.delete": Schema({"node": str, "namespace": str, "pod": str}),
    "flow": Schema({"node": str, "flows": list}),
}

# Heartbeat replies (core NATS request/reply, never stored).
SCHEMAS["service.status"] = Schema(
    {"service": str, "replica": str, "pid": int, "state": str, "uptime_s": (int, float)},
    {"stats": dict, "node": str})
