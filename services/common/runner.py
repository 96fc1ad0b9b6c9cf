"""The service runner: one asyncio process per service replica.

Connects to the bus (as the role its environment names), answers heartbeats on
``cilia.ctl.status.<nonce>`` with a reply only its role may publish (:mod:`control`), serves
Prometheus metrics on an optional port, and shuts down cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from prometheus_client import start_http_server

from services.common import control
from services.common.bus import Bus, Subscription
from services.common.codec import encode
from services.common.contract import STATUS_CONTROL, ControlEvent, ServiceStatus
from services.common.contract.control import ServiceState
from services.common.errors import BusError, CiliaError
from services.common.tracing import setup_tracing, shutdown_tracing

log = logging.getLogger(__name__)
GC_THRESHOLDS = (10_000, 10, 10)   # the interpreter's default is (700, 10, 10)

STATUS_COLLECT_S = 0.3     # how long a status request gathers replies
STATE_STARTING = "starting"
STATE_OK = "ok"
STATE_DEGRADED = "degraded"


class Service(Protocol):
    """What the runner needs from a service."""

    name: str

    async def start(self, bus: Bus) -> None: ...

    async def stop(self) -> None: ...

    def state(self) -> str: ...

    def stats(self) -> dict[str, Any]: ...


class BusConsumer:
    """What the control-plane services share: the subscriptions they stop, and being live
    (caught up with the bus) or still starting."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._live = False

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.stop()

    def state(self) -> str:
        return STATE_OK if self._live else STATE_STARTING


def default_replica() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Heartbeat:
    """Answers status requests for one service replica."""

    def __init__(self, service: Service, replica: str, node: str | None = None) -> None:
        self.service = service
        self.replica = replica
        self.node = node
        self.started = time.monotonic()
        self._sub: Any = None

    def payload(self) -> bytes:
        return encode(ControlEvent.STATUS, ServiceStatus(
            service=self.service.name, replica=self.replica, pid=os.getpid(),
            state=cast(ServiceState, self.service.state()),     # checked when encoded
            uptime_s=round(time.monotonic() - self.started, 3), stats=self.service.stats(),
            node=self.node or None))

    async def start(self, bus: Bus) -> None:
        role = control.responder_role(bus, self.service.name, self.node)
        self._sub = await control.serve(bus, STATUS_CONTROL, role, self.payload)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()


async def collect_status(bus: Bus, wait: float = STATUS_COLLECT_S) -> list[dict[str, Any]]:
    """Ask every service replica for its status; gathers the replies that come in ``wait``.

    A reply counts only if its role (proved by its subject) may speak for the service it names.
    """
    replies = [r.data for r in await control.request(
        bus, STATUS_CONTROL, control.status_claim, wait)]
    return sorted(replies, key=lambda r: (r["service"], r["replica"]))


async def serve(service: Service, nats_url: str | None, *, replica: str | None = None,
                metrics_port: int | None = None, node: str | None = None) -> None:
    """Run ``service`` until SIGTERM or SIGINT."""
    setup_tracing(service.name, export_in_child=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if metrics_port:
        start_http_server(metrics_port, addr="127.0.0.1")
    bus = await Bus.connect(nats_url, service.name)
    heartbeat = Heartbeat(service, replica or default_replica(), node)
    try:
        await bus.ensure_history()
        await heartbeat.start(bus)
        await service.start(bus)
        # What start-up loaded (modules, compiled programs, clients) lives as long as the
        # process: keep it out of the collector's full passes, which otherwise pause the
        # event loop for 10-20 ms every few seconds. Young collections run less often too:
        # short-lived objects that survive one (queued spans, batches in flight) made full
        # passes frequent once the frozen heap no longer counted.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        log.info("%s running (replica %s)", service.name, heartbeat.replica)
        await stop.wait()
    finally:
        await service.stop()
        await heartbeat.stop()
        await bus.close()
        shutdown_tracing()


def service_main(name: str, factory: Callable[[argparse.Namespace], Service],
                 argv: Sequence[str] | None = None,
                 extra_args: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Command-line entry of a service process (``python -m services.<name>``)."""
    parser = argparse.ArgumentParser(prog=f"cilia-{name}")
    parser.add_argument("--nats-url", default=None, help="NATS URL (default $CILIA_NATS_URL)")
    parser.add_argument("--replica", default=None, help="replica name (default host-pid)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port")
    parser.add_argument("--log-level", default=os.environ.get("CILIA_LOG_LEVEL", "INFO"))
    if extra_args:
        extra_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format=f"%(asctime)s {name} %(levelname)s %(message)s")
    try:
        service = factory(args)
    except CiliaError as exc:   # a bad option value (named in the message)
        parser.error(str(exc))
    try:
        asyncio.run(serve(service, args.nats_url, replica=args.replica,
                          metrics_port=args.metrics_port, node=getattr(args, "node", None)))
    except BusError as exc:     # no bus, refused credentials, a stream it may not create
        log.error("%s", exc)
        raise SystemExit(1) from None
