"""The policy service's reducers, pure: its inputs folded into the
:class:`~services.policy.repository.Repository` (:func:`reduce_input`), and its own outputs
folded into a :class:`BusView` (what the bus currently says).

The live service (:mod:`services.policy.service`) and replay run the very same functions, over
the very same subjects (the contract's ``POLICY_INPUTS`` and ``POLICY_OUTPUTS``).
"""

from __future__ import annotations

from services.common.contract import (
    FqdnNames,
    IdentityDelete,
    IdentityUpsert,
    IpcacheDelete,
    IpcacheUpsert,
    ObjectDelete,
    ObjectUpsert,
    Payload,
)
from services.common.contract.policy import PolicyRules, PolicySelector, PolicyStatus
from services.common.labels import Labels

from .model import PolicyRef
from .publish import fold_selector
from .repository import Changes, Repository
from .validate import parse_policy


class BusView:
    """What the bus currently says about the policy service's outputs (a fold of them)."""

    def __init__(self) -> None:
        self.members: dict[str, set[int]] = {}
        self.subjects: dict[int, PolicyRules] = {}
        self.prefixes: dict[str, int] = {}
        self.policies: dict[str, PolicyStatus] = {}

    def apply(self, payload: Payload) -> None:
        """Fold one output event (its typed payload)."""
        match payload:
            case PolicySelector():
                fold_selector(self.members, payload)
            case PolicyRules():
                # Kept when empty too: an empty message is the "computed" mark of an identity.
                self.subjects[payload.identity] = payload
            case IpcacheUpsert():
                self.prefixes[payload.prefix] = payload.identity
            case IpcacheDelete():
                self.prefixes.pop(payload.prefix, None)
            case PolicyStatus():
                key = f"{payload.kind}/{payload.namespace}/{payload.name}"
                if payload.op == "delete":
                    self.policies.pop(key, None)
                else:
                    self.policies[key] = payload


def reduce_input(repo: Repository, payload: Payload) -> Changes | None:
    """Apply one input event (its typed payload) to the repository; returns its Changes
    (None: not an input).

    Raises:
        PolicyError: the policy object is invalid (the repository keeps its previous version).
    """
    match payload:
        case IdentityUpsert():
            return repo.add_identity(payload.id, Labels.parse(payload.labels))
        case IdentityDelete():
            return repo.remove_identity(payload.id)
        case ObjectUpsert():
            return repo.upsert(parse_policy(payload.object))
        case ObjectDelete():
            return repo.delete(PolicyRef(payload.kind, payload.namespace, payload.name))
        case FqdnNames():
            return repo.learn(payload)
    return None
