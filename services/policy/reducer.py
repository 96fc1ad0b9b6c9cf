"""The policy service's reducers, pure: its inputs folded into the
:class:`~services.policy.repository.Repository` (:func:`reduce_input`), and its own outputs
folded into a :class:`BusView` (what the bus currently says).

The live service (:mod:`services.policy.service`) and replay run the very same functions, over
the very same subjects (the contract's ``POLICY_INPUTS`` and ``POLICY_OUTPUTS``).
"""

from __future__ import annotations

from typing import Any

from services.common.contract import IdentityEvent, IpcacheEvent, ObjectEvent, PolicyEvent
from services.common.labels import Labels

from .model import PolicyRef
from .publish import fold_selector
from .repository import Changes, Repository
from .validate import parse_policy

# The input event types of the policy service (identity events and its policy objects).
IDENTITY_EVENTS = frozenset(IdentityEvent)


class BusView:
    """What the bus currently says about the policy service's outputs (a fold of them)."""

    def __init__(self) -> None:
        self.members: dict[str, set[int]] = {}
        self.subjects: dict[int, dict[str, Any]] = {}
        self.prefixes: dict[str, int] = {}
        self.policies: dict[str, dict[str, Any]] = {}

    def apply(self, event_type: str, data: dict[str, Any]) -> None:
        match event_type:
            case PolicyEvent.SELECTOR:
                fold_selector(self.members, data)
            case PolicyEvent.RULES:
                # Kept when empty too: an empty message is the "computed" mark of an identity.
                self.subjects[data["identity"]] = data
            case IpcacheEvent.UPSERT:
                self.prefixes[data["prefix"]] = data["identity"]
            case IpcacheEvent.DELETE:
                self.prefixes.pop(data["prefix"], None)
            case PolicyEvent.STATUS:
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
        case IdentityEvent.UPSERT:
            return repo.add_identity(data["id"], Labels.parse(data["labels"]))
        case IdentityEvent.DELETE:
            return repo.remove_identity(data["id"])
        case ObjectEvent.UPSERT:
            return repo.upsert(parse_policy(data["object"]))
        case ObjectEvent.DELETE:
            return repo.delete(PolicyRef(data["kind"], data["namespace"], data["name"]))
    return None
