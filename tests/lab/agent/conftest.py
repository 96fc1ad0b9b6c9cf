from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster, temp_cluster


@pytest.fixture(scope="module")
def lab() -> Iterator[Cluster]:
    with temp_cluster(nodes=1) as c:
        yield c
