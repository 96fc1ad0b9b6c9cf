"""Running the real ``cilia`` executable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.procs import REPO

CILIA = str(Path(sys.executable).parent / "cilia")


def cilia(*args: str, env: dict[str, str] | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CILIA, *args], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
