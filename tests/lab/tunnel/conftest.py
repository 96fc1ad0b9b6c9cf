from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster, temp_cluster
from tests.support.threetier import NO_DRIFT_CHECK


@pytest.fixture(scope="module")
def tunnel() -> Iterator[Cluster]:
    """A 2-node lab with ``--routing tunnel``."""
    with temp_cluster(nodes=2, routing="tunnel", prefix="cilia-tunnel-",
                      extra_env=NO_DRIFT_CHECK) as c:
        yield c
