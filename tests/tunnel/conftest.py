from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster, temp_cluster


@pytest.fixture(scope="module")
def tunnel() -> Iterator[Cluster]:
    """A 2-node lab with ``--routing tunnel``."""
    with temp_cluster(nodes=2, routing="tunnel", prefix="cilia-tunnel-") as c:
        yield c
