"""Session-wide fixtures: one isolated nats-server with JetStream on a free port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from nats.js.errors import NotFoundError

from services.common import subjects
from services.common.bus import Bus
from services.common.embedded import NatsServer, start_nats


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


@pytest_asyncio.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    """A connection to a bus whose history stream and KV buckets start empty."""
    b = await Bus.connect(nats_server.url, "test")
    with contextlib.suppress(NotFoundError):
        await b.js.delete_stream(subjects.HISTORY_STREAM)
    for name in (subjects.KV_IDENTITIES, subjects.KV_SERVICES):
        with contextlib.suppress(NotFoundError):
            await b.js.delete_key_value(name)
    await b.ensure_history()
    try:
        yield b
    finally:
        await b.close()
