"""The test Kubernetes API server (tests/support/k8sapi) as real clients see it.

kubernetes_asyncio drives what the watcher will use (typed list and watch, CustomObjectsApi,
kubeconfig); raw aiohttp checks the protocol details the client hides.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from kubernetes_asyncio import client, config, watch

from tests.support.k8sapi import ApiServer, api_server


def pod(name: str, ns: str = "default", node: str = "n1", **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}


@pytest.fixture
def server() -> Iterator[ApiServer]:
    with api_server(bookmark_interval=0.2) as s:
        yield s


@pytest_asyncio.fixture
async def http(server: ApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
            base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}) as s:
        yield s


@pytest_asyncio.fixture
async def api(server: ApiServer, tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(server.kubeconfig(tmp_path / "kubeconfig")),
                                  client_configuration=cfg)
    async with client.ApiClient(cfg) as c:
        yield c


async def get(http: aiohttp.ClientSession, path: str, **params: Any) -> tuple[int, Any]:
    async with http.get(path, params=params) as r:
        return r.status, await r.json()


async def events(http: aiohttp.ClientSession, path: str, count: int,
                 **params: Any) -> list[dict]:
    """The first ``count`` lines of a watch."""
    out: list[dict] = []
    async with http.get(path, params={"watch": "true", **params}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/json")
        while len(out) < count:
            line = await asyncio.wait_for(r.content.readline(), 5)
            assert line, f"stream ended after {out}"
            out.append(json.loads(line))
    return out


async def test_list_and_watch_with_kubernetes_asyncio(server: ApiServer,
                                                      api: client.ApiClient) -> None:
    server.create(pod("a"))
    v1 = client.CoreV1Api(api)
    pods = await v1.list_namespaced_pod("default")
    assert [p.metadata.name for p in pods.items] == ["a"]
    rv = pods.metadata.resource_version
    assert rv == str(server.resource_version)

    async def later() -> None:
        await asyncio.sleep(0.1)
        server.create(pod("b"))
        server.patch("v1", "Pod", "default", "b", {"metadata": {"labels": {"x": "1"}}})
        server.delete("v1", "Pod", "default", "b")

    task = asyncio.create_task(later())
    seen = []
    w = watch.Watch()
    async for e in w.stream(v1.list_namespaced_pod, "default", resource_version=rv,
                            timeout_seconds=5):
        seen.append((e["type"], e["object"].metadata.name, e["object"].metadata.resource_version))
        if e["type"] == "DELETED":
            break
    await w.close()
    await task
    assert [s[:2] for s in seen] == [("ADDED", "b"), ("MODIFIED", "b"), ("DELETED", "b")]
    assert [int(s[2]) for s in seen] == [int(rv) + 1, int(rv) + 2, int(rv) + 3]
    assert server.list_calls("pods") == 1 and server.watch_calls("pods") == 1
