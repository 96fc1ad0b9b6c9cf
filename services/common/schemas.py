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
                             {"host_ip": str, "pod": str, "node": str}),
    "ipcache.delete": Schema({"prefix": str}, {"identity": int}),
    # Policy service.
    "policy.rules": Schema({"subject": int, "revision": int, "rules": list}),
    "policy.selector": Schema({"selector": str, "revision": int, "added": list,
                               "removed": list}, {"spec": dict}),
    "policy.status": Schema({"kind": str, "namespace": str, "name": str, "revision": int,
                             "status": str}, {"error": str}),
    # Load balancer service.
    "lb.service": Schema({"id": int, "service": dict}),
    "lb.service.delete": Schema({"id": int}),
    "lb.backends": Schema({"service": int, "added": list, "removed": list}),
    # Node agents.
    "agent.realized": Schema({"node": str, "revision": int}, {"identities": dict}),
    "flow": Schema({"node": str, "flows": list}),
}

# Heartbeat replies (core NATS request/reply, never stored).
SCHEMAS["service.status"] = Schema(
    {"service": str, "replica": str, "pid": int, "state": str, "uptime_s": (int, float)},
    {"stats": dict, "node": str})
