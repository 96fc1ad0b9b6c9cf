"""The rules of Lease leader election (services.k8s.election): when a lease may be taken, what
taking, renewing and releasing write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.k8s.election import (
    ElectionConfigError,
    LeaseRecord,
    Observation,
    check_timings,
    claim,
    expires_in,
    lease_object,
    micro_time,
    observe,
    release,
    takeable,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
HELD = LeaseRecord("a", 15, T0, T0, 3)


def test_a_lease_held_by_another_is_not_takeable_until_its_duration_passes_unchanged() -> None:
    obs = observe(None, HELD, now=100.0)
    assert not takeable(obs, "b", 100.0)
    assert not takeable(obs, "b", 114.9)
    assert expires_in(obs, "b", 110.0) == pytest.approx(5.0)
    assert takeable(obs, "b", 115.0)
    assert expires_in(obs, "b", 115.0) == 0.0


def test_a_renewal_seen_restarts_the_wait() -> None:
    obs = observe(None, HELD, now=100.0)
    renewed = LeaseRecord("a", 15, T0, T0 + timedelta(seconds=2), 3)
    obs = observe(obs, renewed, now=110.0)
    assert obs.changed_at == 110.0
    assert not takeable(obs, "b", 120.0)
    assert takeable(obs, "b", 125.0)


def test_the_same_record_read_again_does_not_restart_the_wait() -> None:
    obs = observe(None, HELD, now=100.0)
    assert observe(obs, LeaseRecord("a", 15, T0, T0, 3), now=110.0).changed_at == 100.0


def test_wall_clock_times_in_the_record_are_not_trusted() -> None:
    """A renewTime long past (another node's clock, or ours) does not make the lease free:
    only the candidate's own observation counts."""
    ancient = LeaseRecord("a", 15, T0 - timedelta(days=1), T0 - timedelta(days=1), 0)
    assert not takeable(observe(None, ancient, now=5.0), "b", 5.0)


def test_a_free_lease_or_ones_own_is_takeable_at_once() -> None:
    released = release(HELD, T0)
    assert takeable(Observation(released, 100.0), "b", 100.0)
    assert takeable(Observation(HELD, 100.0), "a", 100.0)


def test_claim_renews_keeping_acquire_time_and_transitions() -> None:
    later = T0 + timedelta(seconds=5)
    renewed = claim(HELD, "a", 15, later)
    assert renewed == LeaseRecord("a", 15, T0, later, 3)


def test_claim_takes_over_counting_one_transition() -> None:
    later = T0 + timedelta(seconds=30)
    assert claim(HELD, "b", 15, later) == LeaseRecord("b", 15, later, later, 4)
    assert claim(None, "b", 15, later) == LeaseRecord("b", 15, later, later, 0)


def test_release_leaves_no_holder_and_a_one_second_lease() -> None:
    given_up = release(HELD, T0)
    assert (given_up.holder, given_up.duration_s, given_up.transitions) == ("", 1, 3)
    # taking a released lease is not a transition from anybody
    assert claim(given_up, "b", 15, T0).transitions == 3


def test_the_record_round_trips_through_a_lease_spec() -> None:
    spec = HELD.to_spec()
    assert spec == {"holderIdentity": "a", "leaseDurationSeconds": 15, "leaseTransitions": 3,
                    "acquireTime": "2024-05-01T12:00:00.000000Z",
                    "renewTime": "2024-05-01T12:00:00.000000Z"}
    assert LeaseRecord.from_spec(spec) == HELD
    assert LeaseRecord.from_spec(None) == LeaseRecord()
    # as kubernetes_asyncio hands back a model's times (isoformat, offset form)
    assert LeaseRecord.from_spec({**spec, "renewTime": "2024-05-01T12:00:00+00:00"}) == HELD


def test_micro_time_always_has_six_fractional_digits() -> None:
    assert micro_time(T0) == "2024-05-01T12:00:00.000000Z"
    assert micro_time(T0.replace(microsecond=5)) == "2024-05-01T12:00:00.000005Z"


def test_a_put_carries_the_resource_version_read() -> None:
    obj = lease_object("kube-system", "cilia-k8s", HELD,
                       {"name": "cilia-k8s", "resourceVersion": "42", "uid": "u"})
    assert obj["metadata"] == {"name": "cilia-k8s", "namespace": "kube-system",
                               "resourceVersion": "42", "uid": "u"}
    assert obj["apiVersion"] == "coordination.k8s.io/v1" and obj["kind"] == "Lease"
    assert "resourceVersion" not in lease_object("ns", "n", HELD)["metadata"]


@pytest.mark.parametrize(("duration", "deadline", "retry", "field"), [
    (10, 10, 2, "lease_duration"),
    (15, 2, 2, "renew_deadline"),
    (15, 10, 0, "retry_period"),
])
def test_timings_that_allow_two_leaders_are_refused(duration: float, deadline: float,
                                                    retry: float, field: str) -> None:
    with pytest.raises(ElectionConfigError, match=field):
        check_timings(duration, deadline, retry)


def test_default_and_test_timings_are_accepted() -> None:
    check_timings(15, 10, 2)
    check_timings(2, 1.5, 0.2)
