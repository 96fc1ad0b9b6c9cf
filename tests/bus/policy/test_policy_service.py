"""The policy service on a real bus: compiled rules, selector deltas, status, restart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli import manifests, source
from services.common import contract
from services.common.bus import Bus
from tests.support.busread import count, live, wait_for
from tests.support.cli import cilia
from tests.support.objects import manifests as objs
from tests.support.objects import pod
from tests.support.procs import REPO, service

EXAMPLES = REPO / "examples" / "three-tier"
# The Exercise 1 pods as bare pods with addresses (no lab runs them here).
PODS = REPO / "tests" / "support" / "data" / "three-tier-pods.yaml"
THREE_TIER = [str(EXAMPLES / "00-namespace.yaml"), str(PODS), str(EXAMPLES / "policy.yaml")]
POLICY_OUT = ["cilia.policy.>"]


@pytest.fixture
def control_plane(bus: Bus, nats_url: str, tmp_path: Path) -> Iterator[None]:
    with service("services.identity", nats_url, log=tmp_path / "identity.log"), \
            service("services.policy", nats_url, log=tmp_path / "policy.log"):
        yield


def _rules(snap: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {d["identity"]: d for d in live(snap, "policy.rules") if d["rules"]}


def _status(snap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in live(snap, "policy.status")}


async def _three_tier(bus: Bus) -> dict[str, Any]:
    await source.apply(bus, manifests.load(THREE_TIER))
    return await wait_for(bus, [*POLICY_OUT, "cilia.identity.>"],
                          lambda s: len(_status(s)) == 2 and len(_rules(s)) == 2)


async def _new_pod_joins_selectors(bus: Bus, name: str, labels: dict[str, str],
                                   ip: str) -> int:
    """Apply a pod; wait for its identity in the ipcache, then for a selector delta adding
    it; returns the identity."""
    await source.apply(bus, objs(pod(name, "production", labels, ip=ip)))
    snap = await wait_for(bus, ["cilia.ipcache.>"], lambda s: any(
        d["prefix"] == f"{ip}/32" for d in live(s, "ipcache.upsert")))
    ident: int = next(d["identity"] for d in live(snap, "ipcache.upsert")
                      if d["prefix"] == f"{ip}/32")
    await wait_for(bus, POLICY_OUT, lambda s: any(
        ident in (d.get("added") or ()) for d in live(s, "policy.selector")))
    return ident


def _trace(url: str, src: str, dst: str, port: str) -> dict[str, Any]:
    res = cilia("--nats-url", url, "policy", "trace", "--src", f"app={src}",
                "--src-namespace", "production", "--dst", f"app={dst}",
                "--dst-namespace", "production", "--dport", port, "-o", "json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


async def test_three_tier_verdict_matrix_from_the_live_bus(bus: Bus, nats_url: str,
                                                          control_plane: None) -> None:
    await _three_tier(bus)
    matrix = {(s, d, p): _trace(nats_url, s, d, p)["verdict"] for s, d, p in [
        ("frontend", "backend", "8080/TCP"), ("backend", "database", "5432/TCP"),
        ("frontend", "database", "5432/TCP"), ("database", "backend", "8080/TCP"),
        ("frontend", "backend", "9090/TCP"), ("backend", "frontend", "80/TCP")]}
    assert matrix == {
        ("frontend", "backend", "8080/TCP"): "ALLOWED",
        ("backend", "database", "5432/TCP"): "ALLOWED",
        ("frontend", "database", "5432/TCP"): "DENIED",
        ("database", "backend", "8080/TCP"): "DENIED",
        ("frontend", "backend", "9090/TCP"): "DENIED",
        ("backend", "frontend", "80/TCP"): "ALLOWED",   # frontend selects no policy: open
    }
    denied = _trace(nats_url, "frontend", "database", "5432/TCP")
    text = json.dumps(denied)
    assert "database-allow-backend" in text


async def test_rules_refer_to_selectors_whose_members_are_identities(
        bus: Bus, control_plane: None) -> None:
    snap = await _three_tier(bus)
    by_app = {lbl.split("=", 1)[1]: d["id"] for d in live(snap, "identity.upsert")
              for lbl in d["labels"] if lbl.startswith("k8s:app=")}
    rules = _rules(snap)
    assert set(rules) == {by_app["backend"], by_app["database"]}
    backend = rules[by_app["backend"]]
    assert backend["ingress_enforced"] and not backend["egress_enforced"]
    peer_selector = backend["rules"][0]["entries"][0]["selectors"][0]
    members: dict[str, set[int]] = {}
    sub_events: list[dict[str, Any]] = []

    async def keep(d: Any) -> None:
        sub_events.append(d.event.data)

    sub = await bus.consume(["cilia.policy.selector.>"], keep)
    await sub.caught_up.wait()
    await sub.stop()
    for e in sub_events:
        if e["op"] == "set":
            members[e["selector"]] = set(e["members"])
        elif e["op"] == "delta":
            members[e["selector"]] |= set(e["added"])
            members[e["selector"]] -= set(e["removed"])
    assert members[peer_selector] == {by_app["frontend"]}


async def test_one_new_identity_publishes_only_its_deltas(bus: Bus,
                                                          control_plane: None) -> None:
    await _three_tier(bus)
    before = await count(bus, "cilia.policy.>")
    await _new_pod_joins_selectors(bus, "frontend-2",
                                   {"app": "frontend", "tier": "web", "version": "2"},
                                   "10.244.1.50")
    after = await count(bus, "cilia.policy.>")
    # The new frontend identity joins the frontend selectors (backend's peer, the database's
    # deny peer) and whichever namespace-wide selectors exist: a few deltas, nothing else.
    assert 1 <= after - before <= 4
    snap = await bus.snapshot(["cilia.policy.>"])
    assert len(_rules(snap)) == 2     # no subject republished


async def test_deleting_a_policy_removes_exactly_its_contributions(
        bus: Bus, nats_url: str, control_plane: None) -> None:
    snap = await _three_tier(bus)
    db_identity = next(i for i, d in _rules(snap).items()
                       if d["rules"][0]["name"] == "database-allow-backend")
    res = cilia("--nats-url", nats_url, "policy", "delete", "database-allow-backend",
                "-n", "production")
    assert res.stdout.strip() == "ciliumnetworkpolicy/database-allow-backend deleted"
    snap = await wait_for(bus, POLICY_OUT, lambda s: len(_rules(s)) == 1)
    assert db_identity not in _rules(snap)
    assert "database-allow-backend" not in _status(snap) or \
        _status(snap)["database-allow-backend"]["op"] == "delete"
    assert _trace(nats_url, "frontend", "database", "5432/TCP")["verdict"] == "ALLOWED"


async def test_an_invalid_new_version_is_rejected_and_the_old_one_stays(
        bus: Bus, nats_url: str, control_plane: None, tmp_path: Path) -> None:
    await _three_tier(bus)
    docs = list(yaml.safe_load_all((EXAMPLES / "policy.yaml").read_text()))
    bad = docs[0]
    bad["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = "99999"
    # The CLI refuses it whole...
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(yaml.safe_dump(bad))
    res = cilia("--nats-url", nats_url, "policy", "import", "-f", str(bad_file))
    assert res.returncode == 1
    assert "spec.ingress[0].toPorts[0].ports[0].port" in res.stderr
    # ...and a source that skips validation gets it rejected by the service.
    await bus.publish(contract.source_subject(bad["kind"], "production", bad["metadata"]["name"]),
                      "object.upsert", {"kind": bad["kind"], "namespace": "production",
                                        "name": bad["metadata"]["name"], "object": bad},
                      msg_id="bad-1")
    snap = await wait_for(bus, POLICY_OUT,
                          lambda s: _status(s)["backend-allow-frontend"]["op"] == "error")
    assert "port" in _status(snap)["backend-allow-frontend"]["error"]
    assert _trace(nats_url, "frontend", "backend", "8080/TCP")["verdict"] == "ALLOWED"
    assert _trace(nats_url, "frontend", "backend", "9090/TCP")["verdict"] == "DENIED"


async def test_restart_republishes_nothing(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    with service("services.identity", nats_url, log=tmp_path / "i.log"):
        with service("services.policy", nats_url, log=tmp_path / "p1.log"):
            await _three_tier(bus)
        stored = await count(bus, "cilia.policy.>")
        with service("services.policy", nats_url, log=tmp_path / "p2.log"):
            await _new_pod_joins_selectors(bus, "late",
                                           {"app": "backend", "tier": "api", "v": "2"},
                                           "10.244.1.77")
        # Only the late pod's deltas were added: nothing was published again.
        assert stored < await count(bus, "cilia.policy.>") <= stored + 4


async def test_an_identity_no_policy_selects_gets_an_empty_computed_policy(
        bus: Bus, control_plane: None) -> None:
    await _three_tier(bus)
    await source.apply(bus, objs(pod("lonely", "production", {"app": "lonely"},
                                     ip="10.244.1.88")))
    snap = await wait_for(bus, ["cilia.ipcache.>"], lambda s: any(
        d["prefix"] == "10.244.1.88/32" for d in live(s, "ipcache.upsert")))
    lonely = next(d["identity"] for d in live(snap, "ipcache.upsert")
                  if d["prefix"] == "10.244.1.88/32")
    snap = await wait_for(bus, POLICY_OUT, lambda s: any(
        d["identity"] == lonely for d in live(s, "policy.rules")))
    [doc] = [d for d in live(snap, "policy.rules") if d["identity"] == lonely]
    # "Its policy is computed": no rule selects it, open both ways.
    assert doc["rules"] == [] and not doc["ingress_enforced"] and not doc["egress_enforced"]
    # Every pod identity has one; reserved identities have none (no rule selects them).
    idents = {d["id"] for d in live(await bus.snapshot(["cilia.identity.>"]),
                                    "identity.upsert")}
    marked = {d["identity"] for d in live(snap, "policy.rules")}
    assert {i for i in idents if i >= 256} <= marked and not {i for i in marked if i < 256}
