"""The CNI 1.0.0 contract, as pure functions: environment, network config, results, errors.

Reference: https://www.cni.dev/docs/spec/ (version 1.0.0). Nothing here does I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import CiliaError

CNI_VERSION = "1.0.0"
SUPPORTED_VERSIONS = ("1.0.0",)

# Error codes of the spec (section "Error"), and ours from 100 up as the spec reserves.
ERR_INCOMPATIBLE_VERSION = 1   # incompatible CNI version
ERR_UNSUPPORTED_FIELD = 2      # unsupported field in network configuration
ERR_UNKNOWN_CONTAINER = 3      # container unknown or does not exist
ERR_INVALID_ENV = 4            # invalid necessary environment variables
ERR_IO = 5                     # I/O failure
ERR_DECODE = 6                 # failed to decode content
ERR_INVALID_CONFIG = 7         # invalid network config
ERR_TRY_AGAIN = 11             # try again later (the agent is not reachable)
ERR_ENDPOINT = 100             # cilia: the agent failed to create or delete the endpoint
ERR_IPAM_EXHAUSTED = 101       # cilia: the node's pod CIDR is full
ERR_CHECK_FAILED = 102         # cilia: CHECK found the endpoint differing from its result

# CNI_ARGS key carrying the W3C traceparent of the runtime's operation (ADD continues its
# trace in the agent; runtimes pass IgnoreUnknown=1, so other plugins ignore it).
TRACEPARENT_ARG = "TRACEPARENT"

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")
MAX_IFNAME = 15
CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
IFNAME_FORBIDDEN = re.compile(r"[/:\s]")


class CniError(CiliaError):
    """A failure reported to the runtime as CNI error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str = CNI_VERSION) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


@dataclass(frozen=True)
class CniEnv:
    """The CNI_* environment of one invocation, validated for its command."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: str = ""


def parse_cni_args(text: str) -> dict[str, str]:
    """Parse ``CNI_ARGS`` (``K1=V1;K2=V2``).

    Raises:
        CniError: a pair has no ``=`` or an empty key (code 4).
    """
    out: dict[str, str] = {}
    for pair in filter(None, text.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS: malformed pair {pair!r}",
                           "expected K=V pairs separated by ';'")
        out[key] = value
    return out


def validate_ifname(name: str) -> None:
    if not name or len(name) > MAX_IFNAME or name in (".", "..") or IFNAME_FORBIDDEN.search(name):
        raise CniError(ERR_INVALID_ENV, f"CNI_IFNAME: invalid interface name {name!r}",
                       f"1-{MAX_IFNAME} characters, no '/', ':' or whitespace")


def parse_env(environ: Mapping[str, str]) -> CniEnv:
    """Read and validate the CNI_* variables for the command they name.

    Raises:
        CniError: code 4 naming the variable that is missing or invalid.
    """
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(ERR_INVALID_ENV, f"CNI_COMMAND: {command!r} is not one of "
                       f"{', '.join(COMMANDS)}" if command else "CNI_COMMAND is not set")
    if command == "VERSION":
        return CniEnv(command=command)
    required = {"ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
                "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
                "DEL": ("CNI_CONTAINERID", "CNI_IFNAME")}[command]
    for var in required:
        if not environ.get(var):
            raise CniError(ERR_INVALID_ENV, f"{var} is not set", f"required for {command}")
    cid = environ["CNI_CONTAINERID"]
    if not CONTAINER_ID_RE.match(cid):
        raise CniError(ERR_INVALID_ENV, f"CNI_CONTAINERID: invalid container id {cid!r}",
                       "alphanumeric first, then alphanumerics, '_', '.', '-'")
    ifname = environ["CNI_IFNAME"]
    validate_ifname(ifname)
    return CniEnv(command=command, container_id=cid, netns=environ.get("CNI_NETNS", ""),
                  ifname=ifname, args=parse_cni_args(environ.get("CNI_ARGS", "")),
                  path=environ.get("CNI_PATH", ""))


@dataclass(frozen=True)
class NetConf:
    """The parts of the network configuration cilia uses."""

    cni_version: str
    name: str
    type: str
    socket_path: str
    raw: dict[str, Any]

    @property
    def prev_result(self) -> dict[str, Any] | None:
        prev = self.raw.get("prevResult")
        return prev if isinstance(prev, dict) else None


def parse_netconf(data: bytes | str, require_socket: bool = True) -> NetConf:
    """Decode and validate the network configuration read from stdin.

    Raises:
        CniError: code 6 (not JSON), 7 (a field missing or of the wrong type), 1 (version).
    """
    try:
        raw = json.loads(data or b"{}")
    except ValueError as exc:
        raise CniError(ERR_DECODE, "network config: not valid JSON", str(exc)) from exc
    if not isinstance(raw, dict):
        raise CniError(ERR_DECODE, "network config: not a JSON object")
    version = raw.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(ERR_INVALID_CONFIG, "network config: field cniVersion is missing")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"network config: cniVersion {version!r} is "
                       f"not supported", f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    for key in ("name", "type"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise CniError(ERR_INVALID_CONFIG, f"network config: field {key} is missing")
    sock = raw.get("socketPath", "")
    if not isinstance(sock, str) or (require_socket and not sock):
        raise CniError(ERR_INVALID_CONFIG, "network config: field socketPath is missing",
                       "the path of the cilia agent's CNI socket on this node")
    return NetConf(version, raw["name"], raw["type"], sock, raw)


def version_result() -> dict[str, Any]:
    return {"cniVersion": CNI_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


def add_result(endpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The ADD result for an endpoint record (see :class:`services.nodeagent.endpoints.Endpoint`).

    Interface 0 is the host-side veth, interface 1 the pod's (with its sandbox).
    """
    return {
        "cniVersion": CNI_VERSION,
        "interfaces": [
            {"name": endpoint["host_ifname"], "mac": endpoint["host_mac"]},
            {"name": endpoint["pod_ifname"], "mac": endpoint["pod_mac"],
             "sandbox": endpoint["netns_path"]},
        ],
        "ips": [{"address": f"{endpoint['ipv4']}/32", "gateway": endpoint["gateway"],
                 "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": endpoint["gateway"]}],
        "dns": {},
    }


def check_prev_result(prev: Mapping[str, Any], endpoint: Mapping[str, Any]) -> None:
    """Compare CHECK's prevResult with the endpoint the agent holds.

    Raises:
        CniError: code 102 naming the field that differs.
    """
    want = add_result(endpoint)
    got_ips = [ip.get("address") for ip in prev.get("ips", []) if isinstance(ip, dict)]
    if got_ips != [ip["address"] for ip in want["ips"]]:
        raise CniError(ERR_CHECK_FAILED, f"prevResult.ips {got_ips} differ from the endpoint's "
                       f"{want['ips'][0]['address']}")
    names = [i.get("name") for i in prev.get("interfaces", []) if isinstance(i, dict)]
    if endpoint["pod_ifname"] not in names:
        raise CniError(ERR_CHECK_FAILED, f"prevResult.interfaces lack {endpoint['pod_ifname']}")
