"""The policy service's reducers, pure: its inputs folded into the
:class:`~services.policy.repository.Repository` (:func:`reduce_input`), and its own outputs
folded into a :class:`BusView` (what the bus currently says).

The live service (:mod:`services.policy.service`) and replay run the very same functions, over
the very same subjects (:data:`INPUTS`, :data:`OUTPUTS`).
"""

from __future__ import annotations

from typing import Any

from services.common import subjects
from services.common.labels import Labels

from .model import POLICY_KINDS, PolicyRef
from .publish import fold_selector
from .repository import Changes, Repository
from .validate import parse_policy

OUTPUTS = ["cilia.policy.>", f"cilia.ipcache.{subjects.IPCACHE_SOURCE_CIDR}.>"]
INPUTS = [*(subjects.source_filter(k) for k in sorted(POLICY_KINDS)), "cilia.identity.>"]


class BusView:
    """What the bus currently says about the policy service's outputs (a fold of them)."""

    def __init__(self) -> None:
        self.members: dict[str, set[int]] = {}
        self.subjects: dict[int, dict[str, Any]] = {}
        self.prefixes: dict[str, int] = {}
        self.policies: dict[str, dict[str, Any]] = {}

    def apply(self, event_type: str, data: dict[str, Any]) -> None:
        match event_type:
            case "policy.selector":
                fold_selector(self.members, data)
            case "policy.rules":
                # Kept when empty too: an empty message is the "computed" mark of an identity.
                self.subjects[data["identity"]] = data
            case "ipcache.upsert":
                self.prefixes[data["prefix"]] = data["identity"]
            case "ipcache.delete":
                self.prefixes.pop(data["prefix"], None)
            case "policy.status":
                key = f"{data['kind']}/{data['namespace']}/{data['name']}"
                if data["op"] == "delete":
                    self.policies.pop(key, None)
                else:
                    self.policies[key] = data


def reduce_input(repo: Repository, event_type: str, data: dict[str, Any]) -> Changes | None:
    """Apply one input event to the repository; returns its Changes (None: not an input).

    Raises:
        PolicyError: the policy object is invalid (the repository keeps its previous version).
    """
    match event_type:
        case "identity.upsert":
            return repo.add_identity(data["id"], Labels.parse(data["labels"]))
        case "identity.delete":
            return repo.remove_identity(data["id"])
        case "object.upsert":
            return repo.upsert(parse_policy(data["object"]))
        case "object.delete":
            return repo.delete(PolicyRef(data["kind"], data["namespace"], data["name"]))
    return None
