"""Verdict events from the pinned ring buffer as Python flow records.

The reader opens the ring buffer by its pin, so it works in a restarted agent without
recompiling anything. :meth:`FlowReader.poll` blocks up to a timeout and returns the records
that arrived; run it in a thread (:meth:`FlowReader.run`) or from asyncio through an executor
(:meth:`FlowReader.aiter`).
"""

from __future__ import annotations

import asyncio
import ctypes as ct
import os
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any

from bcc.libbcc import _RINGBUF_CB_TYPE
from bcc.libbcc import lib as bcclib

from services.common.policytypes import PROTO_NAMES, Direction
from services.nodeagent.datapath import _bpfsys
from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath._byteorder import be16_to_port, be32_to_ip
from services.nodeagent.datapath.errors import DatapathError
from services.nodeagent.datapath.twins import FlowEvent

DEFAULT_POLL_MS = 100


@dataclass(frozen=True)
class FlowRecord:
    """One verdict of the datapath (a new flow forwarded, or a packet dropped)."""

    time_ns: int            # CLOCK_MONOTONIC (bpf_ktime_get_ns)
    verdict: str            # "FORWARDED" | "DROPPED"
    reason: int
    reason_name: str
    direction: str          # policy direction of the endpoint: "ingress" | "egress"
    src_identity: int
    dst_identity: int
    src_ip: str
    dst_ip: str
    src_port: int           # ICMP: the echo id for requests, 0 for replies
    dst_port: int
    proto: int
    proto_name: str
    ifindex: int
    endpoint_id: int
    tcp_flags: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decode_event(raw: bytes) -> FlowRecord:
    """A ``struct flow_event`` as a record (pure)."""
    ev = FlowEvent.from_buffer_copy(raw[:ct.sizeof(FlowEvent)])
    return FlowRecord(
        time_ns=ev.timestamp_ns,
        verdict=c.VERDICT_NAMES.get(ev.verdict, str(ev.verdict)),
        reason=ev.reason,
        reason_name=c.REASON_NAMES.get(ev.reason, f"reason {ev.reason}"),
        direction=Direction(ev.direction).name.lower() if ev.direction in (0, 1) else "?",
        src_identity=ev.src_identity,
        dst_identity=ev.dst_identity,
        src_ip=be32_to_ip(ev.saddr),
        dst_ip=be32_to_ip(ev.daddr),
        src_port=be16_to_port(ev.sport),
        dst_port=be16_to_port(ev.dport),
        proto=ev.proto,
        proto_name=PROTO_NAMES.get(ev.proto, str(ev.proto)),
        ifindex=ev.ifindex,
        endpoint_id=ev.endpoint_id,
        tcp_flags=ev.tcp_flags,
    )


class FlowReader:
    """Consumer of one node's pinned verdict ring buffer."""

    def __init__(self, node: str) -> None:
        path = c.pin_dir(node) / c.MAP_EVENTS
        try:
            self._fd = _bpfsys.obj_get(str(path))
        except OSError as exc:
            raise DatapathError(f"ring buffer {path}: {exc.strerror}") from exc
        self._pending: list[FlowRecord] = []
        self._cb = _RINGBUF_CB_TYPE(self._on_event)   # kept alive as long as the manager
        self._mgr = bcclib.bpf_new_ringbuf(self._fd, self._cb, None)
        if not self._mgr:
            os.close(self._fd)
            raise DatapathError(f"ring buffer {path}: cannot map it")
        self._lock = threading.Lock()

    def _on_event(self, _ctx: Any, data: Any, size: int) -> int:
        self._pending.append(decode_event(ct.string_at(data, size)))
        return 0

    def poll(self, timeout_ms: int = DEFAULT_POLL_MS) -> list[FlowRecord]:
        """Wait up to ``timeout_ms`` for events; return those that arrived (maybe none)."""
        with self._lock:
            if not self._mgr:
                raise DatapathError("flow reader is closed")
            bcclib.bpf_poll_ringbuf(self._mgr, timeout_ms)
            out, self._pending = self._pending, []
        return out

    def drain(self) -> list[FlowRecord]:
        """Return what is queued right now without waiting."""
        with self._lock:
            bcclib.bpf_consume_ringbuf(self._mgr)
            out, self._pending = self._pending, []
        return out

    def run(self, callback: Callable[[FlowRecord], None], stop: threading.Event,
            timeout_ms: int = DEFAULT_POLL_MS) -> None:
        """Deliver records to ``callback`` until ``stop`` is set (run it in a thread)."""
        while not stop.is_set():
            for rec in self.poll(timeout_ms):
                callback(rec)

    async def aiter(self, timeout_ms: int = DEFAULT_POLL_MS) -> AsyncIterator[FlowRecord]:
        """Records as an async iterator; polling happens in the default executor."""
        loop = asyncio.get_running_loop()
        while self._mgr:
            for rec in await loop.run_in_executor(None, self.poll, timeout_ms):
                yield rec

    def close(self) -> None:
        with self._lock:
            if self._mgr:
                bcclib.bpf_free_ringbuf(self._mgr)
                self._mgr = None
                os.close(self._fd)

    def __enter__(self) -> FlowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
