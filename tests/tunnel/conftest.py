from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, cluster


@pytest.fixture(scope="module")
def tunnel() -> Iterator[Cluster]:
    """A 2-node lab with ``--routing tunnel``."""
    # Not under pytest's basetemp: another pytest session on this machine may prune it.
    tmp = Path(tempfile.mkdtemp(prefix="cilia-tunnel-"))
    try:
        with cluster(tmp, nodes=2, routing="tunnel") as c:
            yield c
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
