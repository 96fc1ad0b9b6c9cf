"""The replay commands on a recorded incident: a drop before a policy fix, the fix, and what
the live bus and services held at each moment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.common.embedded import start_nats
from tests.support.cli import cilia
from tests.support.scenario import NS, Incident

CNP = "CiliumNetworkPolicy/shop/backend-allow-frontend"
FROM, TO = f"{NS}/frontend", f"{NS}/backend"


def _ids(inc: Incident) -> tuple[int, int]:
    """Identities of frontend and backend, from what the bus held."""
    by_pod = {d.event.data["pod"]: d.event.data["identity"]
              for s, d in inc.snapshot_broken.items() if s.startswith("cilia.ipcache.")}
    return by_pod[FROM], by_pod[TO]


def _explain(inc: Incident, at: str, *extra: str) -> dict[str, Any]:
    doc: dict[str, Any] = inc.json("replay", "explain", "--at", at, "--from", FROM, "--to", TO,
                                   "--dport", "8080/TCP", *extra)
    return doc


def _fix_seq(inc: Incident, ident: int) -> int:
    """Sequence of the fixed policy's rules for ``ident``, as the live bus held them."""
    return inc.snapshot_fixed[f"cilia.policy.rules.{ident}"].seq


def test_explain_reproduces_the_drop_before_the_fix(incident: Incident) -> None:
    fe, be = _ids(incident)
    before = _explain(incident, incident.time_broken)
    assert before["verdict"] == "DENIED"
    egress, ingress = before["sides"]
    assert (egress["direction"], egress["verdict"], egress["node"]) == ("egress", "ALLOW",
                                                                         "node1")
    assert (ingress["direction"], ingress["verdict"], ingress["node"]) == ("ingress", "DENY",
                                                                            "node2")
    assert ingress["rules"] == [f"{CNP} rule 0 default-deny"]
    # The deciding entry of a default deny: the endpoint's enforcement flag, put there by the
    # broken policy's rules for the backend, which the bus held at that moment.
    [entry] = ingress["entries"]
    assert (entry["map"], entry["key"]) == ("endpoints", "10.244.2.11")
    assert entry["value"]["enforce_ingress"] is True
    live_rules = incident.snapshot_broken[f"cilia.policy.rules.{be}"]
    assert entry["event"]["seq"] == live_rules.seq
    assert entry["event"]["subject"] == f"cilia.policy.rules.{be}"
    [policy_event] = ingress["policy_events"]
    live_cnp = incident.snapshot_broken["cilia.src.ciliumnetworkpolicy.shop.backend-allow-frontend"]
    assert policy_event["seq"] == live_cnp.seq
    assert policy_event["trace_id"] and policy_event["trace_id"] in live_cnp.headers["traceparent"]
    assert entry["event"]["trace_id"] == policy_event["trace_id"]   # one change, one trace

    after = _explain(incident, incident.time_fixed)
    assert after["verdict"] == "ALLOWED"
    ingress = after["sides"][1]
    assert ingress["verdict"] == "ALLOW"
    assert ingress["rules"] == [f"{CNP} rule 0 ingress[0]"]
    [entry] = ingress["entries"]
    assert (entry["map"], entry["key"], entry["value"]) == (
        "policy", f"{be} ingress {fe} TCP/8080", "ALLOW")
    assert entry["event"]["seq"] > incident.seq_broken
    assert entry["event"]["seq"] == _fix_seq(incident, be)
    # The text form says the same.
    res = incident.cilia("replay", "explain", "--seq", str(incident.seq_broken), "--from", FROM,
                         "--to", TO, "--dport", "8080/TCP")
    assert res.returncode == 0, res.stderr
    assert "Final verdict: DENIED" in res.stdout
    assert f"rule   {CNP} rule 0 default-deny" in res.stdout


