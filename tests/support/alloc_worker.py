"""A separate process allocating identities: ``python -m tests.support.alloc_worker URL N SEED``.

Allocates label sets ``k8s:app=set-0 .. set-(N-1)`` in an order shuffled by SEED, many at once,
and prints ``{"set-i": number}`` as JSON.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys

from services.common import contract
from services.common.bus import Bus
from services.common.kvstore import JetStreamStore
from services.common.labels import Labels
from services.identity.allocator import Allocator

CONCURRENCY = 32


async def main(url: str, n: int, seed: int) -> None:
    bus = await Bus.connect(url, f"alloc-{seed}")
    allocator = Allocator(JetStreamStore(await bus.key_value(contract.KV_IDENTITIES)))
    await allocator.load()
    names = [f"set-{i}" for i in range(n)]
    random.Random(seed).shuffle(names)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(name: str) -> tuple[str, int]:
        async with gate:
            return name, (await allocator.allocate(Labels.parse([f"k8s:app={name}"]))).id

    result = dict(await asyncio.gather(*(one(n) for n in names)))
    await bus.close()
    json.dump({"ids": result, "conflicts": allocator.conflicts}, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
