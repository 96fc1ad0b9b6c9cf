"""The runtime side of CNI: invoke a plugin executable exactly as containerd/libcni does.

The plugin named by the network config's ``type`` is looked up in ``CNI_PATH``; it runs with
the ``CNI_*`` environment and the network config on stdin, inside the node's netns (where a
kubelet on that node would run it). Its stdout carries the result or the error JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.lab import netns as ns
from services.lab.errors import CniInvokeError, LabError

PLUGIN_TIMEOUT = 60.0          # seconds a plugin may take
PLUGIN_NAME = "cilia-cni"
ERR_PLUGIN_OUTPUT = 999        # our code for a plugin that printed no valid JSON


def default_cni_path() -> list[str]:
    """Directories searched for plugins: ``$CNI_PATH`` or the directory of cilia-cni."""
    env = os.environ.get("CNI_PATH")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    return [str(Path(sys.executable).parent)]


def find_plugin(plugin_type: str, cni_path: list[str]) -> str:
    """The executable of a plugin type.

    Raises:
        LabError: it is in none of the directories.
    """
    for directory in cni_path:
        candidate = Path(directory) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise LabError(f"CNI plugin {plugin_type!r} not found in CNI_PATH {':'.join(cni_path)} "
                   f"(is the project installed? `pip install -e .` provides {PLUGIN_NAME})")


def format_cni_args(args: Mapping[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in args.items())


def invoke(command: str, netconf: Mapping[str, Any], *, container_id: str = "",
           netns_path: str = "", ifname: str = "eth0", args: Mapping[str, str] | None = None,
           cni_path: list[str] | None = None, run_in_netns: str | None = None,
           prev_result: Mapping[str, Any] | None = None,
           timeout: float = PLUGIN_TIMEOUT) -> dict[str, Any] | None:
    """Run the plugin for one CNI command.

    Args:
        command: ADD, DEL, CHECK or VERSION.
        netconf: the network config (``type`` names the plugin).
        run_in_netns: the node netns to run the plugin in (None: the caller's).
        prev_result: the ADD result, passed to CHECK and DEL as ``prevResult``.

    Returns:
        The plugin's JSON output (None when it printed nothing, as DEL does).

    Raises:
        CniInvokeError: the plugin exited non-zero (code and message from its error JSON).
    """
    path = cni_path or default_cni_path()
    exe = find_plugin(str(netconf.get("type", "")), path)
    conf = dict(netconf)
    if prev_result is not None and command in ("CHECK", "DEL"):
        conf["prevResult"] = dict(prev_result)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "CNI_COMMAND": command, "CNI_PATH": os.pathsep.join(path)}
    if command != "VERSION":
        env.update(CNI_CONTAINERID=container_id, CNI_NETNS=netns_path, CNI_IFNAME=ifname,
                   CNI_ARGS=format_cni_args(args or {}))
    proc = ns.spawn(run_in_netns, [exe], env=env, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(json.dumps(conf).encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise CniInvokeError(command, ERR_PLUGIN_OUTPUT, f"plugin timed out after {timeout}s") \
            from None
    text = out.decode(errors="replace").strip()
    try:
        data = json.loads(text) if text else None
    except ValueError:
        raise CniInvokeError(command, ERR_PLUGIN_OUTPUT, "plugin printed invalid JSON",
                             (text + err.decode(errors="replace"))[-500:]) from None
    if proc.returncode != 0:
        if not isinstance(data, dict):
            raise CniInvokeError(command, ERR_PLUGIN_OUTPUT, f"plugin exited "
                                 f"{proc.returncode}", err.decode(errors="replace")[-500:])
        raise CniInvokeError(command, int(data.get("code", ERR_PLUGIN_OUTPUT)),
                             str(data.get("msg", "")), str(data.get("details", "")))
    return data if isinstance(data, dict) else None
