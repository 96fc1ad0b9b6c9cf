"""`cilia up` starts exactly what `cilia down` stops; identity list and status read the bus."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from services.common.embedded import free_port
from tests.support.cli import cilia
from tests.support.procs import REPO
from tests.support.securebus import secured_bus

EXAMPLES = REPO / "examples" / "three-tier"
# The Exercise 1 pods as bare pods with addresses (no lab runs them here).
PODS = REPO / "tests" / "support" / "data" / "three-tier-pods.yaml"


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
        assert state["nats_url"] == f"tls://127.0.0.1:{port}"      # TLS, one user per role
        assert state["bus"] == {"creds": str(tmp_path / "bus" / "creds"),
                                "ca": str(tmp_path / "bus" / "tls" / "ca.pem"),
                                "cert": None, "key": None}
        assert "TLS and per-role credentials" in res.stdout
        again = cilia("up", "--port", str(free_port()), env=env)
        assert again.returncode == 1 and "already running" in again.stderr

        res = cilia("apply", "-f", str(EXAMPLES / "00-namespace.yaml"), "-f",
                    str(PODS), env=env)
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
        assert (status["nats"]["tls"], status["nats"]["auth"], status["nats"]["role"]) == (
            True, True, "cli")
        line = next(x for x in cilia("status", env=env).stdout.splitlines() if "NATS:" in x)
        assert "OK" in line and "TLS, auth: role cli" in line
        # every service runs as its own role, with only its own credentials
        for name in ("identity-0", "policy-0", "lb-0"):
            environ = dict(kv.split("=", 1) for kv in Path(
                f"/proc/{pids[name]}/environ").read_text().split("\0") if "=" in kv)
            role = name.split("-")[0]
            assert environ["CILIA_NATS_ROLE"] == role
            assert environ["CILIA_NATS_NKEY"] == str(tmp_path / "bus" / "creds" / f"{role}.nk")
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
        # an open bus works, and status says what it lacks
        out = cilia("status", env=env).stdout
        line = next(x for x in out.splitlines() if "NATS:" in x)
        assert "warning" in line and "no TLS, no auth" in line
        assert "Warning: the bus does not require authentication" in out
    finally:
        cilia("down", env=env)


def test_external_nats_with_credentials_and_tls() -> None:
    """`cilia up --nats-url URL --creds DIR --tlsca CA`, as against an operator's NATS: here
    one started the way `cilia up` starts its own, in another state directory."""
    # Not under pytest's basetemp: another pytest session on the machine may prune it.
    tmp_path = Path(tempfile.mkdtemp(prefix="cilia-ext-"))
    with secured_bus() as bus, contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, tmp_path, ignore_errors=True)
        creds, ca = bus.secrets.creds_dir, bus.secrets.ca
        env = {"CILIA_STATE_DIR": str(tmp_path / "state")}
        res = cilia("up", "--nats-url", bus.url, "--creds", str(creds), "--tlsca", str(ca),
                    env=env)
        try:
            assert res.returncode == 0, res.stderr
            state = json.loads((tmp_path / "state" / "up.json").read_text())
            assert state["embedded"] is False
            assert state["bus"]["creds"] == str(creds) and state["bus"]["ca"] == str(ca)
            # later commands find the credentials `up` recorded
            status = json.loads(cilia("status", "-o", "json", env=env).stdout)
            assert sorted(s["service"] for s in status["services"]) == ["identity", "lb",
                                                                         "policy"]
            assert status["nats"]["tls"] and status["nats"]["auth"]
            # ...or the nats CLI's option names in the environment, for any command
            res = cilia("identity", "list", env={"CILIA_STATE_DIR": str(tmp_path / "other"),
                                                 "CILIA_NATS_URL": bus.url,
                                                 "CILIA_NATS_CREDS": str(creds),
                                                 "CILIA_NATS_CA": str(ca)})
            assert res.returncode == 0 and "reserved:host" in res.stdout, res.stderr
            # without them: a clear error, not a hang or a traceback
            res = cilia("--nats-url", bus.url, "--state-dir", str(tmp_path / "none"),
                        "identity", "list", timeout=20)
            assert res.returncode == 1 and "TLS verification of the server failed" in res.stderr
            res = cilia("--nats-url", bus.url, "--tlsca", str(ca), "--state-dir",
                        str(tmp_path / "none"), "identity", "list", timeout=20)
            assert res.returncode == 1 and "refused the credentials" in res.stderr
            assert "Traceback" not in res.stderr
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
