"""The cluster DNS zone (pure): names from the lb service's view, answers built with dnspython.

Names served (A records, IPv4 only):

- ``<svc>.<ns>.svc.cluster.local``: the Service's ClusterIP; a headless Service (no ClusterIP)
  answers with the addresses of its active backends;
- the lab's external host, for pod-to-external tests (:data:`EXTERNAL_RECORDS`):
  ``external.cilia.test`` (203.0.113.10) and ``world1..world3.cilia.test`` (203.0.113.11-13);
- anything else is NXDOMAIN: the lab has no internet to forward to (its "internet" is the
  external host), so the server is authoritative for every name, the way a resolver with no
  upstream but the cluster's would be; the AA flag is set only inside the served zones.

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

from services.lab.plan import WORLD_IPS
from services.lb.events import LbView

CLUSTER_DOMAIN = "cluster.local"
SERVICE_DOMAIN = f"svc.{CLUSTER_DOMAIN}"
EXTERNAL_DOMAIN = "cilia.test"
# the address `cilia.test` names point at: the lab's external host ("the world")
EXTERNAL_RECORDS: dict[str, tuple[str, ...]] = {
    f"external.{EXTERNAL_DOMAIN}": (str(WORLD_IPS[0]),),
    **{f"world{i}.{EXTERNAL_DOMAIN}": (str(ip),) for i, ip in enumerate(WORLD_IPS[1:], 1)},
}
ZONES = (CLUSTER_DOMAIN, EXTERNAL_DOMAIN)
# kube-dns's fixed ClusterIP (examples/kube-dns/kube-dns.yaml asks for it): every pod's
# resolv.conf names it before the Service exists, as the kubelet's --cluster-dns does
KUBE_DNS_IP = "10.96.0.10"
NDOTS = 5                       # Kubernetes' ndots: short and partial names try the search list
# glibc's per-query timeout and tries: the lab's DNS is one hop away, so a policy that drops
# DNS fails a lookup in seconds instead of glibc's default 5 s x 2 tries per search domain
RESOLV_TIMEOUT_S = 1
RESOLV_ATTEMPTS = 2
UDP_MIN_PAYLOAD = 512          # what every client accepts over UDP without EDNS
TTL_S = 5                       # short: ClusterIPs and backends change while tests run
BACKEND_ACTIVE = "active"

Zone = Mapping[str, tuple[str, ...]]   # lower-case FQDN without the trailing dot -> addresses


def service_name(namespace: str, name: str) -> str:
    """``<name>.<namespace>.svc.cluster.local``."""
    return f"{name}.{namespace}.{SERVICE_DOMAIN}"


def resolv_conf(namespace: str) -> str:
    """A pod's ``/etc/resolv.conf`` (what the kubelet writes for ClusterFirst pods)."""
    search = " ".join([f"{namespace}.{SERVICE_DOMAIN}", SERVICE_DOMAIN, CLUSTER_DOMAIN])
    return (f"nameserver {KUBE_DNS_IP}\nsearch {search}\noptions ndots:{NDOTS} "
            f"timeout:{RESOLV_TIMEOUT_S} attempts:{RESOLV_ATTEMPTS}\n")


def zone_from_view(view: LbView) -> dict[str, tuple[str, ...]]:
    """Every name the server answers, from the lb view plus the external host's names."""
    zone: dict[str, tuple[str, ...]] = dict(EXTERNAL_RECORDS)
    for sid, svc in view.services.items():
        if svc.get("cluster_ip"):
            addrs: tuple[str, ...] = (str(svc["cluster_ip"]),)
        else:   # headless: the backends themselves
            found = {str(view.backends[bid]["address"])
                     for _, bid in view.members.get(sid, set())
                     if bid in view.backends
                     and view.backends[bid].get("state", BACKEND_ACTIVE) == BACKEND_ACTIVE}
            addrs = tuple(sorted(found, key=ipaddress.IPv4Address))
        zone[service_name(svc["namespace"], svc["name"])] = addrs
    return zone


def _in_zones(name: str) -> bool:
    return any(name == z or name.endswith(f".{z}") for z in ZONES)


def answer(query: dns.message.Message, zone: Zone) -> dns.message.Message:
    """The response to one query (the first question is answered; others are ignored)."""
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
    if name not in zone or (not zone[name] and not _is_service(name)):
        response.set_rcode(dns.rcode.NXDOMAIN)
        return response
    if question.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY) and zone[name]:
        response.answer.append(dns.rrset.from_text_list(
            question.name, TTL_S, dns.rdataclass.IN, dns.rdatatype.A, list(zone[name])))
    return response


def _is_service(name: str) -> bool:
    return name.endswith(f".{SERVICE_DOMAIN}")


def respond(wire: bytes, zone: Zone, udp: bool = False) -> bytes | None:
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
    response = answer(query, zone)
    if not udp:
        return response.to_wire()
    limit = max(query.payload, UDP_MIN_PAYLOAD) if query.edns >= 0 else UDP_MIN_PAYLOAD
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        response.answer.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)


__all__ = ["CLUSTER_DOMAIN", "EXTERNAL_RECORDS", "KUBE_DNS_IP", "SERVICE_DOMAIN", "answer",
           "resolv_conf", "respond", "service_name", "zone_from_view"]
