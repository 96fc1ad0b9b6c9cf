"""Where cilia keeps its files, worked out in one place.

- the state directory (``$CILIA_STATE_DIR``, default ``/var/lib/cilia``): the control plane's
  record (``up.json``), the bus's credentials, the lab, each node agent's state;
- the runtime directory (``$CILIA_RUN_DIR``, default ``/run/cilia``): sockets;
- the bpffs root of every node's pinned maps and programs (``/sys/fs/bpf/cilia/<node>``).

State files are written with :func:`write_json_atomic`, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STATE_DIR_ENV = "CILIA_STATE_DIR"
DEFAULT_STATE_DIR = "/var/lib/cilia"
RUN_DIR_ENV = "CILIA_RUN_DIR"
DEFAULT_RUN_DIR = "/run/cilia"
BPFFS_ROOT = Path("/sys/fs/bpf")        # where the kernel's bpf filesystem is mounted
PIN_ROOT = BPFFS_ROOT / "cilia"         # every node's pinned objects: <PIN_ROOT>/<node>/<map>


def state_root() -> Path:
    """Root of cilia's persistent state (env ``CILIA_STATE_DIR``, default /var/lib/cilia)."""
    return Path(os.environ.get(STATE_DIR_ENV, DEFAULT_STATE_DIR))


def run_root() -> Path:
    """Root of cilia's runtime files: sockets (env ``CILIA_RUN_DIR``, default /run/cilia)."""
    return Path(os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR))


def read_json(path: Path) -> dict[str, Any] | None:
    """A state file's JSON object; None when it is missing or not a JSON object (a state
    file is written whole, so it is either there or not)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON to ``path`` atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
