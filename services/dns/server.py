"""The cluster DNS service: listens inside a pod's netns, follows the lb service on the bus.

The process itself stays in the root netns, where the bus (NATS on 127.0.0.1) is; only its
listening sockets are created inside the pod's netns (a short-lived thread enters it with
setns(2), binds UDP and TCP port 53, and leaves). A socket keeps the netns it was created in,
so queries reach the server through the pod's eth0 only, after service translation and policy
like any pod traffic, and never touch the root namespace.

Answers come from the fold of ``cilia.lb.>`` (:class:`LbView`), rebuilt into a zone on every
lb event; the server answers once it has caught up with the history.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from typing import Any, cast

from services.common.bus import Bus, Delivery, Subscription
from services.common.contract import LB_VIEW
from services.common.netns import run_in_netns
from services.common.rejections import Rejections
from services.common.runner import STATE_OK, STATE_STARTING
from services.common.world import DEFAULT_WORLD, World
from services.dns.errors import DnsStartError
from services.dns.records import Zone, respond, zone_from_view
from services.lb.events import LbView

log = logging.getLogger(__name__)

DNS_PORT = 53
LISTEN_ADDRESS = "0.0.0.0"
TCP_BACKLOG = 64
TCP_LENGTH = struct.Struct("!H")     # RFC 1035 4.2.2: two-byte length before each message
TCP_IDLE_S = 10.0
READY = b"ready\n"


def bind_in_netns(netns: str | None, port: int = DNS_PORT,
                  address: str = LISTEN_ADDRESS) -> tuple[socket.socket, socket.socket]:
    """A UDP and a listening TCP socket bound inside ``netns`` (None: the caller's netns).

    Raises:
        DnsStartError: the netns does not exist or the port is taken.
    """
    out: list[socket.socket] = []

    def work() -> None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.append(udp)
        udp.bind((address, port))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        out.append(tcp)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((address, port))
        tcp.listen(TCP_BACKLOG)

    try:
        run_in_netns(netns, work) if netns else work()
    except OSError as exc:
        for sock in out:
            sock.close()
        raise DnsStartError(f"dns: cannot listen on {address}:{port} in netns {netns}: "
                            f"{exc}") from exc
    for sock in out:
        sock.setblocking(False)
    return out[0], out[1]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsService) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = self.server.handle(data, udp=True)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DnsService:
    """The ``dns`` service (one replica per kube-dns pod).

    Args:
        udp: the bound UDP socket; tcp: the listening TCP socket (from :func:`bind_in_netns`).
        ready_fd: written ``ready`` once the zone has caught up with the bus, then closed.
    """

    name = "dns"

    def __init__(self, udp: socket.socket, tcp: socket.socket, ready_fd: int | None = None,
                 world: World = DEFAULT_WORLD) -> None:
        self.udp, self.tcp = udp, tcp
        self.ready_fd = ready_fd
        self.world = world
        self.view = LbView()
        self.zone: Zone = zone_from_view(self.view)
        self.queries = 0
        self.dropped = 0
        self._sub: Subscription | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.Server | None = None
        self._live = False
        self._rejections: Rejections | None = None
        self._stale = False     # the view changed since the zone was built

    def handle(self, wire: bytes, udp: bool = False) -> bytes | None:
        reply = respond(wire, self.zone, udp, self.world)
        if reply is None:
            self.dropped += 1
        else:
            self.queries += 1
        return reply

    async def _on_lb(self, d: Delivery) -> None:
        # The zone is rebuilt once per batch (nothing pending), not per event: a start over a
        # long history would otherwise rebuild it for every service event.
        self._stale = bool(self.view.apply(d.event.payload)) or self._stale
        if d.pending == 0:
            self._rebuild()

    async def _on_idle(self, _seq: int) -> None:
        """A batch ended on a message the handler did not take (a bad one)."""
        self._rebuild()

    def _rebuild(self) -> None:
        if self._stale:
            self.zone = zone_from_view(self.view)
            self._stale = False

    async def start(self, bus: Bus) -> None:
        loop = asyncio.get_running_loop()
        self._rejections = bus.rejections
        self._sub = await bus.consume(LB_VIEW, self._on_lb, name="dns", idle=self._on_idle)
        await self._sub.caught_up.wait()
        self._stale = False
        self.zone = zone_from_view(self.view)
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self),
                                                                 sock=self.udp)
        self._tcp_server = await asyncio.start_server(self._on_tcp, sock=self.tcp)
        self._live = True
        if self.ready_fd is not None:
            os.write(self.ready_fd, READY)
            os.close(self.ready_fd)
            self.ready_fd = None
        log.info("dns: serving %d names", len(self.zone))

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(TCP_LENGTH.size), TCP_IDLE_S)
                wire = await reader.readexactly(TCP_LENGTH.unpack(head)[0])
                reply = self.handle(wire)
                if reply is None:
                    break
                writer.write(TCP_LENGTH.pack(len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.stop()
        if self._transport is not None:
            self._transport.close()
        if self._tcp_server is not None:
            self._tcp_server.close()

    def state(self) -> str:
        return STATE_OK if self._live else STATE_STARTING

    def stats(self) -> dict[str, Any]:
        return {"names": len(self.zone), "queries": self.queries, "dropped": self.dropped,
                **(self._rejections.stats() if self._rejections else {})}
