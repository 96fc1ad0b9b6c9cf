"""One recorded incident shared by the replay tests (it takes a few seconds to record)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.scenario import Incident, record_incident


@pytest.fixture(scope="module")
def incident(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Incident]:
    inc, cleanup = record_incident(tmp_path_factory.mktemp("incident"))
    try:
        yield inc
    finally:
        cleanup()
