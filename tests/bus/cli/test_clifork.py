"""The tests' cilia fork server never outlives the process that started it.

A bench or script that runs ``cilia`` through ``tests.support.cli`` has no session fixture to
stop the server: it is stopped at exit, and it stops by itself when its parent is killed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.support.procs import REPO

SCRIPT = """
import os, sys
from tests.support import clifork
done = clifork.run(["--help"], env=dict(os.environ), cwd=sys.argv[1], timeout=60)
assert done.returncode == 0 and "Usage" in done.stdout, done
print(clifork._server[0].pid, flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), 9)
"""
GONE_WITHIN_S = 10.0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("ending", ["exit", "kill"])
def test_the_fork_server_ends_with_its_parent(ending: str) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO), ending], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=120)
    server = int(proc.stdout.split()[0])
    deadline = time.monotonic() + GONE_WITHIN_S
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(server)
    if alive:
        os.kill(server, 9)
    assert not alive, f"the fork server {server} outlived its parent ({ending})"
