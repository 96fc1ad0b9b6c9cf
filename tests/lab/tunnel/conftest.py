"""Two 2-node labs for the package, one per routing mode, shared by its modules.

Starting a lab costs seconds; ``test_tunnel`` compares the modes and ``test_established``
runs in each, on the same two labs. A module removes what it applied before it ends (also
when a test fails), so the modules run in any order. (This directory is no Python package:
pytest ends "package" fixtures here with the session; tunnel is the last directory of
tests/lab, so that is right after its tests.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster, temp_cluster
from tests.support.threetier import NO_DRIFT_CHECK


@pytest.fixture(scope="package")
def tunnel() -> Iterator[Cluster]:
    """A 2-node lab with ``--routing tunnel``."""
    with temp_cluster(nodes=2, routing="tunnel", prefix="cilia-tunnel-",
                      extra_env=NO_DRIFT_CHECK) as c:
        yield c


@pytest.fixture(scope="package")
def native() -> Iterator[Cluster]:
    """A 2-node lab with ``--routing native``."""
    with temp_cluster(nodes=2, routing="native", prefix="cilia-native-",
                      extra_env=NO_DRIFT_CHECK) as c:
        yield c