def test_explain_names_an_unknown_pod(incident: Incident) -> None:
    res = incident.cilia("replay", "explain", "--seq", str(incident.seq_broken), "--from",
                         f"{NS}/nope", "--to", TO, "--dport", "8080/TCP")
    assert res.returncode == 1
    assert f"pod {NS}/nope does not exist" in res.stderr
    assert res.stdout == ""


def test_state_equals_what_the_bus_and_services_held(incident: Incident) -> None:
    doc = incident.json("replay", "state", "--seq", str(incident.seq_broken), "--node", "node2")
    assert doc["seq"] == incident.seq_broken
    cluster = doc["maps"]["cluster"]
    snap = incident.snapshot_broken
    live = {t: [d.event.data for d in snap.values() if d.event.type == t]
            for t in ("identity.upsert", "ipcache.upsert", "policy.rules", "policy.selector",
                      "policy.status")}
    assert cluster["identities"] == {str(e["id"]): sorted(e["labels"])
                                     for e in live["identity.upsert"]}
    assert {p: v["identity"] for p, v in cluster["ipcache"].items()} == \
        {e["prefix"]: e["identity"] for e in live["ipcache.upsert"]}
    # Subjects with compiled rules (the bus also holds an empty message per unselected
    # identity: its "policy computed" mark, which the subjects map leaves out).
    assert {int(k): v["rules"] for k, v in cluster["subjects"].items()} == \
        {e["identity"]: [f"{r['kind']}/{r['namespace']}/{r['name']} rule {r['rule']} "
                         "default-deny" for r in e["rules"]] for e in live["policy.rules"]
         if e["rules"]}
    assert all(e["op"] == "set" for e in live["policy.selector"])
    assert {k: v["members"] for k, v in cluster["selectors"].items()} == \
        {e["selector"]: sorted(e["members"]) for e in live["policy.selector"]}
    [status] = live["policy.status"]
    assert cluster["policies"] == {CNP: {"rules": 1, "revision": status["revision"],
                                         "status": "OK", "error": ""}}
    stats = incident.policy_stats_broken
    assert (len(cluster["policies"]), len(cluster["selectors"]), len(cluster["subjects"])) == \
        (stats["policies"], stats["selectors"], stats["subjects"])
    # node2's desired maps: its two pods, the backend enforcing ingress on the wrong port.
    fe, be = _ids(incident)
    node = doc["maps"]["node/node2"]
    assert {ip: v["pod"] for ip, v in node["endpoints"].items()} == {
        "10.244.2.11": f"{NS}/backend", "10.244.2.12": f"{NS}/database"}
    assert node["endpoints"]["10.244.2.11"]["enforce_ingress"] is True
    assert node["policy"][f"{be} ingress {fe} TCP/8081"] == "ALLOW"
    assert f"{be} ingress any ANY/any" not in node["policy"]
    assert node["ipcache"]["10.244.1.10/32"] == {"identity": fe,
                                                 "tunnel_endpoint": "172.31.0.11"}
    # Tables for people.
    res = incident.cilia("replay", "state", "--at", incident.time_broken, "--node", "node2")
    assert res.returncode == 0, res.stderr
    assert f"{be} ingress {fe} TCP/8081  ALLOW" in res.stdout
    res = incident.cilia("replay", "state", "--seq", "3", "--node", "node9")
    assert res.returncode == 1 and "node node9 is not in the history" in res.stderr


