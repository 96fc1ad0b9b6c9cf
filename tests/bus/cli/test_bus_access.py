"""Which credentials a CLI command uses: what `cilia up` recorded for the bus in use, each
overridden by the options or the environment, and the role the command needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli._context import CliContext
from services.common.buscreds import BusAccess
from services.common.roles import CLI, SOURCE

URL = "tls://127.0.0.1:4222"


@pytest.fixture(autouse=True)
def _no_bus_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CILIA_NATS_URL", "CILIA_NATS_CREDS", "CILIA_NATS_NKEY", "CILIA_NATS_CA",
                "CILIA_NATS_CERT", "CILIA_NATS_KEY", "CILIA_NATS_ROLE"):
        monkeypatch.delenv(var, raising=False)


def _recorded(state: Path, url: str = URL) -> BusAccess:
    creds = state / "bus" / "creds"
    creds.mkdir(parents=True)
    for role in (CLI, SOURCE):
        (creds / f"{role}.nk").write_text("SU...\n")
    access = BusAccess(creds=str(creds), ca=str(state / "bus" / "tls" / "ca.pem"))
    (state / "up.json").write_text(json.dumps({"nats_url": url, "bus": access.to_json()}))
    return access


def test_a_command_uses_what_up_recorded_for_its_bus(tmp_path: Path) -> None:
    access = _recorded(tmp_path)
    ctx = CliContext(None, tmp_path)
    assert ctx.url() == URL and ctx.access() == access
    assert ctx.credentials(CLI).nkey == str(tmp_path / "bus" / "creds" / "cli.nk")
    assert ctx.credentials(SOURCE).nkey == str(tmp_path / "bus" / "creds" / "source.nk")
    assert ctx.role_env(SOURCE)["CILIA_NATS_ROLE"] == SOURCE
    # another bus: not its credentials
    assert CliContext("tls://other:4222", tmp_path).access() is None


def test_options_override_what_was_recorded(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    access = _recorded(tmp_path)
    ctx = CliContext(None, tmp_path, BusAccess(ca="/etc/other-ca.pem"))
    assert ctx.access() == BusAccess(creds=access.creds, ca="/etc/other-ca.pem")
    monkeypatch.setenv("CILIA_NATS_CERT", "/etc/client.pem")
    assert CliContext(None, tmp_path).access() == BusAccess(
        creds=access.creds, ca=access.ca, cert="/etc/client.pem")
