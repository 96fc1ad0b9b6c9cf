"""Lease leader election, the pure part: what a Lease says, when it may be taken, what to write.

The semantics are client-go's ``tools/leaderelection`` (which Cilium's operator runs):

* A ``coordination.k8s.io/v1`` Lease holds one record: ``holderIdentity``,
  ``leaseDurationSeconds``, ``acquireTime``, ``renewTime``, ``leaseTransitions``.
* A candidate never compares the record's timestamps with its own clock (clocks of two nodes
  disagree). It notes, on its own monotonic clock, when it last *saw the record change*
  (:class:`Observation`); the holder is presumed alive until ``leaseDurationSeconds`` have
  passed on that clock without a change. A record read for the first time counts as changed
  then, so a fresh candidate waits one full lease before taking an abandoned lease.
* The lease is free to take when nobody holds it (``holderIdentity`` empty: released), when this
  candidate holds it already (renewal), or when the holder let it lapse as above
  (:func:`takeable`).
* Taking or renewing writes :func:`claim`: renewTime now, acquireTime kept on renewal,
  ``leaseTransitions`` bumped when the holder changes. Releasing writes :func:`release`: no
  holder and a one-second lease, so a standby takes over at once.
* Every write is a PUT carrying the ``resourceVersion`` that was read: of two candidates
  writing the same version, the API server keeps one and answers the other 409 Conflict.

Times on the wire are ``MicroTime``: RFC 3339 with exactly six fractional digits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from services.k8s.errors import ConfigError

LEASE_API_VERSION = "coordination.k8s.io/v1"
LEASE_KIND = "Lease"
RELEASED_LEASE_S = 1     # leaseDurationSeconds of a released lease (client-go's value)
JITTER_FACTOR = 1.2      # client-go: renew_deadline must exceed retry_period by this factor


class ElectionConfigError(ConfigError):
    """Lease timings that cannot guarantee a single leader."""


def check_timings(lease_duration: float, renew_deadline: float, retry_period: float) -> None:
    """Refuse timings under which a leader could outlive its lease (client-go's checks).

    A leader stops after failing to renew for ``renew_deadline``; a standby takes over
    ``lease_duration`` after the last renewal it saw. The first must end before the second.

    Raises:
        ElectionConfigError: naming the timing at fault.
    """
    if retry_period <= 0:
        raise ElectionConfigError(f"retry_period: {retry_period} must be positive")
    if renew_deadline <= JITTER_FACTOR * retry_period:
        raise ElectionConfigError(
            f"renew_deadline: {renew_deadline} must exceed {JITTER_FACTOR} times retry_period "
            f"({retry_period})")
    if lease_duration <= renew_deadline:
        raise ElectionConfigError(
            f"lease_duration: {lease_duration} must exceed renew_deadline ({renew_deadline})")


def micro_time(t: datetime) -> str:
    """``MicroTime`` text of ``t``: ``2024-05-01T12:00:00.000000Z``."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


@dataclass(frozen=True)
class LeaseRecord:
    """The election record a Lease holds (its ``spec``); ``holder`` empty: nobody holds it."""

    holder: str = ""
    duration_s: int = 0
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> LeaseRecord:
        """The record of a Lease ``spec`` (camelCase keys, as the API serves it)."""
        spec = spec or {}
        return cls(holder=spec.get("holderIdentity") or "",
                   duration_s=int(spec.get("leaseDurationSeconds") or 0),
                   acquire_time=_parse_time(spec.get("acquireTime")),
                   renew_time=_parse_time(spec.get("renewTime")),
                   transitions=int(spec.get("leaseTransitions") or 0))

    def to_spec(self) -> dict[str, Any]:
        """The Lease ``spec`` holding this record."""
        spec: dict[str, Any] = {"holderIdentity": self.holder,
                                "leaseDurationSeconds": self.duration_s,
                                "leaseTransitions": self.transitions}
        if self.acquire_time is not None:
            spec["acquireTime"] = micro_time(self.acquire_time)
        if self.renew_time is not None:
            spec["renewTime"] = micro_time(self.renew_time)
        return spec


@dataclass(frozen=True)
class Observation:
    """A record as one candidate last saw it, and when (its monotonic clock) it last changed."""

    record: LeaseRecord
    changed_at: float


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """Fold a freshly read record into what the candidate knew: the time of the last change
    moves only when the record differs from the one seen before."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def takeable(obs: Observation, identity: str, now: float) -> bool:
    """Whether ``identity`` may write itself into the lease now.

    True when nobody holds it, when ``identity`` holds it, or when the holder has not
    renewed it for its ``leaseDurationSeconds`` as measured on the candidate's own clock
    since it last saw the record change.
    """
    record = obs.record
    if not record.holder or record.holder == identity:
        return True
    return now >= obs.changed_at + record.duration_s


def expires_in(obs: Observation, identity: str, now: float) -> float:
    """Seconds until the lease becomes :func:`takeable` for ``identity`` (0: it is now)."""
    if takeable(obs, identity, now):
        return 0.0
    return obs.changed_at + obs.record.duration_s - now


def claim(current: LeaseRecord | None, identity: str, duration_s: int,
          wall: datetime) -> LeaseRecord:
    """The record that makes ``identity`` the holder at ``wall`` (take or renew).

    A renewal keeps ``acquireTime`` and the transition count; taking the lease from another
    holder (or a released lease) counts one transition.
    """
    if current is None:
        return LeaseRecord(identity, duration_s, wall, wall, 0)
    if current.holder == identity:
        return replace(current, duration_s=duration_s, renew_time=wall,
                       acquire_time=current.acquire_time or wall)
    transitions = current.transitions + 1 if current.holder else current.transitions
    return LeaseRecord(identity, duration_s, wall, wall, transitions)


def release(current: LeaseRecord, wall: datetime) -> LeaseRecord:
    """The record of a lease given up at ``wall``: no holder, a one-second lease."""
    return LeaseRecord("", RELEASED_LEASE_S, wall, wall, current.transitions)


def lease_object(namespace: str, name: str, record: LeaseRecord,
                 metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Lease to create (no ``metadata``) or to PUT over the one read (its ``metadata``,
    whose ``resourceVersion`` makes the write conditional)."""
    meta = dict(metadata or {})
    meta.update(name=name, namespace=namespace)
    return {"apiVersion": LEASE_API_VERSION, "kind": LEASE_KIND, "metadata": meta,
            "spec": record.to_spec()}
