"""Who may say what on the bus: the roles and their NATS subject permissions (pure data).

Every process connects as one role. The server enforces each role's permissions (a
nats-server ``authorization`` block rendered from :func:`permissions`), so a process can only
publish what its role owns:

========== ===================================================================================
role       publishes
========== ===================================================================================
admin      everything; the only role that creates, updates, deletes or purges streams and KV
           buckets (``cilia up`` creates the history stream and both buckets)
source     cluster objects ``cilia.src.>`` (``cilia apply``/``delete``, the lab's kubelet,
           the Kubernetes watcher ``services.k8s``, which answers status requests as it)
identity   ``cilia.identity.>``, ``cilia.ipcache.k8s.>``, the KV bucket ``cilia-identities``
policy     ``cilia.policy.>``, ``cilia.ipcache.cidr.>`` (CIDR identities are its own origin)
lb         ``cilia.lb.>``, the KV bucket ``cilia-lb-ids``
agent-<n>  its own node's reports ``cilia.agent.<what>.<n>[.>]``, flows ``cilia.flows.<n>``
           and Node object ``cilia.src.node._.<n>`` (``<n>`` is the node's subject token)
dns        nothing (reads the lb history, answers status requests)
cli        nothing (reads the history, subscribes to flows, sends control requests)
========== ===================================================================================

Every role reads the history stream (ordered consumers, message gets), sends control requests
and receives JetStream API replies only on its own inbox prefix ``_INBOX_<role>``, so no role
reads another's replies. A control reply (status heartbeat, recent flows) goes to
``cilia.ctl.reply.<role>.<nonce>``: only that role may publish there, so the subject proves who
answered, and the requester checks that the payload speaks for that role
(:func:`may_report`).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.contract import (
    FLOWS_CONTROL,
    FLOWS_FILTER,
    HISTORY_STREAM,
    IDENTITY_OUTPUTS,
    KIND_NODE,
    KV_IDENTITIES,
    KV_SERVICES,
    LB_OUTPUTS,
    POLICY_OUTPUTS,
    SOURCE_FILTER,
    STATUS_CONTROL,
    agent_publish_filters,
    ctl_reply_subject,
    flows_subject,
    source_subject,
    token,
)

ADMIN = "admin"
SOURCE = "source"
IDENTITY = "identity"
POLICY = "policy"
LB = "lb"
DNS = "dns"
CLI = "cli"
AGENT_PREFIX = "agent-"

# Roles `cilia up` makes credentials for; agents get theirs when their node joins (lab up).
CONTROL_PLANE_ROLES: tuple[str, ...] = (ADMIN, SOURCE, IDENTITY, POLICY, LB, DNS, CLI)

# The role each service process runs as (the node agent's depends on its node). The Kubernetes
# watcher ("k8s") is a source: it publishes the cluster objects `cilia apply` would.
SERVICE_ROLES: dict[str, str] = {"identity": IDENTITY, "policy": POLICY, "lb": LB, "dns": DNS,
                                 "k8s": SOURCE}
AGENT_SERVICE = "nodeagent"

INBOX_PREFIX = "_INBOX"          # nats-py's default; a role's inboxes are _INBOX_<role>.>
JS_API = "$JS.API"
JS_FLOW_CONTROL = "$JS.FC"


def agent_role(node: str) -> str:
    """The role of ``node``'s agent: ``agent-<node token>``."""
    return f"{AGENT_PREFIX}{token(node)}"


def is_agent_role(role: str) -> bool:
    return role.startswith(AGENT_PREFIX) and len(role) > len(AGENT_PREFIX)


def is_valid_role(role: str) -> bool:
    """A role name that is one subject token (it names inboxes and reply subjects)."""
    return bool(role) and not any(c in role for c in ".*> \t\r\n") and (
        role in CONTROL_PLANE_ROLES or is_agent_role(role))


def role_for_service(service: str, node: str | None = None) -> str | None:
    """The role a service runs as when no credentials name one (an open bus)."""
    if service == AGENT_SERVICE:
        return agent_role(node) if node else None
    return SERVICE_ROLES.get(service)


