"""Where the bus keeps things: the history stream and the KV buckets.

The history stream holds every control-plane change, replayable: every domain's subjects but
flows and control requests, which are high volume or ephemeral and travel on core NATS only.
"""

from __future__ import annotations

from .agent import AGENT_FILTER
from .identity import IDENTITY_FILTER
from .ipcache import IPCACHE_FILTER
from .lb import LB_FILTER
from .objects import SOURCE_FILTER
from .policy import POLICY_FILTER

HISTORY_STREAM = "CILIA"
HISTORY_SUBJECTS = [
    SOURCE_FILTER,      # cluster objects from a source (apply / watcher)
    IDENTITY_FILTER,    # identity upserts and deletes
    IPCACHE_FILTER,     # IP/prefix -> identity
    POLICY_FILTER,      # compiled rules per subject, selector deltas, policy status
    LB_FILTER,          # services and backends
    AGENT_FILTER,       # realized revisions and endpoint reports per node
]

# KV buckets (compare-and-set allocation).
KV_IDENTITIES = "cilia-identities"   # identity numbers
KV_SERVICES = "cilia-lb-ids"         # service and backend ids, ClusterIPs, NodePorts
