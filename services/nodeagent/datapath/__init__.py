"""The node datapath: eBPF programs on pod veths and their pinned maps.

Typical agent use::

    progs = Programs(node)                      # compile + load; pins maps on first use
    ifindex = attach(progs, "lxc1234", netns="cilia-node1")
    maps = NodeMaps(node)                       # open the pins (restart-safe)
    maps.endpoints.reconcile({"10.1.0.5": EndpointEntry(1, 300, ifindex, True, False)})
    maps.ipcache.reconcile({"10.1.0.5/32": IpcacheEntry(300)})          # whole map
    maps.ipcache.reconcile({}, prefixes=["10.1.0.9/32"])                # incremental patch
    maps.policy.reconcile({PolicyKey(300, 301, 0, 6, 80, 80): Verdict.ALLOW}, subjects=[300])
    maps.conntrack.gc()                         # periodically
    with FlowReader(node) as flows:
        records = flows.poll(100)
    detach("lxc1234", netns="cilia-node1")
    unpin(node)                                 # lab down

See ``services/nodeagent/bpf/README.md`` for the datapath's semantics.
"""

from services.nodeagent.datapath.backend import MapBackend, MemoryMapBackend, PinnedMapBackend
from services.nodeagent.datapath.encode import EncodeError, EndpointEntry, IpcacheEntry
from services.nodeagent.datapath.errors import (
    AttachError,
    DatapathError,
    MapError,
    MapFullError,
    ProgramLoadError,
    VerifierError,
)
from services.nodeagent.datapath.flows import FlowReader, FlowRecord, decode_event
from services.nodeagent.datapath.loader import (
    Programs,
    attach,
    attached_programs,
    detach,
    is_pinned,
    open_maps,
    unpin,
)
from services.nodeagent.datapath.maps import (
    ConntrackMap,
    CtEntry,
    EndpointMap,
    IpcacheMap,
    NodeMaps,
    PolicyMap,
)
from services.nodeagent.datapath.metrics import Counter, MetricsMap, VerdictCount
from services.nodeagent.datapath.policykeys import (
    PortPrefix,
    decide,
    expand_policy,
    port_range_prefixes,
    prefix_to_key,
)
from services.nodeagent.datapath.reconciler import Reconciler, ReconcileResult, ReconcileStats

__all__ = [
    "AttachError",
    "ConntrackMap",
    "Counter",
    "CtEntry",
    "DatapathError",
    "EncodeError",
    "EndpointEntry",
    "EndpointMap",
    "FlowReader",
    "FlowRecord",
    "IpcacheEntry",
    "IpcacheMap",
    "MapBackend",
    "MapError",
    "MapFullError",
    "MemoryMapBackend",
    "MetricsMap",
    "NodeMaps",
    "PinnedMapBackend",
    "PolicyMap",
    "PortPrefix",
    "ProgramLoadError",
    "Programs",
    "ReconcileResult",
    "ReconcileStats",
    "Reconciler",
    "VerdictCount",
    "VerifierError",
    "attach",
    "attached_programs",
    "decide",
    "decode_event",
    "detach",
    "expand_policy",
    "is_pinned",
    "open_maps",
    "port_range_prefixes",
    "prefix_to_key",
    "unpin",
]
