"""Where the watcher's credentials come from (services.k8s.client.load_configuration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.k8s.client import load_configuration
from services.k8s.errors import ConfigError


def kubeconfig(path: Path, server: str = "https://10.0.0.1:6443") -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "secret"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return path


async def test_an_explicit_kubeconfig_wins(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "kc", "http://127.0.0.1:1234")
    config = await load_configuration(str(path), environ={"KUBERNETES_SERVICE_HOST": "x"})
    assert config.host == "http://127.0.0.1:1234"
    assert config.api_key["BearerToken"].endswith("secret")


async def test_in_cluster_credentials_from_the_service_account(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    config = await load_configuration(
        environ={"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
        token_file=str(tmp_path / "token"), ca_file=str(tmp_path / "ca.crt"))
    assert config.host == "https://10.96.0.1:443"
    assert config.api_key["BearerToken"] == "Bearer sa-token"


async def test_kubeconfig_from_the_environment(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "kc")
    config = await load_configuration(environ={"KUBECONFIG": str(path)})
    assert config.host == "https://10.0.0.1:6443"


async def test_nothing_found_names_what_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as err:
        await load_configuration(environ={"KUBECONFIG": str(missing)})
    text = str(err.value)
    assert "KUBERNETES_SERVICE_HOST is not set" in text and str(missing) in text
    assert "--kubeconfig" in text
    with pytest.raises(ConfigError, match="token"):
        await load_configuration(environ={"KUBERNETES_SERVICE_HOST": "10.96.0.1",
                                          "KUBERNETES_SERVICE_PORT": "443",
                                          "KUBECONFIG": str(missing)},
                                 token_file=str(missing), ca_file=str(missing))


async def test_a_broken_kubeconfig_is_named(tmp_path: Path) -> None:
    path = tmp_path / "kc"
    path.write_text("{}")
    with pytest.raises(ConfigError, match=str(path)):
        await load_configuration(str(path))
