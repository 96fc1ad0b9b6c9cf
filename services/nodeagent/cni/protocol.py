"""The plugin <-> agent wire protocol: one JSON request line, one JSON response line.

Request: ``{"command", "containerId", "netns", "ifname", "args", "config"}``.
Response: ``{"result": {...}}`` (ADD/CHECK; DEL returns ``{"result": null}``) or
``{"error": {"code", "msg", "details"}}`` with CNI error codes.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from services.nodeagent.cni.spec import ERR_DECODE, ERR_IO, ERR_TRY_AGAIN, CniEnv, CniError

MAX_MESSAGE = 1 << 20        # bytes; a request or response larger than this is refused
DEFAULT_TIMEOUT = 30.0       # seconds the plugin waits for the agent


def make_request(env: CniEnv, config: dict[str, Any]) -> dict[str, Any]:
    return {"command": env.command, "containerId": env.container_id, "netns": env.netns,
            "ifname": env.ifname, "args": env.args, "config": config}


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Decode one message.

    Raises:
        CniError: code 6 when the line is not a JSON object.
    """
    try:
        msg = json.loads(line)
    except ValueError as exc:
        raise CniError(ERR_DECODE, "agent message: not valid JSON", str(exc)) from exc
    if not isinstance(msg, dict):
        raise CniError(ERR_DECODE, "agent message: not a JSON object")
    return msg


def error_response(err: CniError) -> dict[str, Any]:
    return {"error": {"code": err.code, "msg": err.msg, "details": err.details}}


def call_agent(socket_path: str, request: dict[str, Any],
               timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any] | None:
    """Send one request to the agent and return its result.

    Raises:
        CniError: code 11 when the agent is not reachable, 5 on I/O failure, or the agent's
            own error.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(socket_path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise CniError(ERR_TRY_AGAIN, f"cilia agent not reachable at {socket_path}",
                           str(exc)) from exc
        sock.sendall(encode(request))
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_MESSAGE:
                raise CniError(ERR_IO, "agent response too large")
    except OSError as exc:
        raise CniError(ERR_IO, f"talking to the cilia agent at {socket_path}: {exc}") from exc
    finally:
        sock.close()
    if not buf:
        raise CniError(ERR_IO, f"cilia agent at {socket_path} closed without answering")
    response = decode(bytes(buf))
    if "error" in response:
        err = response["error"] or {}
        raise CniError(int(err.get("code", ERR_IO)), str(err.get("msg", "agent error")),
                       str(err.get("details", "")))
    result = response.get("result")
    return result if isinstance(result, dict) else None