def test_diff_attributes_each_change_to_its_event(incident: Incident) -> None:
    fe, be = _ids(incident)
    doc = incident.json("replay", "diff", "--from", str(incident.seq_broken), "--to",
                        str(incident.seq_fixed), "--node", "node2")
    node = {(c["change"], c["key"]): c for c in doc["changes"]
            if c["scope"] == "node/node2" and c["map"] == "policy"}
    assert set(node) == {("added", f"{be} ingress {fe} TCP/8080"),
                         ("removed", f"{be} ingress {fe} TCP/8081")}
    fix_seq = _fix_seq(incident, be)
    for c in node.values():
        assert c["event"]["seq"] == fix_seq
        assert c["event"]["subject"] == f"cilia.policy.rules.{be}"
        assert c["event"]["type"] == "policy.rules"
    # Nothing else moved on node2; the policy's own revision did, by its object event.
    assert {(c["scope"], c["map"]) for c in doc["changes"]} == {
        ("node/node2", "policy"), ("cluster", "policies")}
    [cp] = [c for c in doc["changes"] if c["map"] == "policies"]
    assert cp["event"]["subject"] == "cilia.src.ciliumnetworkpolicy.shop.backend-allow-frontend" \
        or cp["event"]["type"] == "policy.status"
    # Over the whole incident the wrong port came and went: no net change for it; the
    # enforcement flag was set by the first version's rules.
    whole = incident.json("replay", "diff", "--from", str(incident.seq_pods), "--to",
                          incident.time_fixed, "--node", "node2")
    keys = {(c["map"], c["key"]): c for c in whole["changes"] if c["scope"] == "node/node2"}
    assert ("policy", f"{be} ingress {fe} TCP/8081") not in keys
    flag = keys[("endpoints", "10.244.2.11")]
    assert flag["change"] == "changed"
    assert (flag["old"]["enforce_ingress"], flag["new"]["enforce_ingress"]) == (False, True)
    assert flag["event"]["seq"] == incident.snapshot_broken[f"cilia.policy.rules.{be}"].seq
    assert keys[("policy", f"{be} ingress any ANY/any")]["change"] == "removed"


@pytest.fixture(scope="module")
def exported(incident: Incident) -> Path:
    path = incident.tmp / "history.cilia"
    res = incident.cilia("history", "export", "-o", str(path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"exported {incident.seq_fixed} events (seq 1..")
    return path


def test_exported_history_gives_the_same_answers_without_the_bus(
        incident: Incident, exported: Path, tmp_path: Path) -> None:
    fresh = start_nats(tmp_path / "fresh", log_file=tmp_path / "fresh.log")
    try:
        def offline(*args: str) -> Any:
            res = cilia("--nats-url", fresh.url, *args, "--file", str(exported), "-o", "json",
                        env={"CILIA_NATS_URL": fresh.url})
            assert res.returncode == 0, res.stderr
            return json.loads(res.stdout)

        for at in (incident.time_broken, incident.time_fixed):
            assert offline("replay", "explain", "--at", at, "--from", FROM, "--to", TO,
                           "--dport", "8080/TCP") == _explain(incident, at)
        live = incident.json("replay", "state", "--seq", str(incident.seq_broken), "--node",
                             "node1", "--node", "node2")
        off = offline("replay", "state", "--seq", str(incident.seq_broken), "--node", "node1",
                      "--node", "node2")
        assert off["maps"] == live["maps"] and off["source"].startswith("file ")
        assert offline("replay", "diff", "--from", "0", "--to", str(incident.seq_fixed),
                       "--node", "node2") == incident.json(
            "replay", "diff", "--from", "0", "--to", str(incident.seq_fixed), "--node", "node2")
        # The fresh bus never saw any of it.
        res = cilia("--nats-url", fresh.url, "replay", "state", "--seq", "100", "-o", "json")
        assert res.returncode != 0 or json.loads(res.stdout)["events"] == 0
    finally:
        fresh.stop()


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-9], "truncated"),
    (lambda b: b[:len(b) // 2], "truncated"),
    (lambda b: b[:200] + bytes([b[200] ^ 0x01]) + b[201:], "corrupt"),
    (lambda b: b + b"\x00", "corrupt"),
    (lambda b: b"not a history at all", "not a cilia history file"),
    (lambda b: b"", "empty or truncated"),
])
def test_damaged_history_file_is_a_clear_error(incident: Incident, exported: Path,
                                                tmp_path: Path, damage: Any,
                                                message: str) -> None:
    bad = tmp_path / "damaged.cilia"
    bad.write_bytes(damage(exported.read_bytes()))
    commands = [["replay", "state", "--seq", "20"]]
    if message == "truncated":   # every command reads files the same way; check it once
        commands += [["replay", "explain", "--seq", "20", "--from", FROM, "--to", TO,
                      "--dport", "8080"], ["replay", "diff", "--from", "1", "--to", "20"]]
    for args in commands:
        res = cilia("--nats-url", "nats://127.0.0.1:1", *args, "--file", str(bad))
        assert res.returncode == 1, res.stdout
        assert res.stdout == ""
        assert f"history file {bad}" in res.stderr and message in res.stderr, res.stderr


