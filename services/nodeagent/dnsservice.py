"""The node's DNS service for toFQDNs: each redirected query checked, forwarded, learned, and
its answer released only once the node's maps allow what it resolved to.

For one query from a local endpoint (:meth:`NodeDns.handle`):

1. The endpoint's policy decides (:func:`~services.nodeagent.dnspolicy.query_allowed`); a
   denied query is answered ``REFUSED`` (Cilium's default) and shows as a dropped DNS flow.
   An endpoint whose policy is not computed yet gets ``REFUSED`` too (fail closed).
2. An allowed one goes to the server the pod asked; its answer's names and addresses go into
   the node's cache (:class:`~services.nodeagent.fqdncache.FqdnCache`), and what changed is
   published (``fqdn.names``): the policy service makes the addresses members of the
   ``toFQDNs`` selectors that match the names, the agent writes them to its maps.
3. The answer is held until the node's maps (what the agent wrote) allow the endpoint to
   reach every address on the ports of the ``toFQDNs`` rules matching the name, so the first
   connection after the lookup is never dropped; after :data:`RELEASE_TIMEOUT_S` the pod gets
   ``SERVFAIL`` instead (its resolver asks again), never an answer the maps do not allow yet.

Addresses expire with their TTL plus the grace period, unless a connection to them is live
(:meth:`NodeDns.expire`, every :data:`EXPIRE_INTERVAL_S`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import dns.rcode
import dns.rdatatype
from prometheus_client import Counter, Histogram

from services.common.contract import FLOW_TYPE_DNS, FqdnNames
from services.common.identities import ID_WORLD
from services.common.policytypes import PROTO_NAMES, Direction
from services.common.tracing import tracer
from services.nodeagent import dnsmsg
from services.nodeagent.datapath.maps.ipcache import held_identity
from services.nodeagent.datapath.maps.policy import decide, held_block
from services.nodeagent.datapath.nodemaps import NodeMaps
from services.nodeagent.dnspolicy import PortProto, fqdn_ports, query_allowed, selects
from services.nodeagent.dnsproxy import DnsProxy, Query
from services.nodeagent.fqdncache import FqdnCache, min_ttl
from services.nodeagent.state import LocalEndpoint, NodeState

log = logging.getLogger(__name__)
_tracer = tracer("cilia.nodeagent")

PROXY_ENV = "CILIA_DNS_PROXY"      # "off": no DNS proxy (an agent in a netns it must not touch)
RELEASE_TIMEOUT_ENV = "CILIA_DNS_RELEASE_TIMEOUT_S"
RELEASE_TIMEOUT_S = 5.0     # an answer waits this long for the maps, then SERVFAIL
EXPIRE_INTERVAL_S = 1.0
VERDICT_FORWARDED = "FORWARDED"
VERDICT_DROPPED = "DROPPED"

QUERIES = Counter("cilia_dns_proxy_queries_total", "DNS queries the node's proxy answered",
                  ["node", "verdict", "rcode"])
RELEASE_SECONDS = Histogram("cilia_dns_proxy_release_seconds",
                            "From the upstream answer to its release (the maps allow it)",
                            ["node"], buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 5))


def dns_proxy_enabled() -> bool:
    return os.environ.get(PROXY_ENV, "on") != "off"


@dataclass
class _Hold:
    identity: int
    need: list[tuple[str, list[PortProto]]]
    done: asyncio.Future[None]


def maps_allow(maps: NodeMaps, identity: int, ip: str, ports: Iterable[PortProto]) -> bool:
    """Whether the maps the agent wrote give ``identity`` a verdict to reach ``ip`` on every
    port (an allow, or a deny that no learning can change)."""
    peer = held_identity(maps.ipcache, ip, ID_WORLD)
    lookup = held_block(maps.policy)
    return all(decide(lookup, identity, peer, Direction.EGRESS, proto, port) is not None
               for proto, port in ports)


class NodeDns:
    """The DNS proxy of one node and what it does with each query."""

    def __init__(self, node: str, netns: str | None, *,
                 state: Callable[[], NodeState], maps: Callable[[], NodeMaps | None],
                 endpoint_of: Callable[[str], LocalEndpoint | None],
                 publish: Callable[[FqdnNames], Awaitable[None]],
                 emit: Callable[[dict[str, Any]], None],
                 live_addresses: Callable[[], Awaitable[set[str]]],
                 port: int | None = None) -> None:
        self.node = node
        self.state, self.maps, self.endpoint_of = state, maps, endpoint_of
        self.publish, self.emit, self.live_addresses = publish, emit, live_addresses
        self.cache = FqdnCache(node)
        self.min_ttl = min_ttl()
        self.release_timeout = float(os.environ.get(RELEASE_TIMEOUT_ENV, RELEASE_TIMEOUT_S))
        self.proxy = DnsProxy(netns, self.handle) if port is None \
            else DnsProxy(netns, self.handle, port)
        self._holds: list[_Hold] = []
        self._expiry: asyncio.Task[None] | None = None
        self.stats = {"refused": 0, "released": 0, "release_timeouts": 0, "upstream_failed": 0}

    async def start(self, restored: Iterable[FqdnNames] = ()) -> None:
        for payload in restored:
            self.cache.restore(payload)
        await self.proxy.start()
        self._expiry = asyncio.create_task(self._expire_loop())

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            await asyncio.gather(self._expiry, return_exceptions=True)
        await self.proxy.stop()
        for hold in self._holds:
            if not hold.done.done():
                hold.done.cancel()

    # -- one query -----------------------------------------------------------------------

    async def handle(self, q: Query) -> bytes | None:
        ep = self.endpoint_of(q.client[0])
        parsed = dnsmsg.question(q.wire)
        if ep is None or parsed is None:
            return None     # not a local endpoint's query, or not a query: nothing to say
        query, question = parsed
        state = self.state()
        ident = state.endpoint_identity(ep)
        sp = state.subjects.get(ident)
        maps = self.maps()
        server = held_identity(maps.ipcache, q.server[0], ID_WORLD) if maps else ID_WORLD
        flow = _Flow(self, q, ep, ident, server, question)
        if not state.policy_computed(ident) or maps is None \
                or not query_allowed(sp, state.members, server, q.proto, question.name):
            self.stats["refused"] += 1
            flow.emit(VERDICT_DROPPED, "REFUSED")
            return dnsmsg.refused(query)
        response = await self.proxy.forward(q)
        parsed_response = dnsmsg.answers(query, response) if response is not None else None
        if response is None or parsed_response is None:
            self.stats["upstream_failed"] += 1
            flow.emit(VERDICT_FORWARDED, "SERVFAIL")
            return dnsmsg.servfail(query)
        rcode = dns.rcode.to_text(parsed_response.rcode())
        learned = dnsmsg.learned(parsed_response, question, self.min_ttl)
        # only the names a toFQDNs selector of the endpoint matches are worth keeping
        selected = [item for item in learned if selects(sp, item.name)]
        if selected:
            # one trace from the answer to the maps: the policy service and the agent's patch
            # continue it from the fqdn.names event
            with _tracer.start_as_current_span(
                    "dns answer", attributes={"dns.name": question.name, "cilia.pod": ep.pod,
                                              "cilia.node": self.node}):
                for payload in self.cache.learn(selected, ep.pod, time.time()):
                    await self.publish(payload)
                need = [(str(ip), ports) for item in selected
                        if (ports := fqdn_ports(sp, item.name)) for ip in item.addresses]
                if need and not await self._released(ident, need):
                    self.stats["release_timeouts"] += 1
                    flow.emit(VERDICT_FORWARDED, "SERVFAIL")
                    return dnsmsg.servfail(query)
        ips = sorted({str(ip) for item in learned for ip in item.addresses})
        flow.emit(VERDICT_FORWARDED, rcode, ips, min((i.ttl for i in learned), default=0))
        return response

    def pod_of(self, ip: str) -> str:
        """The pod behind a pod address ("" for another address)."""
        rec = self.state().ipcache.get(f"{ip}/32")
        return rec.pod if rec is not None and rec.pod else ""

    # -- release after the maps allow ------------------------------------------------------

    def _ready(self, hold: _Hold) -> bool:
        maps = self.maps()
        return maps is not None and all(maps_allow(maps, hold.identity, ip, ports)
                                        for ip, ports in hold.need)

    async def _released(self, identity: int, need: list[tuple[str, list[PortProto]]]) -> bool:
        started = time.monotonic()
        hold = _Hold(identity, need, asyncio.get_running_loop().create_future())
        if not self._ready(hold):
            self._holds.append(hold)
            try:
                await asyncio.wait_for(asyncio.shield(hold.done), self.release_timeout)
            except TimeoutError:
                log.warning("dns proxy: answer for identity %d held %.1fs, maps still do not "
                            "allow %s; SERVFAIL", identity, self.release_timeout,
                            ", ".join(ip for ip, _ in need))
                return False
            finally:
                if hold in self._holds:
                    self._holds.remove(hold)
        self.stats["released"] += 1
        RELEASE_SECONDS.labels(self.node).observe(time.monotonic() - started)
        return True

    def patched(self) -> None:
        """The agent patched its maps: release the answers they now allow."""
        for hold in self._holds:
            if not hold.done.done() and self._ready(hold):
                hold.done.set_result(None)

    # -- expiry ----------------------------------------------------------------------------

    async def expire(self, now: float | None = None) -> list[FqdnNames]:
        """Forget the addresses past TTL and grace without a live connection; publish it."""
        now = time.time() if now is None else now
        if not self.cache.due(now):
            return []
        live = await self.live_addresses()
        out = self.cache.expire(now, live)
        for payload in out:
            await self.publish(payload)
        return out

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_INTERVAL_S)
            try:
                await self.expire()
            except Exception:   # the next round tries again; the proxy must keep answering
                log.exception("dns proxy: expiry failed")


class _Flow:
    """The DNS flow of one query, as ``cilia observe --type dns`` shows it."""

    def __init__(self, dns: NodeDns, q: Query, ep: LocalEndpoint, ident: int, server: int,
                 question: dnsmsg.Question) -> None:
        self.dns, self.q, self.ep, self.ident, self.server = dns, q, ep, ident, server
        self.question = question

    def emit(self, verdict: str, rcode: str, ips: list[str] | None = None, ttl: int = 0) -> None:
        q = self.q
        QUERIES.labels(self.dns.node, verdict, rcode).inc()
        if not self.question.name:
            return      # the root: no name a flow could show
        self.dns.emit({
            "time_ns": time.monotonic_ns(), "time": time.time(), "verdict": verdict,
            "reason": 0, "reason_name": f"DNS {rcode}", "direction": "egress",
            "src_identity": self.ident, "dst_identity": self.server,
            "src_ip": q.client[0], "dst_ip": q.server[0], "src_port": q.client[1],
            "dst_port": q.server[1], "proto": q.proto,
            "proto_name": PROTO_NAMES.get(q.proto, str(q.proto)), "ifindex": self.ep.ifindex,
            "endpoint_id": self.ep.endpoint_id, "tcp_flags": 0, "src_pod": self.ep.pod,
            "dst_pod": self.dns.pod_of(q.server[0]), "type": FLOW_TYPE_DNS,
            "dns": {"query": self.question.name,
                    "qtype": _qtype(self.question.rdtype), "rcode": rcode,
                    "ips": ips or [], "ttl": ttl}})


def _qtype(rdtype: int) -> str:
    return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))
