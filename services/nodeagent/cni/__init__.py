"""The cilia CNI plugin (``cilia-cni``) and the CNI 1.0.0 contract it speaks."""

from services.nodeagent.cni.plugin import main, run
from services.nodeagent.cni.protocol import call_agent
from services.nodeagent.cni.spec import (
    CNI_VERSION,
    ERR_CHECK_FAILED,
    ERR_DECODE,
    ERR_ENDPOINT,
    ERR_INCOMPATIBLE_VERSION,
    ERR_INVALID_CONFIG,
    ERR_INVALID_ENV,
    ERR_IO,
    ERR_IPAM_EXHAUSTED,
    ERR_TRY_AGAIN,
    ERR_UNKNOWN_CONTAINER,
    CniEnv,
    CniError,
    NetConf,
    add_result,
    parse_env,
    parse_netconf,
)

__all__ = [
    "CNI_VERSION",
    "ERR_CHECK_FAILED",
    "ERR_DECODE",
    "ERR_ENDPOINT",
    "ERR_INCOMPATIBLE_VERSION",
    "ERR_INVALID_CONFIG",
    "ERR_INVALID_ENV",
    "ERR_IO",
    "ERR_IPAM_EXHAUSTED",
    "ERR_TRY_AGAIN",
    "ERR_UNKNOWN_CONTAINER",
    "CniEnv",
    "CniError",
    "NetConf",
    "add_result",
    "call_agent",
    "main",
    "parse_env",
    "parse_netconf",
    "run",
]
