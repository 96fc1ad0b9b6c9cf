"""Running ``cilia`` commands as a user runs them, each in a process of its own.

The commands are forked from a server that imported the CLI once (:mod:`tests.support.clifork`,
``CILIA_TEST_CLI_EXEC=1`` starts the executable instead); tests that start :data:`CILIA`
themselves (the demo, ``status --wait``, ``apply`` in the background) run the executable.
"""

from __future__ import annotations

import os
import subprocess

from tests.support import clifork
from tests.support.procs import REPO

CILIA = clifork.CILIA


def cilia(*args: str, env: dict[str, str] | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return clifork.run(list(args), env={**os.environ, **(env or {})}, cwd=REPO,
                       timeout=timeout)
