"""Every consumer's subscription, as data: which subjects of the history stream it reads and
from where.

The services subscribe with these, and whoever needs to know what a consumer reads (replay,
which folds each part over exactly its inputs; ``cilia status`` and ``cilia connectivity
test``, which wait until a consumer has handled everything it reads) takes it from here, not
from the consumer's module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .agent import AGENT_ENDPOINTS_FILTER, AGENT_FQDN_FILTER
from .identity import IDENTITY_FILTER
from .ipcache import IPCACHE_FILTER, IPCACHE_SOURCE_CIDR, IPCACHE_SOURCE_K8S, ipcache_filter
from .lb import LB_FILTER
from .objects import (
    KIND_ENDPOINTSLICE,
    KIND_NAMESPACE,
    KIND_NODE,
    KIND_POD,
    KIND_SERVICE,
    POLICY_KINDS,
    source_filter,
)
from .policy import (
    POLICY_FILTER,
    POLICY_RULES_FILTER,
    POLICY_SELECTOR_FILTER,
    POLICY_STATUS_FILTER,
)
from .tokens import ANY_TAIL, matches_any

# Where a consumer starts: every stored message, only new ones, or the last one per subject
# (the current state, for a service reading back its own outputs or a one-off view).
DeliverFrom = Literal["all", "new", "last_per_subject"]


@dataclass(frozen=True)
class ConsumerSpec:
    """What one consumer of the history stream reads.

    ``name`` names the consumer in logs, traces and rejection counts (a consumer may add its
    node to it).
    """

    name: str
    filters: tuple[str, ...]
    deliver: DeliverFrom = "all"

    def matches(self, subject: str) -> bool:
        """Whether this consumer reads ``subject``."""
        return matches_any(subject, self.filters)


# The identity service: its own outputs (what the bus already says), then the objects and
# endpoint reports that identities and pod addresses derive from.
IDENTITY_OUTPUTS = ConsumerSpec("identity-outputs",
                                (IDENTITY_FILTER, ipcache_filter(IPCACHE_SOURCE_K8S)),
                                "last_per_subject")
IDENTITY_INPUTS = ConsumerSpec("identity", (source_filter(KIND_NAMESPACE),
                                            source_filter(KIND_POD), AGENT_ENDPOINTS_FILTER))

# The policy service: its own outputs, then policy objects, identities and what the nodes' DNS
# proxies learned (toFQDNs selectors select the addresses of the names they match).
POLICY_OUTPUTS = ConsumerSpec("policy-outputs",
                              (POLICY_FILTER, ipcache_filter(IPCACHE_SOURCE_CIDR)))
POLICY_INPUTS = ConsumerSpec("policy", (*(source_filter(k) for k in sorted(POLICY_KINDS)),
                                        IDENTITY_FILTER, AGENT_FQDN_FILTER))

# The lb service: its own outputs, then the objects services and backends derive from.
LB_SOURCE_KINDS = (KIND_SERVICE, KIND_ENDPOINTSLICE, KIND_POD)
LB_OUTPUTS = ConsumerSpec("lb-outputs", (LB_FILTER,))
LB_INPUTS = ConsumerSpec("lb", tuple(source_filter(k) for k in LB_SOURCE_KINDS))
# Everyone else who folds the lb output into an LbView (the DNS server, `cilia service list`).
LB_VIEW = ConsumerSpec("lb-read", (LB_FILTER,))

# The node agent's two consumers: policy and ipcache (with a durable position), and load
# balancing (from the start, always).
AGENT_INPUTS = ConsumerSpec("agent", (IDENTITY_FILTER, IPCACHE_FILTER, POLICY_RULES_FILTER,
                                      POLICY_SELECTOR_FILTER, source_filter(KIND_POD),
                                      source_filter(KIND_NODE)))
AGENT_LB_INPUTS = ConsumerSpec("agent-lb", (LB_FILTER, source_filter(KIND_NODE)))

# The Kubernetes watcher's leader: the policy service's verdicts, from now on, to write back
# as Events and status conditions (services.k8s.feedback).
K8S_FEEDBACK = ConsumerSpec("k8s-feedback", (POLICY_STATUS_FILTER,), "new")

# Replay and `cilia replay`: the whole history stream, in order.
REPLAY = ConsumerSpec("replay", (ANY_TAIL,))

CONSUMERS = (IDENTITY_OUTPUTS, IDENTITY_INPUTS, POLICY_OUTPUTS, POLICY_INPUTS, LB_OUTPUTS,
             LB_INPUTS, LB_VIEW, AGENT_INPUTS, AGENT_LB_INPUTS, K8S_FEEDBACK, REPLAY)
