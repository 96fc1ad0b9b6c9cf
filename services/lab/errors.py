"""The lab's exception hierarchy: every message names the lab, node or pod and what failed."""

from __future__ import annotations

from services.common.errors import CiliaError


class LabError(CiliaError):
    """Base of every lab error."""


class LabConfigError(LabError):
    """A bad lab name or node count."""


class LabExistsError(LabError):
    """``up`` for a lab that is already up."""


class LabNotFoundError(LabError):
    """The lab is not up (no state)."""


class TopologyError(LabError):
    """Creating namespaces, links or routes failed."""


class PodSpecError(LabError):
    """A Pod or Deployment object is invalid; the message names the field."""


class PodNotFoundError(LabError):
    """No such pod or deployment in the lab."""


class CniInvokeError(LabError):
    """The CNI plugin reported an error (``code``/``msg``/``details`` from its JSON)."""

    def __init__(self, command: str, code: int, msg: str, details: str = "") -> None:
        text = f"CNI {command} failed (code {code}): {msg}"
        super().__init__(f"{text}: {details}" if details else text)
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details


class WorkloadError(LabError):
    """The pod's workload did not start."""
