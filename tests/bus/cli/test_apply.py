"""`cilia apply`/`delete`: whole-file validation, clear errors, nothing half-applied."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import pytest

from services.common.bus import Bus
from services.common.embedded import NatsServer, free_port, nats_server_binary
from tests.support.busread import count
from tests.support.cli import cilia
from tests.support.wait import wait_until

GOOD_NS = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n"
GOOD_POD = ("apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: shop\n"
            "spec:\n  containers:\n  - name: c\n    image: x\n")


@pytest.mark.parametrize("doc, expected", [
    ("apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n"
     "  - name: c\n    ports:\n    - containerPort: 70000\n",
     "document 1 (Pod/web): spec.containers[0].ports[0].containerPort: "
     "must be a port number 1-65535, got 70000"),
    ("apiVersion: v1\nkind: Pod\nmetadata:\n  name: Web_1\nspec:\n  containers: []\n",
     "document 1 (Pod/Web_1): metadata.name: 'Web_1' is not a valid DNS subdomain name"),
    ("apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels:\n    tier: 1\n"
     "spec:\n  containers:\n  - name: c\n",
     "document 1 (Pod/web): metadata.labels.tier: must be a string, got int"),
    ("apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n",
     "document 1 (Secret/s): kind: unsupported kind 'Secret'"),
    ("apiVersion: apps/v2\nkind: Namespace\nmetadata:\n  name: n\n",
     "document 1 (Namespace/n): apiVersion: Namespace needs apiVersion v1, got 'apps/v2'"),
    ("kind: Pod\nmetadata: [\n", "invalid YAML"),
])
async def test_a_bad_document_rejects_the_whole_file(bus: Bus, nats_url: str, tmp_path: Path,
                                                     doc: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD_NS + "---\n" + doc)
    res = cilia("--nats-url", nats_url, "apply", "-f", str(path))
    assert res.returncode == 1
    assert f"error: {path}" in res.stderr and expected in res.stderr
    assert "nothing was applied" in res.stderr
    assert await count(bus, "cilia.src.>") == 0


async def test_apply_reports_created_unchanged_configured_and_delete(
        bus: Bus, nats_url: str, tmp_path: Path) -> None:
    d = tmp_path / "app"
    d.mkdir()
    (d / "1-ns.yaml").write_text(GOOD_NS)
    (d / "2-pod.yml").write_text(GOOD_POD)
    (d / "README.txt").write_text("not a manifest")
    res = cilia("--nats-url", nats_url, "apply", "-f", str(d))
    assert res.stdout.splitlines() == ["namespace/shop created", "pod/web created"]
    res = cilia("--nats-url", nats_url, "apply", "-f", str(d))
    assert res.stdout.splitlines() == ["namespace/shop unchanged", "pod/web unchanged"]
    (d / "2-pod.yml").write_text(GOOD_POD.replace("name: web\n", "name: web\n  labels:\n"
                                                  "    app: web\n", 1))
    res = cilia("--nats-url", nats_url, "apply", "-f", str(d))
    assert res.stdout.splitlines() == ["namespace/shop unchanged", "pod/web configured"]
    assert await count(bus, "cilia.src.>") == 3
    res = cilia("--nats-url", nats_url, "delete", "-f", str(d / "2-pod.yml"))
    assert res.returncode == 0 and res.stdout.strip() == "pod/web deleted"
    res = cilia("--nats-url", nats_url, "delete", "-f", str(d / "2-pod.yml"))
    assert res.returncode == 1 and 'pod "web" not found' in res.stderr


def _apply(nats_url: str, path: Path) -> subprocess.CompletedProcess[str]:
    res = cilia("--nats-url", nats_url, "apply", "-f", str(path))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "nothing was applied" in res.stderr
    return res


def _big_pod(name: str, size: int) -> str:
    return (f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n"
            f"  annotations:\n    blob: {'x' * size}\nspec:\n  containers:\n  - name: c\n")


async def test_a_document_too_large_for_the_bus_applies_nothing(bus: Bus, nats_url: str,
                                                                tmp_path: Path) -> None:
    # Issue 10: the first two documents were published (the pod created), then a traceback.
    path = tmp_path / "app.yaml"
    path.write_text(GOOD_NS + "---\n" + GOOD_POD + "---\n" + _big_pod("huge", 600_000))
    res = _apply(nats_url, path)
    assert (f"error: {path}: document 2 (Pod/huge): too large for the bus: its event is "
            in res.stderr)
    assert res.stderr.count("error: ") == 1
    assert await count(bus, "cilia.src.>") == 0


def test_the_limit_is_the_connected_servers(tmp_path: Path) -> None:
    # 100 kB fit the default 1 MiB checked offline, not this server's 64 KiB.
    conf = tmp_path / "nats.conf"
    conf.write_text(f"max_payload: 65536\njetstream {{ store_dir: \"{tmp_path / 'js'}\" }}\n")
    port = free_port()
    proc = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-c",
                             str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = NatsServer(proc, "127.0.0.1", port, tmp_path / "js")
    try:
        wait_until("nats-server listens", lambda: _listens(port), 15)
        path = tmp_path / "app.yaml"
        path.write_text(GOOD_NS + "---\n" + _big_pod("big", 100_000))
        res = _apply(server.url, path)
        assert "document 1 (Pod/big): too large for the bus" in res.stderr
        assert "takes at most 64512 (max_payload 65536" in res.stderr
        assert asyncio.run(_stored(server.url)) == 0
    finally:
        server.stop()


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


async def _stored(url: str) -> int:
    b = await Bus.connect(url, "test")
    try:
        info = await b.ensure_history()
        return int(info.state.messages)
    finally:
        await b.close()


@pytest.mark.parametrize("content, expected", [
    (b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: caf\xe9\n",
     "not UTF-8 text (byte 0xe9 at offset 52)"),
    (b"", "no objects (an empty file)"),
    (b"# only a comment\n---\n", "no objects (an empty file)"),
    (("apiVersion: v1\nkind: Pod\nmetadata:\n  name: deep\n  annotations: "
      + "{a: " * 100 + "x" + "}" * 100 + "\n").encode(),
     "document 0: nested deeper than 64 levels (line 5)"),
    (("apiVersion: v1\nkind: Pod\nmetadata:\n  name: lol\nspec:\n  containers: []\n"
      "x0: &a0 [l, l, l, l, l, l, l, l, l, l]\n"
      + "".join(f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n"
                for i in range(1, 9))).encode(),
     "document 0: aliases expand to more than 200000 nodes (line 12)"),
    (b"apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n"
     b"    app: web\n",
     "document 0 (Service/web): spec.ports: is required (at least one port)"),
])
async def test_bad_files_give_one_line_and_apply_nothing(bus: Bus, nats_url: str,
                                                         tmp_path: Path, content: bytes,
                                                         expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    good = tmp_path / "good.yaml"
    good.write_text(GOOD_NS + "---\n" + GOOD_POD)
    res = cilia("--nats-url", nats_url, "apply", "-f", str(good), "-f", str(path))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.splitlines() == [f"error: {path}: {expected}", "nothing was applied"]
    assert res.stderr.count("error: ") == 1
    assert await count(bus, "cilia.src.>") == 0


def test_a_headless_service_may_have_no_ports(tmp_path: Path) -> None:
    from services.cli.manifests import load
    path = tmp_path / "svc.yaml"
    path.write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: db\nspec:\n"
                    "  clusterIP: None\n  selector:\n    app: db\n")
    assert [m.ref for m in load([str(path)])] == ["service/db"]
