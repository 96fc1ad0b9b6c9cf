"""Fixtures every tier shares: one isolated nats-server with JetStream on a free port, a
uniquely named node whose pins are removed, an OTLP receiver.

This server is open (no TLS, no users): the tests that use it check what a message means to a
codec, a service or a reducer, and an open bus lets them publish any event on any subject and
reset the streams between tests. Who may publish what is tested on a bus secured exactly as
`cilia up` secures it (``tests/support/securebus.py``,
``tests/bus/common/test_security.py``), and every
end-to-end test runs on one (``tests/support/cluster.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from nats.js.errors import NotFoundError

from services.common import contract
from services.common.bus import Bus, HistoryConfig
from services.common.embedded import NatsServer, start_nats
from services.nodeagent.datapath import unpin
from tests.support.otlp import Receiver


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    store = tmp_path_factory.mktemp("nats-store")
    server = start_nats(Path(store), log_file=Path(store) / "nats.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


STREAM_RESET_TRIES = 5


async def _delete_stream(b: Bus, name: str) -> None:
    """Delete a stream and wait until the server no longer knows it."""
    with contextlib.suppress(NotFoundError):
        await b.js.delete_stream(name)
    for _ in range(100):
        try:
            await b.js.stream_info(name)
        except NotFoundError:
            return
        await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    """A connection to a bus whose history stream and KV buckets start empty."""
    b = await Bus.connect(nats_server.url, "test")
    for name in (f"KV_{contract.KV_IDENTITIES}", f"KV_{contract.KV_SERVICES}",
                 contract.HISTORY_STREAM):
        await _delete_stream(b, name)
    for _ in range(STREAM_RESET_TRIES):
        info = await b.ensure_history(HistoryConfig())
        if info.state.messages == 0:
            break
        # A stream re-created right after its deletion has been seen to come back with its
        # old messages on a loaded machine: delete it again.
        await _delete_stream(b, contract.HISTORY_STREAM)
    else:
        raise RuntimeError("could not start from an empty history stream")
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
def node_name() -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        unpin(name)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real OTLP/HTTP receiver (the tracing tests')."""
    r = Receiver()
    try:
        yield r
    finally:
        r.close()
