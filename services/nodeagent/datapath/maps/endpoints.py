"""The endpoints map (``lib/endpoints.h``): hash, local pod IPv4 -> identity, host-veth
ifindex, endpoint id, enforcement flags.

Written by the agent for the pods of its node; the veth programs read it for the endpoint's
own identity, whether it enforces policy in each direction, and which veth its packets must
come from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from services.nodeagent.datapath._byteorder import be32_to_ip
from services.nodeagent.datapath.errors import EncodeError
from services.nodeagent.datapath.maps._codec import (
    U16_MAX,
    U32_MAX,
    address,
    check_range,
    encode_all,
)
from services.nodeagent.datapath.maps.spec import (
    GROUP_NODE,
    FlatContext,
    FlatMap,
    MapSpec,
    Renderer,
    Row,
    Twin,
    u8,
    u16,
    u32,
)
from services.nodeagent.datapath.maps.view import ReconciledMap
from services.nodeagent.datapath.reconciler import ReconcileResult

NAME = "endpoints"
MAX_ENTRIES = 4096
# endpoint_value.flags (lib/endpoints.h)
ENDPOINT_F_ENFORCE_INGRESS = 0x1
ENDPOINT_F_ENFORCE_EGRESS = 0x2
ENDPOINT_F_DNS_PROXY = 0x4       # its DNS queries go through the node's DNS proxy


# struct endpoint_key (lib/endpoints.h)
class EndpointKey(Twin):
    C_STRUCT, C_HEADER = "endpoint_key", "endpoints.h"
    _fields_ = (("addr", u32),)  # network byte order


# struct endpoint_value (lib/endpoints.h)
class EndpointValue(Twin):
    C_STRUCT, C_HEADER = "endpoint_value", "endpoints.h"
    _fields_ = (("identity", u32), ("ifindex", u32), ("endpoint_id", u16), ("flags", u8),
                ("pad", u8))


class EndpointEntry(NamedTuple):
    """A local endpoint, keyed by its pod IPv4."""

    endpoint_id: int
    identity: int
    ifindex: int = 0            # host-side veth ifindex in the node namespace; 0 = no check
    enforce_ingress: bool = False
    enforce_egress: bool = False
    dns_proxy: bool = False     # its DNS queries go through the node's DNS proxy


def _key(ip: str) -> bytes:
    return EndpointKey(addr=address(f"endpoint {ip!s}", ip, "ip")).to_bytes()


def _entry(ip: str, entry: EndpointEntry) -> tuple[bytes, bytes]:
    what = f"endpoint {ip!s}"
    key = _key(ip)
    check_range(what, "endpoint_id", entry.endpoint_id, 0, U16_MAX)
    check_range(what, "identity", entry.identity, 1, U32_MAX)
    check_range(what, "ifindex", entry.ifindex, 0, U32_MAX)
    flags = ((ENDPOINT_F_ENFORCE_INGRESS if entry.enforce_ingress else 0)
             | (ENDPOINT_F_ENFORCE_EGRESS if entry.enforce_egress else 0)
             | (ENDPOINT_F_DNS_PROXY if entry.dns_proxy else 0))
    val = EndpointValue(identity=entry.identity, ifindex=entry.ifindex,
                        endpoint_id=entry.endpoint_id, flags=flags)
    return key, val.to_bytes()


def encode_endpoints(desired: Mapping[str, EndpointEntry],
                     errors: list[EncodeError] | None = None) -> dict[bytes, bytes]:
    """Local endpoints (pod IPv4 -> entry) as map bytes.

    Args:
        errors: collect malformed entries here and leave them out (else the first raises).
    """
    return encode_all(desired, _entry, errors)


def endpoint_keys(ips: Iterable[str]) -> list[bytes]:
    """The map keys of some endpoint addresses (to scope an incremental reconcile)."""
    return [_key(ip) for ip in ips]


def decode_endpoints(raw: Mapping[bytes, bytes]) -> dict[str, EndpointEntry]:
    out: dict[str, EndpointEntry] = {}
    for kb, vb in raw.items():
        key = EndpointKey.from_buffer_copy(kb)
        val = EndpointValue.from_buffer_copy(vb)
        out[be32_to_ip(key.addr)] = EndpointEntry(
            val.endpoint_id, val.identity, val.ifindex,
            bool(val.flags & ENDPOINT_F_ENFORCE_INGRESS),
            bool(val.flags & ENDPOINT_F_ENFORCE_EGRESS),
            bool(val.flags & ENDPOINT_F_DNS_PROXY))
    return out


class EndpointMap(ReconciledMap):
    """local pod IPv4 -> endpoint id, identity, ifindex, enforcement flags."""

    def reconcile(self, desired: Mapping[str, EndpointEntry],
                  ips: Iterable[str] | None = None) -> ReconcileResult:
        """Make the endpoints map hold exactly ``desired`` (pod IP -> entry).

        With ``ips``, only those addresses are reconciled (absent from ``desired``: deleted).
        """
        keys = None if ips is None else endpoint_keys(ips)
        return self.write(encode_endpoints, desired, keys=keys)

    def entries(self) -> dict[str, EndpointEntry]:
        return decode_endpoints(self.reconciler.backend.read_all())


def rows(view: EndpointMap) -> list[Row]:
    return [{"ipv4": ip, "id": e.endpoint_id, "identity": e.identity, "ifindex": e.ifindex,
             "enforce_ingress": e.enforce_ingress, "enforce_egress": e.enforce_egress}
            for ip, e in sorted(view.entries().items(), key=lambda kv: kv[1].endpoint_id)]


def cells(r: Row) -> list[Any]:
    enforced = [d for d in ("ingress", "egress") if r[f"enforce_{d}"]]
    return [r["ipv4"], f"id={r['id']} sec_id={r['identity']} ifindex={r['ifindex']} "
            f"enforce={','.join(enforced) or 'none'}", r["node"]]


def flat(entries: Mapping[str, EndpointEntry], ctx: FlatContext) -> FlatMap:
    return {ip: {"pod": ctx.pods.get(ip, ""), "identity": e.identity,
                 "enforce_ingress": e.enforce_ingress, "enforce_egress": e.enforce_egress}
            for ip, e in sorted(entries.items())}


SPEC: MapSpec[EndpointMap] = MapSpec(
    name=NAME, header="endpoints.h", map_type="hash", key=EndpointKey, value=EndpointValue,
    max_entries=MAX_ENTRIES, cflags={"CILIA_ENDPOINTS_MAX": MAX_ENTRIES}, view=EndpointMap,
    group=GROUP_NODE, part=NAME,
    renderer=Renderer("endpoint", "The endpoints map (local pod IPv4 -> endpoint).",
                      "List each node's local endpoints, from the kernel.", rows,
                      ("IP ADDRESS", "LOCAL ENDPOINT INFO", "NODE"), cells,
                      numparse=False),
    flat=flat)
