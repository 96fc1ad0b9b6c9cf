"""The cluster DNS zone (pure): names from the lb service's view, answers built with dnspython.

Names served (A records, IPv4 only):

- ``<svc>.<ns>.svc.cluster.local``: the Service's ClusterIP; a headless Service (no ClusterIP)
  answers with the addresses of its active backends;
- the lab's world (:class:`~services.common.world.World`: the external host's names such as
  ``external.cilia.test`` and ``api.example.com``, wildcards such as ``*.cdn.example.net``,
  and CNAMEs, whose chain is answered before the addresses, as a recursive resolver answers);
- anything else is NXDOMAIN: the lab has no internet to forward to (its "internet" is the
  external host), so the server answers for every name, the way a resolver with no upstream
  but the cluster's would; the AA flag is set only inside the served zones.

AAAA and other types of a known name answer NOERROR with no records (NODATA), as CoreDNS does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from services.common.clusterdns import CLUSTER_DOMAIN, SERVICE_DOMAIN, service_name
from services.common.world import DEFAULT_WORLD, EXTERNAL_DOMAIN, World
from services.lb.events import LbView

ZONES = (CLUSTER_DOMAIN, EXTERNAL_DOMAIN)
UDP_MIN_PAYLOAD = 512          # what every client accepts over UDP without EDNS
TTL_S = 5                       # short: ClusterIPs and backends change while tests run
WORLD_TTL_S = 60                # the world's names change seldom (toFQDNs learns for as long)
BACKEND_ACTIVE = "active"

Zone = Mapping[str, tuple[str, ...]]   # lower-case FQDN without the trailing dot -> addresses


def zone_from_view(view: LbView) -> dict[str, tuple[str, ...]]:
    """The cluster's names (Services), from the lb view."""
    zone: dict[str, tuple[str, ...]] = {}
    for sid, svc in view.services.items():
        if svc.cluster_ip:
            addrs: tuple[str, ...] = (str(svc.cluster_ip),)
        else:   # headless: the backends themselves
            found = {str(be.address) for _, bid in view.members.get(sid, set())
                     if (be := view.backends.get(bid)) is not None
                     and (be.state or BACKEND_ACTIVE) == BACKEND_ACTIVE}
            addrs = tuple(sorted(found, key=ipaddress.IPv4Address))
        zone[service_name(svc.namespace, svc.name)] = addrs
    return zone


def _in_zones(name: str) -> bool:
    return any(name == z or name.endswith(f".{z}") for z in ZONES)


def answer(query: dns.message.Message, zone: Zone,
           world: World = DEFAULT_WORLD) -> dns.message.Message:
    """The response to one query (the first question is answered; others are ignored): a
    cluster name from ``zone``, else a name of the lab's ``world``."""
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    response.flags &= ~dns.flags.RA
    if query.opcode() != dns.opcode.QUERY or not query.question:
        response.set_rcode(dns.rcode.NOTIMP if query.question else dns.rcode.FORMERR)
        return response
    question = query.question[0]
    name = question.name.to_text(omit_final_dot=True).lower()
    if not _in_zones(name):
        response.flags &= ~dns.flags.AA
    wants_a = question.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY)
    if name in zone and (zone[name] or _is_service(name)):
        if wants_a and zone[name]:
            response.answer.append(dns.rrset.from_text_list(
                question.name, TTL_S, dns.rdataclass.IN, dns.rdatatype.A, list(zone[name])))
        return response
    found = None if _is_service(name) else world.resolve(name)
    if found is None:
        response.set_rcode(dns.rcode.NXDOMAIN)
        return response
    owner = question.name
    for _, target in found.chain:
        target_name = dns.name.from_text(target)
        response.answer.append(dns.rrset.from_text_list(
            owner, WORLD_TTL_S, dns.rdataclass.IN, dns.rdatatype.CNAME,
            [target_name.to_text()]))
        owner = target_name
    if wants_a and found.addresses:
        response.answer.append(dns.rrset.from_text_list(
            owner, WORLD_TTL_S, dns.rdataclass.IN, dns.rdatatype.A,
            [str(a) for a in found.addresses]))
    return response


def _is_service(name: str) -> bool:
    return name.endswith(f".{SERVICE_DOMAIN}")


def respond(wire: bytes, zone: Zone, udp: bool = False,
            world: World = DEFAULT_WORLD) -> bytes | None:
    """Wire-format query in, wire-format response out; None for garbage (dropped, as servers
    do with packets that are not DNS).

    Over UDP an answer larger than the client accepts (512 bytes, or its EDNS payload size)
    is sent truncated with TC set, and the client retries over TCP (RFC 1035, RFC 6891).
    """
    try:
        query = dns.message.from_wire(wire)
    except Exception:   # dnspython raises many kinds (FormError, ShortHeader, ...)
        return None
    if query.flags & dns.flags.QR:
        return None
    response = answer(query, zone, world)
    if not udp:
        return response.to_wire()
    limit = max(query.payload, UDP_MIN_PAYLOAD) if query.edns >= 0 else UDP_MIN_PAYLOAD
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        response.answer.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)


__all__ = ["CLUSTER_DOMAIN", "SERVICE_DOMAIN", "answer", "respond", "service_name",
           "zone_from_view"]
