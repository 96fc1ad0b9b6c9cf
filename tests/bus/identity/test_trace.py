"""One trace from `cilia apply` in one process to the identity service in another."""

from __future__ import annotations

import json
from pathlib import Path

from services.common.bus import Bus
from tests.support.busread import wait_for
from tests.support.cli import cilia
from tests.support.procs import service


def _spans(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_apply_and_identity_allocation_share_one_trace(bus: Bus, nats_url: str,
                                                             tmp_path: Path) -> None:
    cli_spans, svc_spans = tmp_path / "cli.jsonl", tmp_path / "svc.jsonl"
    manifest = tmp_path / "pod.yaml"
    manifest.write_text("apiVersion: v1\nkind: Pod\nmetadata:\n  name: traced\n  labels:\n"
                        "    app: traced\nspec:\n  containers:\n  - name: c\n    image: x\n"
                        "status:\n  podIP: 10.244.9.9\n  hostIP: 172.31.0.11\n")
    with service("services.identity", nats_url, env={"CILIA_TRACE_FILE": str(svc_spans)}):
        res = cilia("--nats-url", nats_url, "apply", "-f", str(manifest),
                    env={"CILIA_TRACE_FILE": str(cli_spans)})
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "pod/traced created"
        await wait_for(bus, ["cilia.ipcache.>"], lambda s: len(s) == 1)
    client = _spans(cli_spans)
    server = _spans(svc_spans)
    root = next(s for s in client if s["name"] == "cilia apply")
    trace_id = root["context"]["trace_id"]
    publish = next(s for s in client if s["name"] == "publish object.upsert")
    assert publish["context"]["trace_id"] == trace_id
    consume = next(s for s in server if s["name"] == "identity object.upsert")
    # Same trace across processes, and the consumer's parent is the publisher's span.
    assert consume["context"]["trace_id"] == trace_id
    assert consume["parent_id"] == publish["context"]["span_id"]
    assert consume["kind"] == "SpanKind.CONSUMER"
    published = [s for s in server if s["name"] == "publish ipcache.upsert"]
    assert published and published[0]["context"]["trace_id"] == trace_id
    assert published[0]["parent_id"] == consume["context"]["span_id"]
    assert consume["resource"]["attributes"]["service.name"] == "identity"
