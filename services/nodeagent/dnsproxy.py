"""The node's transparent DNS proxy: its sockets, UDP and TCP, in the node's netns.

The datapath assigns a redirected query to the proxy's socket (``lib/proxy.h``); the node's
rule ``fwmark 0x200/0xf00 -> table 2005`` (``local 0.0.0.0/0 dev lo``) delivers it locally.
The sockets are transparent (``IP_TRANSPARENT``), so the proxy learns the server the pod asked
from the packet itself (``IP_RECVORIGDSTADDR`` for UDP, the accepted socket's own address for
TCP) and answers from that very address: the pod sees its server answer.

What to answer is the handler's business (:class:`~services.nodeagent.dnsservice.NodeDns`):
it gets each :class:`Query` and returns the bytes to send back, or None to stay silent. The
proxy forwards to the server for it (:meth:`DnsProxy.forward`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkError

from services.common.netns import netns_path, open_iproute, setns_net
from services.common.policytypes import PROTO_TCP, PROTO_UDP

log = logging.getLogger(__name__)

PROXY_PORT = 10053           # lib/proxy.h CILIA_DNS_PROXY_PORT
PROXY_ADDR = "127.0.0.1"
PROXY_MARK = 0x200           # lib/proxy.h CILIA_PROXY_MARK
PROXY_MARK_MASK = 0xF00
PROXY_TABLE = 2005
PROXY_RULE_PRIORITY = 9      # before the main table, as Cilium's proxy rule
SCOPE_HOST = 254             # rtnetlink RT_SCOPE_HOST: a local route
IP_TRANSPARENT = 19          # linux/in.h
IP_RECVORIGDSTADDR = 20
MAX_UDP = 65535
UPSTREAM_TIMEOUT_S = 5.0     # an upstream that does not answer: the pod's resolver retries
MAX_TCP_CONNECTIONS = 256
MAX_IDLE_UDP = 64            # upstream UDP sockets kept for the next queries
MAX_REPLIERS = 256           # sockets answering from a server's address, kept for the next
MAX_IN_FLIGHT = 1024         # queries being answered at once; more are dropped (and counted)

Address = tuple[str, int]


@dataclass(frozen=True)
class Query:
    """One query from a pod: who asked, the server it asked, over which protocol."""

    client: Address
    server: Address
    proto: int
    wire: bytes


Handler = Callable[[Query], Awaitable[bytes | None]]


def setup_routing(netns: str | None) -> None:
    """The node's rule and table that deliver marked packets to local sockets (idempotent)."""
    with open_iproute(netns) as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        with contextlib.suppress(NetlinkError):     # EEXIST: already there
            ipr.route("add", type="local", dst="0.0.0.0/0", oif=lo, table=PROXY_TABLE,
                      scope=SCOPE_HOST)
        rules = [r for r in ipr.get_rules(family=socket.AF_INET)
                 if r.get_attr("FRA_TABLE") == PROXY_TABLE]
        if not rules:
            ipr.rule("add", family=socket.AF_INET, fwmark=PROXY_MARK, fwmask=PROXY_MARK_MASK,
                     table=PROXY_TABLE, priority=PROXY_RULE_PRIORITY)


class NetnsSockets:
    """Opens sockets inside a netns, from one thread that lives there (a socket stays in the
    netns it was opened in)."""

    def __init__(self, netns: str | None) -> None:
        path = None if netns is None else (netns if "/" in netns else netns_path(netns))

        def enter() -> None:
            if path is not None:
                fd = os.open(path, os.O_RDONLY)
                try:
                    setns_net(fd)
                finally:
                    os.close(fd)

        self._pool = concurrent.futures.ThreadPoolExecutor(1, "netns-sockets", initializer=enter)

    def open(self, kind: int, bind: Address | None = None, transparent: bool = False,
             listen: bool = False) -> socket.socket:
        """A non-blocking socket, opened in the netns (blocking call)."""
        return self._pool.submit(self._open, kind, bind, transparent, listen).result()

    async def aopen(self, kind: int, bind: Address | None = None,
                    transparent: bool = False) -> socket.socket:
        return await asyncio.wrap_future(self._pool.submit(self._open, kind, bind, transparent,
                                                           False))

    @staticmethod
    def _open(kind: int, bind: Address | None, transparent: bool,
              listen: bool) -> socket.socket:
        sock = socket.socket(socket.AF_INET, kind)
        try:
            if transparent:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if kind == socket.SOCK_DGRAM and listen:
                sock.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
            if bind is not None:
                sock.bind(bind)
            if listen and kind == socket.SOCK_STREAM:
                sock.listen(MAX_TCP_CONNECTIONS)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _orig_dst(ancdata: list[tuple[int, int, bytes]]) -> Address | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR and len(data) >= 8:
            port = struct.unpack("!H", data[2:4])[0]
            return socket.inet_ntoa(data[4:8]), port
    return None


