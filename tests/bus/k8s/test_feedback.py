"""The policy service's verdicts written back to the test API server: a Warning Event naming the
field at fault, the Valid condition of a CNP/CCNP, one Event per (policy, message), and the
bus consumer that only the leader lets write."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kubernetes_asyncio.client import ApiClient

from services.common.bus import Bus
from services.common.contract.policy import PolicyEvent, PolicyStatus
from services.k8s.feedback import PolicyFeedback, subscribe
from tests.support.k8sapi import api_server
from tests.support.kubeclient import eventually, kube_client

CILIUM = "cilium.io/v2"
CNP = "CiliumNetworkPolicy"
CCNP = "CiliumClusterwideNetworkPolicy"
KNP = "NetworkPolicy"
ERROR = "spec.ingress[0].toPorts[0].ports[0].protocol: 'TCPX' is not one of ANY, SCTP, TCP, UDP"
SPEC = {"endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCPX"}]}]}]}


@pytest.fixture
def api() -> Iterator[Any]:
    with api_server(token="test-token") as server:
        server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}})
        yield server


@pytest_asyncio.fixture
async def client(api: Any, tmp_path: Path) -> AsyncIterator[ApiClient]:
    async with kube_client(api, tmp_path) as c:
        yield c


def items(listed: Any) -> list[dict[str, Any]]:
    return list(listed["items"] if isinstance(listed, dict) else listed)


def events(api: Any, namespace: str) -> list[dict[str, Any]]:
    return items(api.list("v1", "Event", namespace))


def cnp(api: Any, name: str = "web", namespace: str = "prod") -> dict[str, Any]:
    return dict(api.create({"apiVersion": CILIUM, "kind": CNP,
                            "metadata": {"name": name, "namespace": namespace},
                            "spec": SPEC}))


def verdict(kind: str, op: str, namespace: str = "prod", name: str = "web",
            error: str = ERROR, revision: int = 1) -> PolicyStatus:
    return PolicyStatus(kind=kind, namespace=namespace, name=name,  # type: ignore[arg-type]
                        revision=revision, op=op,  # type: ignore[arg-type]
                        error=error if op == "error" else None)


def valid(api: Any, kind: str, namespace: str, name: str) -> list[dict[str, Any]]:
    obj = api.get(CILIUM, kind, namespace, name)
    return [c for c in (obj.get("status") or {}).get("conditions") or []
            if c["type"] == "Valid"]


async def test_a_rejected_cnp_gets_one_event_and_valid_false(api: Any,
                                                             client: ApiClient) -> None:
    uid = cnp(api)["metadata"]["uid"]
    feedback = PolicyFeedback(client, instance="watcher-0")
    await feedback.on_status(verdict(CNP, "error"), None)

    (event,) = events(api, "prod")
    assert event["type"] == "Warning" and event["reason"] == "PolicyRejected"
    assert event["message"] == ERROR and "protocol" in event["message"]
    assert event["involvedObject"] == {"apiVersion": CILIUM, "kind": CNP,
                                       "namespace": "prod", "name": "web", "uid": uid}
    assert event["source"]["component"] == "cilia"
    assert event["reportingComponent"] == "cilia"
    assert event["count"] == 1 and event["firstTimestamp"] and event["lastTimestamp"]
    (cond,) = valid(api, CNP, "prod", "web")
    assert (cond["status"], cond["reason"], cond["message"]) == ("False", "PolicyRejected",
                                                                 ERROR)
    assert cond["lastTransitionTime"]


async def test_the_same_rejection_again_adds_no_event(api: Any, client: ApiClient) -> None:
    cnp(api)
    feedback = PolicyFeedback(client)
    await feedback.on_status(verdict(CNP, "error"), None)
    await feedback.on_status(verdict(CNP, "error", revision=2), None)
    # a failover: the other replica's feedback knows nothing of the first Event
    await PolicyFeedback(client).on_status(verdict(CNP, "error", revision=3), None)

    (event,) = events(api, "prod")
    assert event["count"] == 3
    assert feedback.events_created == 1 and feedback.events_bumped == 1
    assert feedback.conditions_written == 1     # the condition said so already
    # a different error is a different Event
    await feedback.on_status(verdict(CNP, "error", error="spec: bad", revision=4), None)
    assert sorted(e["message"] for e in events(api, "prod")) == sorted([ERROR, "spec: bad"])
    assert valid(api, CNP, "prod", "web")[0]["message"] == "spec: bad"


async def test_a_later_acceptance_flips_valid_to_true(api: Any, client: ApiClient) -> None:
    cnp(api)
    feedback = PolicyFeedback(client)
    await feedback.on_status(verdict(CNP, "error"), None)
    await feedback.on_status(verdict(CNP, "set", revision=2), None)
    (cond,) = valid(api, CNP, "prod", "web")
    assert (cond["status"], cond["reason"]) == ("True", "PolicyAccepted")
    assert len(events(api, "prod")) == 1          # the rejection's Event stays (history)


async def test_a_ccnp_event_goes_to_default(api: Any, client: ApiClient) -> None:
    api.create({"apiVersion": CILIUM, "kind": CCNP, "metadata": {"name": "all"},
                "spec": SPEC})
    await PolicyFeedback(client).on_status(verdict(CCNP, "error", namespace="", name="all"))
    (event,) = events(api, "default")
    assert event["involvedObject"]["kind"] == CCNP
    assert "namespace" not in event["involvedObject"] or not event["involvedObject"]["namespace"]
    assert valid(api, CCNP, "", "all")[0]["status"] == "False"


async def test_a_knp_gets_an_event_only(api: Any, client: ApiClient) -> None:
    knp = api.create({"apiVersion": "networking.k8s.io/v1", "kind": KNP,
                      "metadata": {"name": "web", "namespace": "prod"},
                      "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
    feedback = PolicyFeedback(client)
    await feedback.on_status(verdict(KNP, "error"), None)
    await feedback.on_status(verdict(KNP, "set", revision=2), None)
    (event,) = events(api, "prod")
    assert event["involvedObject"] == {"apiVersion": "networking.k8s.io/v1", "kind": KNP,
                                       "namespace": "prod", "name": "web",
                                       "uid": knp["metadata"]["uid"]}
    assert feedback.conditions_written == 0
    assert "status" not in api.get("networking.k8s.io/v1", KNP, "prod", "web") or \
        not api.get("networking.k8s.io/v1", KNP, "prod", "web")["status"]


async def test_a_policy_that_is_gone_gets_nothing(api: Any, client: ApiClient) -> None:
    await PolicyFeedback(client).on_status(verdict(CNP, "error"), None)
    await PolicyFeedback(client).on_status(verdict(CNP, "delete"), None)
    assert events(api, "prod") == []


async def test_only_the_leader_writes_what_the_bus_says(api: Any, client: ApiClient,
                                                        bus: Bus) -> None:
    cnp(api, "web")
    cnp(api, "db")
    leading = asyncio.Event()
    sub = await subscribe(bus, PolicyFeedback(client), leading)
    try:
        async def publish(status: PolicyStatus) -> None:
            await bus.publish(status.subjects()[0], PolicyEvent.STATUS, status,
                              msg_id=f"{status.name}-{status.revision}")

        await publish(verdict(CNP, "error", name="db"))     # not leading: skipped
        await publish(verdict(CNP, "error", name="web"))
        await eventually("both handled", lambda: sub.handled == 2)
        assert events(api, "prod") == []
        leading.set()
        await publish(verdict(CNP, "error", name="web", revision=2))
        await eventually("the Event", lambda: len(events(api, "prod")) == 1)
        assert events(api, "prod")[0]["involvedObject"]["name"] == "web"
        assert valid(api, CNP, "prod", "web")[0]["status"] == "False"
        assert valid(api, CNP, "prod", "db") == []
    finally:
        await sub.stop()
