"""Two allocator processes racing on one KV bucket never share or split a number."""

from __future__ import annotations

import json
import subprocess
import sys

import msgpack

from services.common import contract
from services.common.bus import Bus
from services.common.kvstore import JetStreamStore
from tests.support.procs import REPO

SETS = 1000


async def test_two_processes_racing_on_1000_label_sets(bus: Bus, nats_url: str) -> None:
    await bus.key_value(contract.KV_IDENTITIES)
    procs = [subprocess.Popen([sys.executable, "-m", "tests.support.alloc_worker", nats_url,
                               str(SETS), str(seed)], cwd=REPO, stdout=subprocess.PIPE)
             for seed in (1, 2)]
    try:
        outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    a, b = outs[0]["ids"], outs[1]["ids"]
    assert len(a) == len(b) == SETS
    assert a == b                                  # one number per set, whoever asked
    assert len(set(a.values())) == SETS            # no number serves two sets
    store = JetStreamStore(await bus.js.key_value(contract.KV_IDENTITIES))
    keys = await store.keys()
    # Exactly one reservation and one master key per set: losers gave theirs back.
    assert sum(k.startswith("id.") for k in keys) == SETS
    assert sum(k.startswith("labels.") for k in keys) == SETS
    for name, num in list(a.items())[:50]:
        got = await store.get(f"id.{num}")
        assert got is not None and msgpack.unpackb(got[0])["labels"] == [f"k8s:app={name}"]
