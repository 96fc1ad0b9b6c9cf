"""The test Kubernetes API server (tests/support/k8sapi) as real clients see it.

kubernetes_asyncio drives what the watcher will use (typed list and watch, CustomObjectsApi,
kubeconfig); raw aiohttp checks the protocol details the client hides.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support.k8sapi import ApiServer, Conflict, api_server


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


async def test_list_pages_with_limit_and_continue(server: ApiServer,
                                                  http: aiohttp.ClientSession) -> None:
    for i in range(5):
        server.create(pod(f"p{i}", ns="a" if i % 2 else "b"))
    status, page = await get(http, "/api/v1/pods", limit=2)
    assert status == 200 and page["kind"] == "PodList" and page["apiVersion"] == "v1"
    assert all(p["kind"] == "Pod" and p["apiVersion"] == "v1" for p in page["items"])
    rv = page["metadata"]["resourceVersion"]
    names = [p["metadata"]["name"] for p in page["items"]]
    assert page["metadata"]["remainingItemCount"] == 3
    server.create(pod("p9", ns="a"))    # after the first page: not in this list
    while cont := page["metadata"].get("continue"):
        status, page = await get(http, "/api/v1/pods", limit=2, **{"continue": cont})
        assert page["metadata"]["resourceVersion"] == rv   # the first page's snapshot
        names += [p["metadata"]["name"] for p in page["items"]]
    assert sorted(names) == [f"p{i}" for i in range(5)] and len(names) == 5
    status, page = await get(http, "/api/v1/namespaces/a/pods")
    assert [p["metadata"]["name"] for p in page["items"]] == ["p1", "p3", "p9"]
    assert "continue" not in page["metadata"]

    _, page = await get(http, "/api/v1/pods", limit=2)
    server.create(pod("p10"))
    server.compact()      # past the first page's rv: that snapshot is gone
    status, body = await get(http, "/api/v1/pods", limit=2,
                             **{"continue": page["metadata"]["continue"]})
    assert status == 410 and body["kind"] == "Status" and body["reason"] == "Expired"


@pytest.mark.parametrize(("selector", "expected"), [
    ("app=web", ["w1", "w2"]), ("app==web", ["w1", "w2"]), ("app!=web", ["d1", "n1"]),
    ("app in (web, db)", ["d1", "w1", "w2"]), ("app notin (web)", ["d1", "n1"]),
    ("app", ["d1", "w1", "w2"]), ("!app", ["n1"]), ("app=web,tier=front", ["w1"]),
    ("app in (web),!tier", ["w2"]),
])
async def test_label_selectors(server: ApiServer, http: aiohttp.ClientSession, selector: str,
                               expected: list[str]) -> None:
    server.create(pod("w1", app="web", tier="front"))
    server.create(pod("w2", app="web"))
    server.create(pod("d1", app="db"))
    server.create(pod("n1"))
    status, page = await get(http, "/api/v1/namespaces/default/pods", labelSelector=selector)
    assert status == 200, page
    assert [p["metadata"]["name"] for p in page["items"]] == expected


async def test_field_selectors_and_bad_selectors(server: ApiServer,
                                                 http: aiohttp.ClientSession) -> None:
    server.create(pod("a", ns="x", node="n1"))
    server.create(pod("b", ns="y", node="n2"))
    server.create(pod("c", ns="y", node="n1"))

    async def names(**params: str) -> list[str]:
        status, page = await get(http, "/api/v1/pods", **params)
        assert status == 200, page
        return [p["metadata"]["name"] for p in page["items"]]

    assert await names(fieldSelector="spec.nodeName=n1") == ["a", "c"]
    assert await names(fieldSelector="spec.nodeName==n1,metadata.namespace!=x") == ["c"]
    assert await names(fieldSelector="metadata.name=b") == ["b"]
    status, body = await get(http, "/api/v1/pods", fieldSelector="spec.bogus=1")
    assert (status, body["reason"]) == (400, "BadRequest")
    assert body["message"] == "field label not supported: spec.bogus"
    status, body = await get(http, "/api/v1/nodes", fieldSelector="spec.nodeName=n1")
    assert status == 400
    status, body = await get(http, "/api/v1/pods", labelSelector="a in (b")
    assert status == 400


async def test_watch_from_rv_now_and_with_selectors(server: ApiServer,
                                                    http: aiohttp.ClientSession) -> None:
    server.create(pod("a", app="web"))
    rv = server.resource_version
    server.create(pod("b", app="web"))
    server.create({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "s", "namespace": "default"}, "spec": {}})
    server.patch("v1", "Pod", "default", "a", {"metadata": {"labels": {"app": "db"}}})
    deleted = server.delete("v1", "Pod", "default", "b")

    got = await events(http, "/api/v1/namespaces/default/pods", 3, resourceVersion=rv)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [
        ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert got[2]["object"]["metadata"]["resourceVersion"] == deleted["metadata"][
        "resourceVersion"] == str(server.resource_version)

    # "a" stops matching app=web: the selector's watch sees it DELETED at the patch's rv.
    got = await events(http, "/api/v1/pods", 3, resourceVersion=rv, labelSelector="app=web")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [
        ("ADDED", "b"), ("DELETED", "a"), ("DELETED", "b")]
    assert got[1]["object"]["metadata"]["labels"] == {"app": "web"}
    assert int(got[1]["object"]["metadata"]["resourceVersion"]) == server.resource_version - 1

    server.create(pod("c"))
    for start in ("0", None):
        params = {"resourceVersion": start} if start else {}
        got = await events(http, "/api/v1/namespaces/default/pods", 2, **params)
        assert sorted(e["object"]["metadata"]["name"] for e in got) == ["a", "c"]
        assert {e["type"] for e in got} == {"ADDED"}


@pytest.mark.parametrize("flag", ["1", "t", "T", "true", "TRUE", "True"])
async def test_watch_flag_parses_like_go(server: ApiServer, http: aiohttp.ClientSession,
                                         flag: str) -> None:
    server.create(pod("a"))
    async with http.get("/api/v1/pods", params={"watch": flag}) as r:
        assert json.loads(await r.content.readline())["type"] == "ADDED"
    status, _ = await get(http, "/api/v1/pods", watch="yes")
    assert status == 400


async def test_live_events_and_bookmarks(server: ApiServer,
                                         http: aiohttp.ClientSession) -> None:
    server.create(pod("a"))
    rv = server.resource_version
    got: list[dict] = []
    async with http.get("/api/v1/pods", params={"watch": "1", "resourceVersion": str(rv),
                                                "allowWatchBookmarks": "true"}) as r:
        line = json.loads(await asyncio.wait_for(r.content.readline(), 2))
        assert line == {"type": "BOOKMARK", "object": {
            "kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)}}}
        # A write from another thread: the live event, then (another kind's write) a bookmark.
        await asyncio.to_thread(server.create, pod("b"))
        got.append(json.loads(await asyncio.wait_for(r.content.readline(), 2)))
        started = time.monotonic()
        await asyncio.to_thread(server.create, {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}})
        got.append(json.loads(await asyncio.wait_for(r.content.readline(), 2)))
        assert time.monotonic() - started < 0.15     # not the periodic one (0.2 s)
    assert got[0]["type"] == "ADDED" and got[0]["object"]["metadata"]["name"] == "b"
    assert got[1]["type"] == "BOOKMARK"
    assert got[1]["object"]["metadata"]["resourceVersion"] == str(server.resource_version)


async def test_send_initial_events_ends_with_a_bookmark(server: ApiServer,
                                                        http: aiohttp.ClientSession) -> None:
    server.create(pod("a"))
    got = await events(http, "/api/v1/pods", 2, sendInitialEvents="true",
                       resourceVersionMatch="NotOlderThan", allowWatchBookmarks="true")
    assert got[0]["type"] == "ADDED"
    assert got[1]["type"] == "BOOKMARK"
    assert got[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_too_old_rv_is_one_410_error_event(server: ApiServer, http: aiohttp.ClientSession,
                                                 api: client.ApiClient) -> None:
    server.create(pod("a"))
    old = server.resource_version
    server.create(pod("b"))
    server.compact()
    async with http.get("/api/v1/pods", params={"watch": "true",
                                                "resourceVersion": str(old)}) as r:
        assert r.status == 200
        lines = (await asyncio.wait_for(r.read(), 2)).splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["type"] == "ERROR"
    assert event["object"] == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f"too old resource version: {old} ({server.resource_version})",
        "reason": "Expired", "code": 410}
    # From the compaction point on, the history is there.
    got = await events(http, "/api/v1/pods", 1, resourceVersion=str(server.resource_version),
                       allowWatchBookmarks="1")
    assert got[0]["type"] == "BOOKMARK"

    w = watch.Watch()
    with pytest.raises(ApiException) as e:
        async for _ in w.stream(client.CoreV1Api(api).list_pod_for_all_namespaces,
                                resource_version=str(old), timeout_seconds=5):
            pass
    assert e.value.status == 410


async def test_timeout_seconds_ends_the_stream_cleanly(server: ApiServer,
                                                       http: aiohttp.ClientSession,
                                                       api: client.ApiClient) -> None:
    started = time.monotonic()
    async with http.get("/api/v1/pods", params={"watch": "true", "timeoutSeconds": "1"}) as r:
        assert await asyncio.wait_for(r.read(), 3) == b""
    assert 0.9 < time.monotonic() - started < 2

    server.create(pod("a"))
    w = watch.Watch()
    seen = [e["type"] async for e in w.stream(client.CoreV1Api(api).list_namespaced_pod,
                                              "default", timeout_seconds=1)]
    assert seen == ["ADDED"]


@pytest.mark.parametrize("mid_event", [True, False])
async def test_cut_streams_breaks_the_connection(server: ApiServer,
                                                 http: aiohttp.ClientSession,
                                                 mid_event: bool) -> None:
    server.create(pod("a"))
    async with http.get("/api/v1/pods", params={"watch": "true"}) as r:
        assert json.loads(await r.content.readline())["type"] == "ADDED"
        await asyncio.to_thread(server.cut_streams, mid_event)
        with pytest.raises(aiohttp.ClientPayloadError):
            while line := await asyncio.wait_for(r.content.readline(), 2):
                json.loads(line)     # a half line, if any, would not be read as a whole one
                pytest.fail(f"a line after the cut: {line!r}")


async def test_cut_streams_breaks_a_kubernetes_asyncio_watch(server: ApiServer,
                                                             api: client.ApiClient) -> None:
    server.create(pod("a"))
    w = watch.Watch()
    stream = w.stream(client.CoreV1Api(api).list_namespaced_pod, "default", timeout_seconds=10)
    assert (await stream.__anext__())["type"] == "ADDED"
    server.cut_streams()
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(stream.__anext__(), 3)


async def test_event_delay(server: ApiServer, http: aiohttp.ClientSession) -> None:
    server.create(pod("a"))
    server.event_delay = 0.3
    started = time.monotonic()
    await events(http, "/api/v1/pods", 1)
    assert time.monotonic() - started >= 0.3


async def test_writes_conflicts_and_not_found(server: ApiServer,
                                              http: aiohttp.ClientSession) -> None:
    async with http.post("/api/v1/namespaces/default/pods", json=pod("a")) as r:
        assert r.status == 201
        created = await r.json()
    meta = created["metadata"]
    assert meta["resourceVersion"] == str(server.resource_version) and meta["generation"] == 1
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    async with http.post("/api/v1/namespaces/default/pods", json=pod("a")) as r:
        body = await r.json()
        assert (r.status, body["reason"]) == (409, "AlreadyExists")
        assert body["message"] == 'pods "a" already exists'

    stale = json.loads(json.dumps(created))
    server.patch("v1", "Pod", "default", "a", {"metadata": {"labels": {"x": "1"}}})
    stale["spec"]["nodeName"] = "n2"
    async with http.put("/api/v1/namespaces/default/pods/a", json=stale) as r:
        body = await r.json()
        assert (r.status, body["kind"], body["reason"]) == (409, "Status", "Conflict")
        assert body["details"] == {"name": "a", "group": "", "kind": "pods"}
    with pytest.raises(Conflict):
        server.replace(stale)
    del stale["metadata"]["resourceVersion"]      # no precondition: last write wins
    async with http.put("/api/v1/namespaces/default/pods/a", json=stale) as r:
        body = await r.json()
        assert r.status == 200 and body["metadata"]["generation"] == 2
        assert body["metadata"]["uid"] == meta["uid"]
    rv = server.resource_version
    assert server.replace(server.get("v1", "Pod", "default", "a") or {})["metadata"][
        "resourceVersion"] == str(rv)             # a no-op update writes nothing

    async with http.put("/api/v1/namespaces/default/pods/zz", json=pod("zz")) as r:
        body = await r.json()
        assert (r.status, body["reason"], body["message"]) == (404, "NotFound",
                                                               'pods "zz" not found')
    async with http.delete("/api/v1/namespaces/default/pods/a", json={
            "preconditions": {"resourceVersion": "1"}}) as r:
        assert r.status == 409
    async with http.delete("/api/v1/namespaces/default/pods/a") as r:
        assert r.status == 200
        assert (await r.json())["metadata"]["resourceVersion"] == str(rv + 1)
    async with http.get("/api/v1/namespaces/default/pods/a") as r:
        assert r.status == 404
    async with http.get("/api/v1/namespaces/default/pods/a/log") as r:
        assert r.status == 404


async def test_status_subresource(server: ApiServer, http: aiohttp.ClientSession) -> None:
    p = pod("a")
    p["status"] = {"phase": "Pending"}
    server.create(p)
    current = server.get("v1", "Pod", "default", "a") or {}
    sneaky = json.loads(json.dumps(current))
    sneaky["spec"]["nodeName"] = "elsewhere"
    sneaky["status"] = {"phase": "Running", "podIP": "10.0.0.5"}
    async with http.put("/api/v1/namespaces/default/pods/a/status", json=sneaky) as r:
        assert r.status == 200
        body = await r.json()
    assert body["spec"]["nodeName"] == "n1" and body["status"]["podIP"] == "10.0.0.5"
    assert body["metadata"]["generation"] == 1

    sneaky = json.loads(json.dumps(body))
    sneaky["spec"]["nodeName"] = "n2"
    sneaky["status"] = {"phase": "Failed"}
    async with http.put("/api/v1/namespaces/default/pods/a", json=sneaky) as r:
        body = await r.json()
    assert body["spec"]["nodeName"] == "n2" and body["status"]["phase"] == "Running"
    assert body["metadata"]["generation"] == 2

    headers = {"Content-Type": "application/merge-patch+json"}
    async with http.patch("/api/v1/namespaces/default/pods/a/status", headers=headers,
                          data=json.dumps({"status": {"podIP": None},
                                           "spec": {"nodeName": "n3"}})) as r:
        body = await r.json()
    assert body["status"] == {"phase": "Running"} and body["spec"]["nodeName"] == "n2"
    async with http.patch("/api/v1/namespaces/default/pods/a", headers=headers,
                          data=json.dumps({"status": {"phase": "Failed"}})) as r:
        body = await r.json()
    assert body["status"] == {"phase": "Running"}
    assert server.patch("v1", "Pod", "default", "a", {"status": {"phase": "Succeeded"}},
                        status=True)["status"] == {"phase": "Succeeded"}
    async with http.patch("/api/v1/namespaces/default/pods/a", data="{}",
                          headers={"Content-Type": "application/apply-patch+yaml"}) as r:
        assert r.status == 415


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic dGVzdA=="])
async def test_every_request_needs_the_token(server: ApiServer, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    async with aiohttp.ClientSession(base_url=server.url) as s:
        for path in ("/api/v1/pods", "/version", "/apis"):
            async with s.get(path, headers=headers) as r:
                assert r.status == 401
                body = await r.json()
                assert (body["kind"], body["reason"], body["code"]) == (
                    "Status", "Unauthorized", 401)


async def test_lease_optimistic_concurrency(server: ApiServer, api: client.ApiClient) -> None:
    leases = client.CoordinationV1Api(api)
    body = client.V1Lease(metadata=client.V1ObjectMeta(name="cilia-operator"),
                          spec=client.V1LeaseSpec(holder_identity="a",
                                                  lease_duration_seconds=15))
    lease = await leases.create_namespaced_lease("kube-system", body)
    with pytest.raises(ApiException) as e:
        await leases.create_namespaced_lease("kube-system", body)
    assert e.value.status == 409
    # Two candidates read the same version; the second update loses.
    mine, theirs = lease, await leases.read_namespaced_lease("cilia-operator", "kube-system")
    mine.spec.holder_identity = "b"
    renewed = await leases.replace_namespaced_lease("cilia-operator", "kube-system", mine)
    assert renewed.spec.holder_identity == "b"
    theirs.spec.holder_identity = "c"
    with pytest.raises(ApiException) as e:
        await leases.replace_namespaced_lease("cilia-operator", "kube-system", theirs)
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "Conflict"
    got = await leases.read_namespaced_lease("cilia-operator", "kube-system")
    assert got.spec.holder_identity == "b"
    assert int(got.metadata.resource_version) > int(lease.metadata.resource_version)


async def test_cilium_policies_with_custom_objects_api(server: ApiServer,
                                                       api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    cnp = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
           "metadata": {"name": "allow-web"},
           "spec": {"endpointSelector": {"matchLabels": {"app": "web"}}}}
    await custom.create_namespaced_custom_object("cilium.io", "v2", "prod",
                                                 "ciliumnetworkpolicies", cnp)
    server.create({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
                   "metadata": {"name": "deny-all"}, "spec": {"endpointSelector": {}}})
    listed = await custom.list_cluster_custom_object("cilium.io", "v2", "ciliumnetworkpolicies")
    assert listed["kind"] == "CiliumNetworkPolicyList"
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in listed["items"]] == [
        ("prod", "allow-web")]
    ccnps = await custom.list_cluster_custom_object("cilium.io", "v2",
                                                    "ciliumclusterwidenetworkpolicies")
    assert "namespace" not in ccnps["items"][0]["metadata"]

    patched = await custom.patch_namespaced_custom_object(
        "cilium.io", "v2", "prod", "ciliumnetworkpolicies", "allow-web",
        {"spec": {"endpointSelector": {"matchLabels": {"app": "api"}}}},
        _content_type="application/merge-patch+json")
    assert patched["spec"]["endpointSelector"]["matchLabels"] == {"app": "api"}
    assert patched["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as e:      # CRDs take no strategic merge patch
        await custom.patch_namespaced_custom_object(
            "cilium.io", "v2", "prod", "ciliumnetworkpolicies", "allow-web", {"spec": {}},
            _content_type="application/strategic-merge-patch+json")
    assert e.value.status == 415

    w = watch.Watch()
    seen = []
    async for ev in w.stream(custom.list_cluster_custom_object, "cilium.io", "v2",
                             "ciliumnetworkpolicies",
                             resource_version=listed["metadata"]["resourceVersion"],
                             timeout_seconds=1):
        seen.append((ev["type"], ev["object"]["metadata"]["generation"]))
    assert seen == [("MODIFIED", 2)]


async def test_discovery_version_and_kubeconfig(server: ApiServer, tmp_path: Path,
                                                http: aiohttp.ClientSession) -> None:
    path = server.kubeconfig(tmp_path / "config")
    await config.load_kube_config(config_file=str(path))   # the default configuration
    async with client.ApiClient() as c:
        assert (await client.VersionApi(c).get_code()).major == "1"
        groups = await client.ApisApi(c).get_api_versions()
        assert {"cilium.io", "discovery.k8s.io", "networking.k8s.io", "coordination.k8s.io",
                "apps"} <= {g.name for g in groups.groups}
        core = await client.CoreApi(c).get_api_versions()
        assert core.versions == ["v1"]
        resources = await client.CoreV1Api(c).get_api_resources()
        names = {r.name for r in resources.resources}
        assert {"pods", "pods/status", "services", "nodes", "namespaces", "events"} <= names
    status, doc = await get(http, "/apis/cilium.io/v2")
    assert status == 200 and doc["kind"] == "APIResourceList"
    assert {(r["name"], r["namespaced"]) for r in doc["resources"]} >= {
        ("ciliumnetworkpolicies", True), ("ciliumclusterwidenetworkpolicies", False)}
    async with http.get("/healthz") as r:
        assert (r.status, await r.text()) == (200, "ok")
    status, _ = await get(http, "/apis/example.com/v1")
    assert status == 404


async def test_finalizers_hold_deletion(server: ApiServer, http: aiohttp.ClientSession) -> None:
    p = pod("a")
    p["metadata"]["finalizers"] = ["cilia.io/cleanup"]
    server.create(p)
    marked = server.delete("v1", "Pod", "default", "a")
    assert marked["metadata"]["deletionTimestamp"]
    assert server.get("v1", "Pod", "default", "a") is not None
    await asyncio.to_thread(server.patch, "v1", "Pod", "default", "a",
                            {"metadata": {"finalizers": None}})
    assert server.get("v1", "Pod", "default", "a") is None
    got = await events(http, "/api/v1/pods", 1,
                       resourceVersion=str(server.resource_version - 1))
    assert got[0]["type"] == "DELETED"
