"""Bad messages in the history (issue 10): services still start, readers still see objects.

Each service's last input is a bad message (a garbage payload on a real pod's subject, a
valid envelope with a bad value inside on a real policy's subject, a future schema version
on a Service's subject): the identity, policy and lb services replay past them and become
ready, the policy service computes both policies, and `cilia policy get`, `cilia policy
trace` and `cilia identity list` still show every object whose last message is bad.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import msgpack

from services.cli import manifests, source
from services.common import contract
from services.common.bus import Bus
from services.common.runner import STATE_OK, collect_status
from services.common.schemas import SCHEMA_VERSION
from tests.support.busread import live, wait_for
from tests.support.cli import cilia
from tests.support.procs import REPO, service

EXAMPLES = REPO / "examples" / "three-tier"
# The Exercise 1 pods as bare pods with addresses (no lab runs them here).
PODS = REPO / "tests" / "support" / "data" / "three-tier-pods.yaml"
THREE_TIER = [str(EXAMPLES / "00-namespace.yaml"), str(PODS), str(EXAMPLES / "policy.yaml")]
NS = "production"
POLICY = "backend-allow-frontend"
READY_S = 30.0


def _bad_value(data: dict[str, Any]) -> bytes:
    """``data`` as an ``object.upsert`` with a list where the object's name goes."""
    obj = {**data["object"], "metadata": {**data["object"]["metadata"], "name": [data["name"]]}}
    return msgpack.packb({"v": SCHEMA_VERSION, "type": "object.upsert",
                          "data": {**data, "object": obj}})


async def _ready(bus: Bus, names: set[str]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + READY_S
    while True:
        replies = [r for r in await collect_status(bus) if r["service"] in names]
        if {r["service"] for r in replies if r["state"] == STATE_OK} == names:
            return replies
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready after {READY_S}s: {replies}")
        await asyncio.sleep(0.2)


async def test_services_whose_last_input_is_bad_start_and_readers_see_every_object(
        bus: Bus, nats_url: str, tmp_path: Path) -> None:
    await source.apply(bus, manifests.load(THREE_TIER))
    pod_subject = contract.source_subject("Pod", NS, "frontend")
    cnp_subject = contract.source_subject("CiliumNetworkPolicy", NS, POLICY)
    cnp = await bus.last_event(cnp_subject)
    assert cnp is not None
    for subject, payload in [
            (pod_subject, b"\xc1 garbage"),
            (contract.source_subject("Namespace", "", NS), msgpack.packb([1, 2, 3])),
            (cnp_subject, _bad_value(cnp.data)),
            (contract.source_subject("Service", NS, "backend"),
             msgpack.packb({"v": SCHEMA_VERSION + 1, "type": "object.upsert", "data": {}}))]:
        await bus.js.publish(subject, payload, stream=contract.HISTORY_STREAM)
    with service("services.identity", nats_url, log=tmp_path / "identity.log"), \
            service("services.policy", nats_url, log=tmp_path / "policy.log"), \
            service("services.lb", nats_url, log=tmp_path / "lb.log"):
        replies = await _ready(bus, {"identity", "policy", "lb"})
        assert all(r["stats"]["rejected"] >= 1 for r in replies), [
            (r["service"], r["stats"]) for r in replies]
        snap = await wait_for(bus, ["cilia.policy.>", "cilia.identity.>"],
                              lambda s: {d["name"] for d in live(s, "policy.status")
                                         if d["op"] == "set"} == {POLICY,
                                                                  "database-allow-backend"})
        apps = {lb for d in live(snap, "identity.upsert") for lb in d["labels"]
                if lb.startswith("k8s:app=")}
        # the frontend pod kept its identity despite the garbage last on its subject
        assert apps == {"k8s:app=frontend", "k8s:app=backend", "k8s:app=database"}
        got = cilia("--nats-url", nats_url, "policy", "get", "-o", "json")
        assert got.returncode == 0, got.stderr
        assert {r["name"]: r["status"] for r in json.loads(got.stdout)} == {
            POLICY: "OK", "database-allow-backend": "OK"}
        trace = cilia("--nats-url", nats_url, "policy", "trace", "--src", "app=frontend",
                      "--src-namespace", NS, "--dst", "app=backend", "--dst-namespace", NS,
                      "--dport", "8080/TCP", "-o", "json")
        assert trace.returncode == 0, trace.stderr
        assert json.loads(trace.stdout)["verdict"] == "ALLOWED"
        assert "Traceback" not in trace.stderr + got.stderr
