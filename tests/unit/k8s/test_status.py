"""What cilia writes about a policy (services.k8s.status): the Event of a rejection, the Valid
condition, and when nothing needs writing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.common.contract.policy import PolicyStatus
from services.k8s.status import (
    MAX_MESSAGE,
    MAX_NAME,
    PolicyRef,
    event_bump,
    event_name,
    merge_conditions,
    rejection_event,
    rejection_message,
    status_patch,
    valid_condition,
    verdict,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
ERROR = "spec.ingress[0].toPorts[0].ports[0].protocol: 'TCPX' is not one of ..."


def status(kind: str = "CiliumNetworkPolicy", ns: str = "prod", op: str = "error",
           error: str | None = ERROR) -> PolicyStatus:
    return PolicyStatus(kind=kind, namespace=ns, name="web", revision=3, op=op,  # type: ignore[arg-type]
                        error=error if op == "error" else None)


def test_verdicts() -> None:
    assert verdict(status()) == "rejected"
    assert verdict(status(op="set")) == "accepted"
    assert verdict(status(op="delete")) is None


def test_a_rejected_cnp_gets_a_warning_event_about_it_in_its_namespace() -> None:
    ref = PolicyRef.of(status(), "uid-1")
    event = rejection_event(ref, ERROR, T0, instance="watcher-0")
    assert event["metadata"]["namespace"] == "prod"
    assert event["metadata"]["name"].startswith("web.")
    assert event["involvedObject"] == {"apiVersion": "cilium.io/v2",
                                       "kind": "CiliumNetworkPolicy", "namespace": "prod",
                                       "name": "web", "uid": "uid-1"}
    assert (event["type"], event["reason"], event["message"]) == ("Warning", "PolicyRejected",
                                                                  ERROR)
    assert event["source"] == {"component": "cilia"}
    assert event["reportingComponent"] == "cilia"
    assert event["reportingInstance"] == "watcher-0"
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2024-05-01T12:00:00Z"
    assert event["count"] == 1


def test_a_ccnp_event_goes_to_default_and_names_no_namespace() -> None:
    ref = PolicyRef.of(status(kind="CiliumClusterwideNetworkPolicy", ns=""))
    event = rejection_event(ref, ERROR, T0)
    assert event["metadata"]["namespace"] == "default"
    assert "namespace" not in event["involvedObject"]
    assert "uid" not in event["involvedObject"]     # not known
    assert "reportingInstance" not in event


def test_a_knp_has_the_networking_api_version_and_no_status() -> None:
    ref = PolicyRef.of(status(kind="NetworkPolicy"))
    assert ref.api_version == "networking.k8s.io/v1"
    assert not ref.has_status
    assert PolicyRef.of(status()).has_status


def test_the_event_name_is_one_per_object_and_message() -> None:
    ref = PolicyRef("CiliumNetworkPolicy", "prod", "web", "u1")
    name = event_name(ref, "PolicyRejected", ERROR)
    assert name == event_name(ref, "PolicyRejected", ERROR)
    assert name != event_name(ref, "PolicyRejected", ERROR + "!")
    assert name != event_name(PolicyRef("CiliumNetworkPolicy", "prod", "web", "u2"),
                              "PolicyRejected", ERROR)       # a new object of the same name
    long = PolicyRef("CiliumNetworkPolicy", "prod", "x" * MAX_NAME)
    assert len(event_name(long, "PolicyRejected", ERROR)) <= MAX_NAME


def test_a_long_error_is_cut_to_the_event_limit() -> None:
    assert rejection_message(status()) == ERROR
    assert len(rejection_message(status(error="e" * 5000))) == MAX_MESSAGE


def test_a_repeated_rejection_bumps_count_and_last_timestamp() -> None:
    later = T0 + timedelta(minutes=1)
    assert event_bump({"count": 4}, later) == {"count": 5,
                                               "lastTimestamp": "2024-05-01T12:01:00Z"}
    assert event_bump({}, later)["count"] == 2


def test_the_valid_condition_of_each_verdict() -> None:
    assert valid_condition("rejected", ERROR, T0) == {
        "type": "Valid", "status": "False", "reason": "PolicyRejected", "message": ERROR,
        "lastTransitionTime": "2024-05-01T12:00:00Z"}
    accepted = valid_condition("accepted", "", T0)
    assert (accepted["status"], accepted["reason"]) == ("True", "PolicyAccepted")


def test_merge_adds_the_condition_and_keeps_others() -> None:
    other = {"type": "Ready", "status": "True"}
    wanted = valid_condition("rejected", ERROR, T0)
    assert merge_conditions(None, wanted) == [wanted]
    assert merge_conditions([other], wanted) == [other, wanted]
    assert status_patch([wanted]) == {"status": {"conditions": [wanted]}}


def test_merge_writes_nothing_when_the_condition_says_so_already() -> None:
    wanted = valid_condition("rejected", ERROR, T0)
    same_later = valid_condition("rejected", ERROR, T0 + timedelta(hours=1))
    assert merge_conditions([wanted], same_later) is None


def test_merge_moves_the_transition_time_only_when_the_status_flips() -> None:
    first = valid_condition("rejected", ERROR, T0)
    later = T0 + timedelta(hours=1)
    other_error = merge_conditions([first], valid_condition("rejected", "other", later))
    assert other_error is not None
    assert other_error[0]["message"] == "other"
    assert other_error[0]["lastTransitionTime"] == "2024-05-01T12:00:00Z"
    flipped = merge_conditions([first], valid_condition("accepted", "", later))
    assert flipped is not None
    assert (flipped[0]["status"], flipped[0]["lastTransitionTime"]) == ("True",
                                                                        "2024-05-01T13:00:00Z")
