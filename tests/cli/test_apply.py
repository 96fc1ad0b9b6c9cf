"""`cilia apply`/`delete`: whole-file validation, clear errors, nothing half-applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.bus import Bus
from tests.support.busread import count
from tests.support.cli import cilia

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