def test_export_that_cannot_be_written_leaves_nothing(incident: Incident, tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "h.cilia"
    res = incident.cilia("history", "export", "-o", str(target))
    assert res.returncode == 1
    assert "cannot write history file" in res.stderr
    assert not target.parent.exists()
    assert list(tmp_path.iterdir()) == []


def test_trace_show_renders_the_fix_as_one_trace(incident: Incident) -> None:
    trace_id = _explain(incident, incident.time_fixed)["sides"][1]["policy_events"][0]["trace_id"]
    files = [a for f in incident.span_files for a in ("--file", str(f))]
    res = cilia("trace", "show", trace_id, *files, "-o", "json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["spans"]
    by_name = {(r["service"], r["name"]): r for r in rows}
    root = rows[0]
    assert (root["service"], root["name"], root["depth"]) == ("cilia-cli", "cilia apply", 0)
    publish = by_name[("cilia-cli", "publish object.upsert")]
    consume = by_name[("policy", "policy object.upsert")]
    assert consume["parent_id"] == publish["span_id"]       # across processes
    assert consume["depth"] > publish["depth"] > root["depth"]
    assert ("policy", "publish policy.rules") in by_name
    assert all(r["offset_ms"] >= 0 and r["duration_ms"] >= 0 for r in rows)
    text = cilia("trace", "show", trace_id, *files)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"Trace {trace_id}: {len(rows)} spans, 2 services "
                               "(cilia-cli, policy)")
    assert lines[1].startswith("cilia-cli: cilia apply ")
    assert any(line.startswith("      policy: policy object.upsert") for line in lines)
    missing = cilia("trace", "show", "0" * 32, *files)
    assert missing.returncode == 1 and f"no span of trace {'0' * 32}" in missing.stderr


def test_export_since_keeps_the_tail_and_says_so(incident: Incident) -> None:
    path = incident.tmp / "tail.cilia"
    res = incident.cilia("history", "export", "-o", str(path), "--since",
                         str(incident.seq_broken))
    assert res.returncode == 0, res.stderr
    assert f"(seq {incident.seq_broken}..{incident.seq_fixed})" in res.stdout
    res = incident.cilia("replay", "diff", "--from", str(incident.seq_broken), "--to",
                         str(incident.seq_fixed), "--file", str(path), "-o", "json")
    assert res.returncode == 0, res.stderr
    assert f"starts at seq {incident.seq_broken}" in res.stderr
    # The state before the file's first event is not in it: an error, not a wrong answer.
    res = incident.cilia("replay", "state", "--seq", "3", "--file", str(path))
    assert res.returncode == 1 and "before the first event the history holds" in res.stderr


def test_explain_between_pods_of_one_node(incident: Incident) -> None:
    doc = incident.json("replay", "explain", "--seq", str(incident.seq_fixed), "--from", TO,
                        "--to", f"{NS}/database", "--dport", "5432/TCP")
    assert doc["verdict"] == "ALLOWED"
    for side in doc["sides"]:
        assert side["node"] == "node2"
        assert side["reason"] == "no rule makes this direction default-deny (open)"
        [entry] = side["entries"]
        assert entry["key"].endswith(f"{side['direction']} any ANY/any")
        assert entry["value"] == "ALLOW" and entry["event"]["type"] == "ipcache.upsert"
