"""Bad messages: counted per subject family, logged once per subject, never fatal.

A consumer that meets a message it must reject (it does not decode or does not follow its
schema) or whose handler raises counts it here and goes on. The Prometheus counter is labelled
by service and subject family (``cilia.ipcache.k8s``, not one series per object); the log
names the subject and the stream sequence once per subject, so ten thousand bad messages on
one subject make one log line. :meth:`Rejections.stats` is what a service's status heartbeat
reports (``rejected``, ``failed``).
"""

from __future__ import annotations

import logging
from collections import Counter as Tally

from prometheus_client import Counter

from services.common.contract import subject_family

log = logging.getLogger(__name__)

REJECTED = Counter("cilia_bus_bad_messages_total",
                   "Messages rejected by validation or failed by their handler",
                   ["service", "family", "outcome"])
MAX_LOGGED_SUBJECTS = 10_000    # subjects remembered as logged; beyond, counted only
OUTCOME_REJECTED = "rejected"
OUTCOME_FAILED = "failed"


class Rejections:
    """One service's account of the messages it could not use."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.by_family: Tally[str] = Tally()
        self.failed_by_family: Tally[str] = Tally()
        self._logged: set[tuple[str, str]] = set()
        self._saturated = False

    @property
    def rejected(self) -> int:
        return sum(self.by_family.values())

    @property
    def failed(self) -> int:
        return sum(self.failed_by_family.values())

    def reject(self, subject: str, seq: int, reason: object) -> None:
        """Count a message rejected by validation (logged once per subject)."""
        family = subject_family(subject)
        self.by_family[family] += 1
        REJECTED.labels(self.service, family, OUTCOME_REJECTED).inc()
        if self._first(subject, OUTCOME_REJECTED):
            log.warning("%s: rejected message %s on %s: %s (further rejections on this "
                        "subject are counted, not logged)", self.service, seq, subject,
                        str(reason)[:500])

    def fail(self, subject: str, seq: int, exc: BaseException) -> None:
        """Count a message whose handler raised (logged with its traceback once per
        subject)."""
        family = subject_family(subject)
        self.failed_by_family[family] += 1
        REJECTED.labels(self.service, family, OUTCOME_FAILED).inc()
        if self._first(subject, OUTCOME_FAILED):
            log.error("%s: handler failed on message %s on %s (further failures on this "
                      "subject are counted, not logged)", self.service, seq, subject,
                      exc_info=exc)

    def _first(self, subject: str, outcome: str) -> bool:
        key = (subject, outcome)
        if key in self._logged:
            return False
        if len(self._logged) >= MAX_LOGGED_SUBJECTS:
            if not self._saturated:
                self._saturated = True
                log.warning("%s: bad messages on more than %d subjects; further ones are "
                            "counted, not logged", self.service, MAX_LOGGED_SUBJECTS)
            return False
        self._logged.add(key)
        return True

    def stats(self) -> dict[str, object]:
        """``rejected`` and ``failed`` totals, and rejections per subject family."""
        return {"rejected": self.rejected, "failed": self.failed,
                "rejected_by": dict(sorted(self.by_family.items()))}
