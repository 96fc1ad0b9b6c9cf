"""Subjects, streams and KV buckets of the bus: the names every part agrees on.

Object names become subject tokens; Kubernetes names may contain ``.`` (a NATS token
separator) but never ``_``, so ``.`` maps to ``_`` and back without ambiguity.
"""

from __future__ import annotations

# The control-plane history stream: every change, replayable. Flows and control requests are
# kept out of it (they are high volume or ephemeral).
HISTORY_STREAM = "CILIA"
HISTORY_SUBJECTS = [
    "cilia.src.>",        # cluster objects from a source (apply / watcher)
    "cilia.identity.>",   # identity upserts and deletes
    "cilia.ipcache.>",    # IP/prefix -> identity
    "cilia.policy.>",     # compiled rules per subject, selector deltas, policy status
    "cilia.lb.>",         # services and backends
    "cilia.agent.>",      # realized revisions per node
]

# Core NATS (not stored).
FLOWS = "cilia.flows"            # cilia.flows.<node>
STATUS = "cilia.ctl.status"      # cilia.ctl.status.<nonce>: every service answers a heartbeat
FLOWS_REQUEST = "cilia.ctl.flows"  # cilia.ctl.flows.<nonce>: each agent's recent flows
CTL_REPLY = "cilia.ctl.reply"    # cilia.ctl.reply.<role>.<nonce>: only <role> may publish

# KV buckets.
KV_IDENTITIES = "cilia-identities"   # identity allocation (compare-and-set)
KV_SERVICES = "cilia-lb-ids"         # service and backend ids (compare-and-set)

CLUSTER_SCOPE = "_"   # namespace token of cluster-scoped objects


def token(name: str) -> str:
    """Encode a Kubernetes name as one subject token."""
    return name.replace(".", "_") if name else CLUSTER_SCOPE


def untoken(tok: str) -> str:
    return "" if tok == CLUSTER_SCOPE else tok.replace("_", ".")


def ip_token(prefix: str) -> str:
    """``10.0.0.1`` -> ``10-0-0-1``; ``10.0.0.0/8`` -> ``10-0-0-0_8``."""
    return prefix.replace(".", "-").replace("/", "_").replace(":", "x")


def source(kind: str, namespace: str, name: str) -> str:
    """Subject of a cluster object from a source: ``cilia.src.<kind>.<ns>.<name>``."""
    return f"cilia.src.{kind.lower()}.{token(namespace)}.{token(name)}"


def source_filter(kind: str) -> str:
    return f"cilia.src.{kind.lower()}.>"


def identity(num: int) -> str:
    return f"cilia.identity.{num}"


IPCACHE_SOURCE_K8S = "k8s"     # pod addresses, owned by the identity service
IPCACHE_SOURCE_CIDR = "cidr"   # CIDR identities, owned by the policy service


def ipcache(prefix: str, origin: str = IPCACHE_SOURCE_K8S) -> str:
    """``cilia.ipcache.<origin>.<prefix>``: each origin owns its own subjects."""
    return f"cilia.ipcache.{origin}.{ip_token(prefix)}"


def policy_rules(subject_identity: int) -> str:
    return f"cilia.policy.rules.{subject_identity}"


def policy_selector(selector_id: str) -> str:
    return f"cilia.policy.selector.{selector_id}"


def policy_status(kind: str, namespace: str, name: str) -> str:
    return f"cilia.policy.status.{kind.lower()}.{token(namespace)}.{token(name)}"


def agent_realized(node: str) -> str:
    return f"cilia.agent.realized.{token(node)}"


# Agent endpoint reports: cilia.agent.endpoint.<node>.<namespace>.<pod> (the node token is
# where the bus's subject permissions pin an agent to its own node).
AGENT_ENDPOINTS = "cilia.agent.endpoint.>"
_AGENT_ENDPOINT_PREFIX = "cilia.agent.endpoint."


def agent_endpoint(node: str, namespace: str, pod: str) -> str:
    return f"{_AGENT_ENDPOINT_PREFIX}{token(node)}.{token(namespace)}.{token(pod)}"


def agent_endpoints_of(node: str) -> str:
    """Filter of one node's endpoint reports."""
    return f"{_AGENT_ENDPOINT_PREFIX}{token(node)}.>"


def parse_agent_endpoint(subject: str) -> tuple[str, str, str] | None:
    """(node token, namespace token, pod token) of an endpoint report subject, or None."""
    if not subject.startswith(_AGENT_ENDPOINT_PREFIX):
        return None
    parts = subject[len(_AGENT_ENDPOINT_PREFIX):].split(".")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


def flows(node: str) -> str:
    return f"{FLOWS}.{token(node)}"


def status_request(nonce: str) -> str:
    """A status request; the nonce names the replies' subjects (see :func:`ctl_reply`)."""
    return f"{STATUS}.{nonce}"


def flows_request(nonce: str) -> str:
    return f"{FLOWS_REQUEST}.{nonce}"


def ctl_reply(role: str, nonce: str) -> str:
    """Where ``role`` answers the control request ``nonce``: the subject proves the role."""
    return f"{CTL_REPLY}.{role}.{nonce}"