def inbox_prefix(role: str | None) -> str:
    """The inbox prefix of a role's connections (nats-py's ``inbox_prefix``)."""
    return f"{INBOX_PREFIX}_{role}" if role else INBOX_PREFIX


def may_report(role: str, service: str, node: str | None) -> bool:
    """Whether a control reply published under ``role`` may speak for ``service`` (on ``node``).

    The admin speaks for anyone; an agent only for the node agent of its own node; every other
    service role only for its own service.
    """
    if role == ADMIN:
        return True
    if is_agent_role(role):
        return service == AGENT_SERVICE and bool(node) and agent_role(node or "") == role
    return SERVICE_ROLES.get(service) == role


@dataclass(frozen=True)
class Permissions:
    """A NATS user's subject permissions (allow lists: everything else is denied)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def to_config(self) -> dict[str, dict[str, list[str]]]:
        """The ``permissions`` block of a nats-server user."""
        return {"publish": {"allow": list(self.publish)},
                "subscribe": {"allow": list(self.subscribe)}}


def stream_read(stream: str) -> list[str]:
    """JetStream API subjects to read ``stream``: its info, ordered consumers (create, info,
    flow control) and message gets (direct or through the API)."""
    return [f"{JS_API}.STREAM.INFO.{stream}",
            f"{JS_API}.CONSUMER.CREATE.{stream}", f"{JS_API}.CONSUMER.CREATE.{stream}.>",
            f"{JS_API}.CONSUMER.INFO.{stream}.*",
            f"{JS_API}.STREAM.MSG.GET.{stream}",
            f"{JS_API}.DIRECT.GET.{stream}", f"{JS_API}.DIRECT.GET.{stream}.>",
            f"{JS_FLOW_CONTROL}.{stream}.>"]


def kv_write(bucket: str) -> list[str]:
    """Subjects to read and write the keys of an existing KV bucket (not to create it)."""
    return [f"$KV.{bucket}.>", *stream_read(f"KV_{bucket}")]


# What each role publishes beyond reading; agents are added per node in permissions().
_DATA: dict[str, list[str]] = {
    SOURCE: [SOURCE_FILTER],
    # a service publishes exactly the outputs it reads back as its own (the contract's lists)
    IDENTITY: [*IDENTITY_OUTPUTS.filters, *kv_write(KV_IDENTITIES)],
    POLICY: [*POLICY_OUTPUTS.filters],
    LB: [*LB_OUTPUTS.filters, *kv_write(KV_SERVICES)],
    DNS: [],
    CLI: [],
}
# Roles that answer control requests (status heartbeats; agents also answer flow requests).
# The source role answers for the Kubernetes watcher.
_RESPONDERS = {IDENTITY, POLICY, LB, DNS, SOURCE}
# What the read-only CLI also needs for `cilia status`: account and stream listings.
_CLI_EXTRA = [f"{JS_API}.INFO", f"{JS_API}.STREAM.LIST", f"{JS_API}.STREAM.NAMES"]


def permissions(role: str) -> Permissions:
    """The subject permissions of ``role``.

    Raises:
        ValueError: not a role (see :func:`is_valid_role`).
    """
    if not is_valid_role(role):
        raise ValueError(f"unknown bus role {role!r}")
    if role == ADMIN:
        return Permissions(publish=(">",), subscribe=(">",))
    publish = [*stream_read(HISTORY_STREAM), STATUS_CONTROL.filter, FLOWS_CONTROL.filter]
    subscribe = [f"{inbox_prefix(role)}.>", ctl_reply_subject("*", "*")]
    if is_agent_role(role):
        node = role[len(AGENT_PREFIX):]     # a node token
        publish += [*agent_publish_filters(node), flows_subject(node),
                    source_subject(KIND_NODE, "", node), ctl_reply_subject(role, "*")]
        subscribe += [STATUS_CONTROL.filter, FLOWS_CONTROL.filter]
    else:
        publish += _DATA[role]
        if role in _RESPONDERS:
            publish.append(ctl_reply_subject(role, "*"))
            subscribe.append(STATUS_CONTROL.filter)
    if role == CLI:
        publish += _CLI_EXTRA
        subscribe.append(FLOWS_FILTER)
    return Permissions(publish=tuple(publish), subscribe=tuple(subscribe))
