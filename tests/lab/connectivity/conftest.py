from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, cluster


@pytest.fixture(scope="package")
def lab2() -> Iterator[Cluster]:
    """A two-node lab with the whole control plane, for this directory's tests (removed when
    they are done); this process reads the lab's state too."""
    # Not under pytest's basetemp: another pytest session on this machine may prune it.
    tmp = Path(tempfile.mkdtemp(prefix="cilia-conn-"))
    try:
        with cluster(tmp, nodes=2) as c, pytest.MonkeyPatch.context() as mp:
            for key in ("CILIA_STATE_DIR", "CILIA_RUN_DIR"):
                mp.setenv(key, c.env[key])
            yield c
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
