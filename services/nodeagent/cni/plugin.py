"""The ``cilia-cni`` executable: a CNI 1.0.0 plugin that delegates to the node's agent.

Invoked by a container runtime with ``CNI_*`` variables and the network config on stdin; writes
the result (or error) JSON to stdout; exits 0 on success and 1 on error, as the spec requires.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

from services.nodeagent.cni.protocol import call_agent, make_request
from services.nodeagent.cni.spec import (
    CNI_VERSION,
    CniError,
    parse_env,
    parse_netconf,
    version_result,
)

EXIT_OK = 0
EXIT_ERROR = 1


def run(environ: Mapping[str, str], stdin: bytes) -> tuple[int, dict[str, Any] | None]:
    """Execute one invocation; returns (exit code, JSON to print or None)."""
    version = CNI_VERSION
    try:
        env = parse_env(environ)
        if env.command == "VERSION":
            return EXIT_OK, version_result()
        conf = parse_netconf(stdin)
        version = conf.cni_version
        result = call_agent(conf.socket_path, make_request(env, conf.raw))
        if env.command == "ADD":
            return EXIT_OK, result
        return EXIT_OK, None
    except CniError as err:
        return EXIT_ERROR, err.to_json(version)


def main(stdin: IO[bytes] | None = None, stdout: IO[str] | None = None) -> int:
    """Console entry point of ``cilia-cni``."""
    data = (stdin or sys.stdin.buffer).read()
    code, out = run(os.environ, data)
    if out is not None:
        json.dump(out, stdout or sys.stdout)
        (stdout or sys.stdout).write("\n")
    return code


def console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console()
