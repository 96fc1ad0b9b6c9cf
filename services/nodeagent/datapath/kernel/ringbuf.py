"""Verdict events from the pinned ``events`` ring buffer as Python flow records (kernel
access; the records and their decoding are :mod:`services.nodeagent.datapath.maps.events`).

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
from typing import Any

from bcc.libbcc import _RINGBUF_CB_TYPE
from bcc.libbcc import lib as bcclib

from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath.errors import DatapathError
from services.nodeagent.datapath.kernel import _bpfsys
from services.nodeagent.datapath.maps import events
from services.nodeagent.datapath.maps.events import FlowRecord, decode_event

DEFAULT_POLL_MS = 100


class FlowReader:
    """Consumer of one node's pinned verdict ring buffer."""

    def __init__(self, node: str) -> None:
        path = c.pin_dir(node) / events.NAME
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
