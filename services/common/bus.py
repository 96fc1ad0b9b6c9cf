"""NATS/JetStream wiring: the history stream, KV buckets, publishing and consuming events.

A thin shell around nats-py. Publishing encodes with the codec, sets ``Nats-Msg-Id`` and injects
the trace context; consuming decodes, counts what it must reject, continues the trace and hands
each event to one worker task per subscription, so that handlers run in stream order and never
block the NATS client's callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from opentelemetry.trace import SpanKind
from prometheus_client import Counter

from services.common.buscreds import Credentials
from services.common.codec import Data, Event, decode, encode
from services.common.contract import HISTORY_STREAM, HISTORY_SUBJECTS, ConsumerSpec, DeliverFrom
from services.common.errors import BusError, CodecError, PermissionDenied
from services.common.rejections import Rejections
from services.common.tracing import extract_context, inject_headers, tracer

log = logging.getLogger(__name__)

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
NATS_URL_ENV = "CILIA_NATS_URL"
HISTORY_MAX_AGE_ENV = "CILIA_HISTORY_MAX_AGE"      # seconds; 0 keeps events forever
HISTORY_MAX_BYTES_ENV = "CILIA_HISTORY_MAX_BYTES"  # bytes; -1 for no limit
DEFAULT_HISTORY_MAX_BYTES = 1 << 30                # 1 GiB of control-plane history
DUPLICATE_WINDOW_S = 120.0                         # Nats-Msg-Id de-duplication window
MSG_ID = "Nats-Msg-Id"
JS_API = "$JS.API"
T = TypeVar("T")

# nats-py reports the server's -ERR lines lower-cased: 'permissions violation for publish to
# "cilia.policy.rules.5"' (also 'for subscription to', 'for publish with reply of').
_REFUSED = re.compile(
    r'permissions violation for (publish to|subscription to|publish with reply of) "([^"]+)"')
FALLBACK_CHUNK = 256        # subjects per consumer when looking back for their last valid event
FALLBACK_TIMEOUT_S = 30.0   # how long such a look back may take

MESSAGES = Counter("cilia_bus_messages_total", "Events consumed, by outcome",
                   ["service", "outcome"])
PUBLISHED = Counter("cilia_bus_published_total", "Events published, by outcome",
                    ["service", "outcome"])
REFUSED = Counter("cilia_bus_refused_total",
                  "Publishes and subscriptions the bus refused (permission violations)",
                  ["service"])

_tracer = tracer("cilia.bus")

_DELIVER = {"all": api.DeliverPolicy.ALL, "new": api.DeliverPolicy.NEW,
            "last_per_subject": api.DeliverPolicy.LAST_PER_SUBJECT}


async def _log_bus_error(exc: Exception) -> None:
    """Connection trouble, in one line (nats-py's default prints a traceback each try)."""
    log.warning("NATS: %s", exc)


class _TlsEofNoise(logging.Filter):
    """asyncio warns on every TLS connection nats-py closes ("returning true from
    eof_received() has no effect when using ssl"): noise, not a problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received()" not in record.getMessage()


_TLS_EOF_NOISE = _TlsEofNoise()


def _fatal(exc: BaseException) -> bool:
    """A connection error that retrying cannot fix: refused credentials, failed TLS checks."""
    if isinstance(exc, ssl.SSLError):
        return True
    text = str(exc).lower()
    return "authorization violation" in text or "authentication" in text


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS verification of the server failed ({exc.verify_message}): "
                "the client needs the CA that signed the server's certificate "
                "(--tlsca / CILIA_NATS_CA)")
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc}"
    return f"the server refused the credentials ({str(exc).replace('nats: ', '').strip(chr(39))})"


class Refusals:
    """Publishes the server refused, matched to the requests that wait for their answer.

    The server drops a publish it does not permit and says so asynchronously (an ``-ERR``
    line); a JetStream publish or API request would otherwise wait for its timeout.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, list[tuple[asyncio.Future[str], str]]] = {}
        self.count = 0

    def refused(self, subject: str) -> None:
        """The server refused ``subject`` (nats-py hands it over lower-cased)."""
        self.count += 1
        for fut, original in self._waiting.get(subject.lower(), []):
            if not fut.done():
                fut.set_result(original)

    @contextlib.contextmanager
    def watch(self, publish_subjects: Sequence[str]) -> Iterator[asyncio.Future[str]]:
        """A future that resolves with the subject when any of ``publish_subjects`` is
        refused while the block runs."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        keys = {s.lower(): s for s in publish_subjects}
        for key, original in keys.items():
            self._waiting.setdefault(key, []).append((fut, original))
        try:
            yield fut
        finally:
            for key, original in keys.items():
                waiters = self._waiting.get(key, [])
                if (fut, original) in waiters:
                    waiters.remove((fut, original))
                if not waiters:
                    self._waiting.pop(key, None)


def nats_url(explicit: str | None = None) -> str:
    """The NATS URL to use: explicit, then ``CILIA_NATS_URL``, then the embedded default."""
    return explicit or os.environ.get(NATS_URL_ENV) or DEFAULT_NATS_URL


@dataclass(frozen=True)
class HistoryConfig:
    """Retention of the history stream."""

    max_age_s: float = 0.0
    max_bytes: int = DEFAULT_HISTORY_MAX_BYTES
    replicas: int = 1

    @classmethod
    def from_env(cls) -> HistoryConfig:
        return cls(max_age_s=float(os.environ.get(HISTORY_MAX_AGE_ENV, "0")),
                   max_bytes=int(os.environ.get(HISTORY_MAX_BYTES_ENV,
                                                str(DEFAULT_HISTORY_MAX_BYTES))))

    def stream_config(self) -> api.StreamConfig:
        return api.StreamConfig(
            name=HISTORY_STREAM, subjects=list(HISTORY_SUBJECTS),
            retention=api.RetentionPolicy.LIMITS, storage=api.StorageType.FILE,
            max_age=self.max_age_s, max_bytes=self.max_bytes,
            duplicate_window=DUPLICATE_WINDOW_S, num_replicas=self.replicas)


@dataclass(frozen=True)
class Delivery:
    """One consumed event with its place in the stream."""

    subject: str
    event: Event
    seq: int
    time: datetime
    headers: dict[str, str]
    pending: int


Handler = Callable[[Delivery], Awaitable[None]]
# Called with a stream sequence when nothing is pending after a message the handler did not
# complete (rejected, or the handler raised): what a handler does when ``pending`` is 0
# (batch end, going live) must happen then too, or a bad last message would stall it.
Idle = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class Outgoing:
    """One event to publish (see :meth:`Bus.publish_batch`)."""

    subject: str
    event_type: str
    data: Data
    msg_id: str


@dataclass
class Subscription:
    """A running consumer: ``caught_up`` is set once everything stored at start is handled."""

    caught_up: asyncio.Event
    _sub: Any
    _task: asyncio.Task[None] | None = None
    last_seq: int = 0
    handled: int = field(default=0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(Exception):  # the connection may already be closed
            await self._sub.unsubscribe()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


class Bus:
    """A service's connection to the bus."""

    def __init__(self, nc: Client, service: str, creds: Credentials | None = None) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.service = service
        self.creds = creds or Credentials()
        self.refusals = Refusals()
        self.rejections = Rejections(service)

    @property
    def role(self) -> str | None:
        """The role this connection runs as (None when no credentials name one)."""
        return self.creds.role

    @property
    def security(self) -> dict[str, Any]:
        """What the server said about this connection: TLS and authentication required."""
        info = getattr(self.nc, "_server_info", None) or {}  # nats-py keeps INFO private
        return {"tls": bool(info.get("tls_required")), "auth": bool(info.get("auth_required")),
                "role": self.role}

    @classmethod
    async def connect(cls, url: str | None, service: str, timeout: float = 5.0, *,
                      creds: Credentials | None = None) -> Bus:
        """Connect to NATS as ``creds`` (default: the ``CILIA_NATS_*`` environment).

        Raises:
            BusError: nothing answers at the URL, or the server refuses the credentials or the
                TLS verification fails (at once: retrying cannot help).
        """
        target = nats_url(url)
        creds = creds or Credentials.from_env()
        logging.getLogger("asyncio").addFilter(_TLS_EOF_NOISE)   # once: filters are a set
        options: dict[str, Any] = {**creds.connect_options(target), "connect_timeout": timeout}
        nc = Client()
        bus = cls(nc, service, creds)
        fatal: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

        async def on_error(exc: Exception) -> None:
            if not nc.is_connected and not fatal.done() and _fatal(exc):
                fatal.set_result(exc)      # reported by the BusError below
                return
            await bus._on_error(exc)

        # Once connected, reconnect forever (a bus restart must not end a service); the first
        # connection, though, must answer within ``timeout`` or fail clearly.
        connecting = asyncio.ensure_future(nc.connect(
            target, name=service, max_reconnect_attempts=-1, allow_reconnect=True,
            error_cb=on_error, **options))
        waiters: set[asyncio.Future[Any]] = {connecting, fatal}
        done, _ = await asyncio.wait(waiters, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if connecting in done and connecting.exception() is None:
            return bus
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await connecting
        with contextlib.suppress(Exception):
            await nc.close()
        if fatal.done():
            raise BusError(f"cannot connect to NATS at {target} as {creds.describe()}: "
                           f"{_reason(fatal.result())}")
        exc = connecting.exception() if connecting in done else None
        raise BusError(f"cannot reach NATS at {target}: {exc or 'no answer'}")

    async def _on_error(self, exc: Exception) -> None:
        """Connection trouble in one line; a refused publish wakes whoever waits for its ack."""
        match = _REFUSED.search(str(exc))
        if match:
            REFUSED.labels(self.service).inc()
            log.warning("%s: the bus refused %s (%s)", self.service, match.group(2),
                        self.creds.describe())
            self.refusals.refused(match.group(2))
            return
        await _log_bus_error(exc)

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.drain()

    async def ensure_history(self, config: HistoryConfig | None = None) -> api.StreamInfo:
        """The history stream's info; it is created if missing, or its retention updated when
        ``config`` is given (both need the admin role on a secured bus).

        Raises:
            BusError: the stream is missing and this role may not create it.
        """
        try:
            info = await self.js.stream_info(HISTORY_STREAM)
        except NotFoundError:
            cfg = (config or HistoryConfig.from_env()).stream_config()
            return await self._admin(
                f"{JS_API}.STREAM.CREATE.{HISTORY_STREAM}", self.js.add_stream(cfg),
                f"the history stream {HISTORY_STREAM} does not exist and")
        if config is not None:
            return await self._admin(
                f"{JS_API}.STREAM.UPDATE.{HISTORY_STREAM}",
                self.js.update_stream(config.stream_config()),
                f"to change the history stream {HISTORY_STREAM}'s retention,")
        return info

    async def key_value(self, bucket: str, history: int = 1) -> KeyValue:
        """Open a KV bucket, creating it if missing (safe when several replicas race).

        Raises:
            BusError: the bucket is missing and this role may not create it.
        """
        try:
            return await self._acked([f"{JS_API}.STREAM.INFO.KV_{bucket}"],
                                     self.js.key_value(bucket))
        except BucketNotFoundError:
            pass
        try:
            return await self._admin(
                f"{JS_API}.STREAM.CREATE.KV_{bucket}",
                self.js.create_key_value(api.KeyValueConfig(
                    bucket=bucket, history=history, storage=api.StorageType.FILE)),
                f"the KV bucket {bucket} does not exist and")
        except PermissionDenied:
            raise
        except Exception:
            return await self.js.key_value(bucket)  # another replica created it first

    async def _admin(self, api_subject: str, request: Awaitable[T], why: str) -> T:
        """Run a stream/bucket change; a role without admin rights gets a clear error."""
        try:
            return await self._acked([api_subject], request)
        except PermissionDenied:
            raise PermissionDenied(
                f"{why} {self.creds.describe()} may not create or change streams and buckets: "
                "only the admin role may (`cilia up` creates them)") from None

    async def _acked(self, publish_subjects: Sequence[str], pending: Awaitable[T]) -> T:
        """Await a request's answer, or fail at once when the server refuses its publish
        (a refused publish is dropped by the server: no answer would ever come)."""
        with self.refusals.watch(publish_subjects) as refused:
            task = asyncio.ensure_future(pending)
            waiters: set[asyncio.Future[Any]] = {task, refused}
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise PermissionDenied(f"{self.service}: the bus refused to let "
                                   f"{self.creds.describe()} publish to {refused.result()}")

    async def publish(self, subject: str, event_type: str, data: Data, *,
                      msg_id: str) -> api.PubAck:
        """Publish one event to the history stream.

        Args:
            msg_id: unique per logical change and identical on every retry of it; JetStream
                stores a message id once within the de-duplication window.
        """
        payload = encode(event_type, data)
        with _tracer.start_as_current_span(
                f"publish {event_type}", kind=SpanKind.PRODUCER,
                attributes={"messaging.system": "nats", "messaging.destination": subject,
                            "cilia.msg_id": msg_id}):
            headers = inject_headers({MSG_ID: msg_id})
            ack = await self._acked([subject], self.js.publish(
                subject, payload, stream=HISTORY_STREAM, headers=headers))
        PUBLISHED.labels(self.service, "duplicate" if ack.duplicate else "stored").inc()
        return ack

    async def last_event(self, subject: str) -> Event | None:
        """The last valid event stored on ``subject`` (None if there is none).

        A bad last message (undecodable, or not following its schema) does not hide the
        object: the event before it counts, as if the bad one had never been stored.
        """
        try:
            raw = await self.js.get_last_msg(HISTORY_STREAM, subject)
        except NotFoundError:
            return None
        event = _decode_or_none(raw.data or b"", subject)
        if event is not None:
            return event
        found = await self._last_valid({subject: raw.seq or 0})
        return found[subject].event if subject in found else None

    async def publish_batch(self, items: Sequence[Outgoing]) -> list[api.PubAck]:
        """Publish several events in order without waiting for each acknowledgement.

        One connection keeps the order, so events on one subject are stored in the order given.
        An item that does not follow its schema is logged, counted and left out; the others
        are published (one bad output never holds back the rest).
        """
        async def send_all() -> list[api.PubAck]:
            futures = []
            for item in items:
                try:
                    payload = encode(item.event_type, item.data)
                except CodecError as exc:
                    PUBLISHED.labels(self.service, "invalid").inc()
                    log.error("%s: not publishing %s on %s: %s", self.service,
                              item.event_type, item.subject, exc)
                    continue
                with _tracer.start_as_current_span(
                        f"publish {item.event_type}", kind=SpanKind.PRODUCER,
                        attributes={"messaging.system": "nats",
                                    "messaging.destination": item.subject,
                                    "cilia.msg_id": item.msg_id}):
                    headers = inject_headers({MSG_ID: item.msg_id})
                    futures.append(await self.js.publish_async(
                        item.subject, payload, stream=HISTORY_STREAM,
                        headers=headers))
            return list(await asyncio.gather(*futures))

        acks = await self._acked([i.subject for i in items], send_all())
        for ack in acks:
            PUBLISHED.labels(self.service, "duplicate" if ack.duplicate else "stored").inc()
        return acks

    async def publish_core(self, subject: str, event_type: str, data: Data) -> None:
        """Publish one event on core NATS (not stored): flows and other high-volume data."""
        await self.nc.publish(subject, encode(event_type, data), headers=inject_headers({}))

    async def consume(self, filters: Sequence[str] | ConsumerSpec, handler: Handler, *,
                      deliver: DeliverFrom | None = None, name: str | None = None,
                      start_seq: int | None = None, traced: bool = True,
                      idle: Idle | None = None, report: bool = True) -> Subscription:
        """Consume events of the history stream matching ``filters``, in order.

        ``filters`` is a consumer's subscription (:mod:`services.common.contract.consumers`:
        its filters, where it starts and its name, unless ``deliver`` or ``name`` say
        otherwise) or a list of filter subjects (from every stored event, by default).

        Every message is checked whole (its schema, and that it belongs on its subject)
        before the handler sees it. A bad one is counted per subject family, logged once per
        subject (:class:`~services.common.rejections.Rejections`) and skipped; a handler that
        raises is counted and logged the same way; consumption goes on either way. With
        ``deliver="last_per_subject"``, a subject whose last message is bad gets its last
        valid one instead (before ``caught_up``), so a bad message never erases an object.

        Args:
            start_seq: resume at this stream sequence (a consumer's durable position).
            traced: handle each event in a consumer span of the event's trace. A service
                reading back its own outputs (to learn its replicas' work) says False: that
                is bookkeeping, not a step of the change, and would double its spans.
            idle: called (see :data:`Idle`) when nothing is pending after a message the
                handler did not complete, so that a bad last message never keeps a
                batching handler from finishing its batch or going live.
            report: count and log bad messages (a one-off read-only view says False).
        """
        if isinstance(filters, ConsumerSpec):
            deliver = deliver or filters.deliver
            name = name or filters.name
            filters = filters.filters
        deliver = deliver or "all"
        name = name or "consume"
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_msg(msg: Msg) -> None:
            queue.put_nowait(msg)

        sub = await self._subscribe(filters, on_msg, _DELIVER[deliver], start_seq)
        caught_up = asyncio.Event()
        info = await sub.consumer_info()
        if info.num_pending == 0 and (info.delivered is None or not info.delivered.consumer_seq):
            caught_up.set()
        subscription = Subscription(caught_up, sub)
        work = _Work(handler, name if traced else None, idle, report,
                     fallback=deliver == "last_per_subject" and start_seq is None)
        subscription._task = asyncio.create_task(self._work(queue, subscription, work))
        return subscription

    async def _subscribe(self, filters: Sequence[str], cb: Callable[[Msg], Awaitable[None]],
                         policy: api.DeliverPolicy, start_seq: int | None = None) -> Any:
        flist = list(filters)
        config = api.ConsumerConfig(deliver_policy=policy,
                                    filter_subjects=flist if len(flist) > 1 else None)
        if start_seq is not None:
            config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = start_seq
        return await self.js.subscribe(flist[0], stream=HISTORY_STREAM, cb=cb,
                                       ordered_consumer=True, config=config)

    async def last_seq(self, filters: Sequence[str]) -> int:
        """The stream sequence of the newest current event under ``filters`` (0: none): how
        far a consumer of them must have come to have handled everything."""
        return max((d.seq for d in (await self.snapshot(filters)).values()), default=0)

    async def snapshot(self, filters: Sequence[str], timeout: float = 10.0) -> dict[str, Delivery]:
        """The last valid event of every subject matching ``filters``: the current state the
        bus holds (a subject whose messages are all bad is absent)."""
        last: dict[str, Delivery] = {}

        async def keep(d: Delivery) -> None:
            last[d.subject] = d

        sub = await self.consume(filters, keep, deliver="last_per_subject", name="snapshot",
                                 report=False)
        try:
            await asyncio.wait_for(sub.caught_up.wait(), timeout)
        finally:
            await sub.stop()
        return last

    async def _work(self, queue: asyncio.Queue[Msg], subscription: Subscription,
                    work: _Work) -> None:
        replaced: dict[str, int] = {}    # subject -> sequence of its bad last message
        while True:
            msg = await queue.get()
            meta = msg.metadata
            seq = meta.sequence.stream
            # Pending counts what the server still holds and what waits here already:
            # handlers batch while either is non-zero.
            pending = meta.num_pending + queue.qsize()
            done = False
            try:
                event = decode(msg.data, msg.subject)
            except CodecError as exc:
                MESSAGES.labels(self.service, "rejected").inc()
                if work.report:
                    self.rejections.reject(msg.subject, seq, exc)
                if work.fallback and not subscription.caught_up.is_set():
                    replaced[msg.subject] = seq
            else:
                done = await self._handle(msg.subject, seq, meta.timestamp,
                                          dict(msg.headers or {}), event, work, pending)
            if replaced and meta.num_pending == 0:
                done = await self._deliver_last_valid(replaced, work)
                replaced = {}
            subscription.last_seq = seq
            subscription.handled += 1
            if not done and pending == 0 and work.idle is not None:
                try:
                    await work.idle(seq)
                except Exception as exc:
                    self.rejections.fail(msg.subject, seq, exc)
            if meta.num_pending == 0:
                subscription.caught_up.set()

    async def _deliver_last_valid(self, replaced: dict[str, int], work: _Work) -> bool:
        """Hand the handler the last valid event of subjects whose last message was bad."""
        found = sorted((await self._last_valid(replaced)).values(), key=lambda f: f.seq)
        done = False    # True when the handler completed the last one
        for i, d in enumerate(found):
            done = await self._handle(d.subject, d.seq, d.time, d.headers, d.event, work,
                                      len(found) - 1 - i)
        return done

    async def _last_valid(self, bounds: dict[str, int]) -> dict[str, Delivery]:
        """Per subject, the last valid event stored before the sequence given for it.

        Reads those subjects' history (a few consumers, not one per subject); bad messages
        met on the way are not counted again.
        """
        out: dict[str, Delivery] = {}
        names = sorted(bounds)
        for i in range(0, len(names), FALLBACK_CHUNK):
            chunk = names[i:i + FALLBACK_CHUNK]
            queue: asyncio.Queue[Msg] = asyncio.Queue()

            async def on_msg(msg: Msg, q: asyncio.Queue[Msg] = queue) -> None:
                q.put_nowait(msg)

            sub = await self._subscribe(chunk, on_msg, api.DeliverPolicy.ALL)
            try:
                info = await sub.consumer_info()
                delivered = info.delivered is not None and info.delivered.consumer_seq
                remaining = info.num_pending or delivered or not queue.empty()
                while remaining:
                    msg = await asyncio.wait_for(queue.get(), FALLBACK_TIMEOUT_S)
                    meta = msg.metadata
                    remaining = meta.num_pending
                    if meta.sequence.stream >= bounds.get(msg.subject, 0):
                        continue
                    event = _decode_or_none(msg.data, msg.subject)
                    if event is not None:
                        out[msg.subject] = Delivery(msg.subject, event, meta.sequence.stream,
                                                    meta.timestamp, dict(msg.headers or {}), 0)
            except TimeoutError:
                log.warning("%s: gave up looking back for the last valid events of %d "
                            "subjects after %.0fs", self.service, len(chunk),
                            FALLBACK_TIMEOUT_S)
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        return out

    async def _handle(self, subject: str, seq: int, time: datetime, headers: dict[str, str],
                      event: Event, work: _Work, pending: int) -> bool:
        """Run the handler on one event; False if it raised (counted, logged once)."""
        span = contextlib.nullcontext() if work.name is None else \
            _tracer.start_as_current_span(
                f"{work.name} {event.type}", context=extract_context(headers),
                kind=SpanKind.CONSUMER,
                attributes={"messaging.system": "nats", "messaging.destination": subject,
                            "cilia.seq": seq, "cilia.service": self.service})
        with span:
            try:
                await work.handler(Delivery(subject, event, seq, time, headers, pending))
            except Exception as exc:
                MESSAGES.labels(self.service, "failed").inc()
                self.rejections.fail(subject, seq, exc)
                return False
        MESSAGES.labels(self.service, "handled").inc()
        return True


@dataclass(frozen=True)
class _Work:
    """How one subscription hands its messages on."""

    handler: Handler
    name: str | None
    idle: Idle | None
    report: bool
    fallback: bool


def _decode_or_none(data: bytes, subject: str) -> Event | None:
    try:
        return decode(data, subject)
    except CodecError:
        return None
