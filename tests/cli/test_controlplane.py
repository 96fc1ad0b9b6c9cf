"""`cilia up` starts exactly what `cilia down` stops; identity list and status read the bus."""

from __future__ import annotations

import json
import os
from pathlib import Path

from services.common.embedded import free_port
from tests.support.cli import cilia

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "three-tier"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/cmdline").read_bytes() != b""


def test_up_apply_list_status_down(tmp_path: Path) -> None:
    env = {"CILIA_STATE_DIR": str(tmp_path)}
    port = free_port()
    res = cilia("up", "--port", str(port), "--replicas", "identity=2", env=env)
    try:
        assert res.returncode == 0, res.stderr
        state = json.loads((tmp_path / "up.json").read_text())
        pids = {p["name"]: p["pid"] for p in state["processes"]}
        assert set(pids) == {"nats-server", "identity-0", "identity-1", "policy-0", "lb-0"}
        assert all(_alive(p) for p in pids.values())
        assert state["nats_url"] == f"nats://127.0.0.1:{port}"
        again = cilia("up", "--port", str(free_port()), env=env)
        assert again.returncode == 1 and "already running" in again.stderr

        res = cilia("apply", "-f", str(EXAMPLES / "namespace.yaml"), "-f",
                    str(EXAMPLES / "pods.yaml"), env=env)
        assert res.returncode == 0, res.stderr
        rows = []
        for _ in range(50):
            rows = json.loads(cilia("identity", "list", "-o", "json", env=env).stdout)
            if len(rows) == 11:
                break
        assert [r["id"] for r in rows[:8]] == list(range(1, 9))
        apps = {lbl for r in rows for lbl in r["labels"] if lbl.startswith("k8s:app=")}
        assert apps == {"k8s:app=frontend", "k8s:app=backend", "k8s:app=database"}
        table = cilia("identity", "list", env=env).stdout.splitlines()
        assert table[0].split() == ["ID", "LABELS"]
        assert table[1].split() == ["1", "reserved:host"]
        # Labels of one identity: one per line, continuation lines carry no ID.
        first_app = next(i for i, line in enumerate(table) if "k8s:app=" in line)
        assert table[first_app + 1].startswith(" ")

        status = json.loads(cilia("status", "-o", "json", env=env).stdout)
        assert sorted((s["service"], s["state"]) for s in status["services"]) == [
            ("identity", "ok"), ("identity", "ok"), ("lb", "ok"), ("policy", "ok")]
        assert status["streams"][0]["messages"] >= 4
    finally:
        down = cilia("down", "--purge", env=env)
    assert down.returncode == 0
    for name, pid in pids.items():
        assert f"stopped {name} (pid {pid})" in down.stdout
    assert not any(_alive(p) for p in pids.values())
    assert not (tmp_path / "up.json").exists()


def test_external_nats_starts_nothing_embedded(tmp_path: Path, nats_url: str) -> None:
    env = {"CILIA_STATE_DIR": str(tmp_path), "CILIA_NATS_URL": nats_url}
    res = cilia("up", env=env)
    try:
        assert res.returncode == 0, res.stderr
        state = json.loads((tmp_path / "up.json").read_text())
        assert [p["name"] for p in state["processes"]] == ["identity-0", "policy-0", "lb-0"]
        assert state["embedded"] is False and state["nats_url"] == nats_url
    finally:
        cilia("down", env=env)


def test_up_fails_cleanly_when_the_port_is_taken(tmp_path: Path, nats_url: str) -> None:
    port = int(nats_url.rsplit(":", 1)[1])
    res = cilia("up", "--port", str(port), env={"CILIA_STATE_DIR": str(tmp_path)})
    assert res.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in res.stderr
    assert not (tmp_path / "up.json").exists()
    assert "Traceback" not in res.stderr


def test_no_bus_is_a_clear_error_not_a_hang() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    res = cilia("--nats-url", url, "identity", "list", timeout=20)
    assert res.returncode == 1
    assert f"Error: cannot reach NATS at {url}" in res.stderr
    assert "Traceback" not in res.stderr