class DnsProxy:
    """The proxy's sockets and loops; ``handler`` decides each answer."""

    def __init__(self, netns: str | None, handler: Handler, port: int = PROXY_PORT) -> None:
        self.netns = netns
        self.handler = handler
        self.port = port
        self.sockets = NetnsSockets(netns)
        self._udp: socket.socket | None = None
        self._tcp: asyncio.Server | None = None
        self._repliers: dict[Address, socket.socket] = {}
        self._idle_udp: list[socket.socket] = []    # upstream sockets between two queries
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = {"queries": 0, "malformed": 0, "upstream_errors": 0, "overload": 0}

    async def start(self) -> None:
        """Open the sockets (and the node's routing for marked packets)."""
        await asyncio.to_thread(setup_routing, self.netns)
        bind = (PROXY_ADDR, self.port)
        self._udp = self.sockets.open(socket.SOCK_DGRAM, bind, transparent=True, listen=True)
        tcp = self.sockets.open(socket.SOCK_STREAM, bind, transparent=True, listen=True)
        asyncio.get_running_loop().add_reader(self._udp.fileno(), self._on_udp)
        self._tcp = await asyncio.start_server(self._on_tcp, sock=tcp)

    async def stop(self) -> None:
        if self._udp is not None:
            asyncio.get_running_loop().remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in [*self._repliers.values(), *self._idle_udp]:
            sock.close()
        self._repliers.clear()
        self._idle_udp.clear()
        self.sockets.close()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- UDP -----------------------------------------------------------------------------

    def _on_udp(self) -> None:
        sock = self._udp
        while sock is not None:
            try:
                data, anc, _flags, client = sock.recvmsg(MAX_UDP, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("dns proxy: udp receive failed: %s", exc)
                return
            server = _orig_dst(anc)
            if server is None:
                self.stats["malformed"] += 1
                continue
            if len(self._tasks) >= MAX_IN_FLIGHT:
                self.stats["overload"] += 1     # the resolver asks again
                continue
            self.stats["queries"] += 1
            self._spawn(self._answer_udp(Query(client, server, PROTO_UDP, data)))

    async def _answer_udp(self, q: Query) -> None:
        reply = await self.handler(q)
        if reply is None:
            return
        try:
            sock = self._repliers.get(q.server)
            if sock is None:
                opened = await self.sockets.aopen(socket.SOCK_DGRAM, q.server, transparent=True)
                sock = self._repliers.get(q.server)     # another query's, opened meanwhile
                if sock is None:
                    if len(self._repliers) >= MAX_REPLIERS:     # the oldest goes
                        self._repliers.pop(next(iter(self._repliers))).close()
                    self._repliers[q.server] = sock = opened
                else:
                    opened.close()
            sock.sendto(reply, q.client)
        except OSError as exc:
            log.warning("dns proxy: reply to %s:%d failed: %s", *q.client, exc)

    # -- TCP -----------------------------------------------------------------------------

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")
        server = writer.get_extra_info("sockname")   # a transparent socket: what the pod asked
        try:
            while True:
                head = await reader.readexactly(2)
                wire = await reader.readexactly(struct.unpack("!H", head)[0])
                self.stats["queries"] += 1
                reply = await self.handler(Query((client[0], client[1]), (server[0], server[1]),
                                                 PROTO_TCP, wire))
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # -- upstream ------------------------------------------------------------------------

    async def forward(self, q: Query, timeout: float = UPSTREAM_TIMEOUT_S) -> bytes | None:
        """Ask the server the pod asked, from the node; None when it does not answer."""
        try:
            async with asyncio.timeout(timeout):
                if q.proto == PROTO_TCP:
                    return await self._forward_tcp(q)
                return await self._forward_udp(q)
        except (OSError, TimeoutError, EOFError) as exc:
            log.info("dns proxy: upstream %s:%d: %s", *q.server, exc or type(exc).__name__)
            self.stats["upstream_errors"] += 1
            return None

    async def _forward_udp(self, q: Query) -> bytes:
        # An unconnected socket kept between queries (opening one in the netns costs a thread
        # hop); only a datagram from the server asked, with the query's id, is its answer.
        loop = asyncio.get_running_loop()
        sock = self._idle_udp.pop() if self._idle_udp else \
            await self.sockets.aopen(socket.SOCK_DGRAM)
        clean = False
        try:
            await loop.sock_sendto(sock, q.wire, q.server)
            while True:
                data, peer = await loop.sock_recvfrom(sock, MAX_UDP)
                if peer[:2] == q.server and data[:2] == q.wire[:2]:
                    clean = True
                    return data
        finally:
            if clean and len(self._idle_udp) < MAX_IDLE_UDP:
                self._idle_udp.append(sock)
            else:
                sock.close()

    async def _forward_tcp(self, q: Query) -> bytes:
        loop = asyncio.get_running_loop()
        sock = await self.sockets.aopen(socket.SOCK_STREAM)
        try:
            await loop.sock_connect(sock, q.server)
            await loop.sock_sendall(sock, struct.pack("!H", len(q.wire)) + q.wire)
            head = await _recv_exactly(loop, sock, 2)
            return await _recv_exactly(loop, sock, struct.unpack("!H", head)[0])
        finally:
            sock.close()


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf
