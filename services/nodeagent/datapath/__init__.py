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

Layout: one module per pinned map under :mod:`.maps` (twins, entry type, encode/decode,
view, renderers), listed in :mod:`.maps.registry`; map sets opened together in
:mod:`.nodemaps` and :mod:`.lb`; the reconciler and the backend seam. All of that is pure.
Kernel access (bcc, the bpf syscalls, pyroute2) is :mod:`.kernel`, imported lazily: the names
below that come from it (``Programs``, ``attach``, ``FlowReader``, ``PinnedMapBackend``, ...)
load it on first access, so importing this package loads no kernel library.

See ``services/nodeagent/bpf/README.md`` for the datapath's semantics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.nodeagent.datapath._lazy import load_kernel
from services.nodeagent.datapath.backend import MapBackend, MemoryMapBackend
from services.nodeagent.datapath.errors import (
    AttachError,
    DatapathError,
    EncodeError,
    MapError,
    MapFullError,
    ProgramLoadError,
    VerifierError,
)
from services.nodeagent.datapath.lb import LbMaps, LbPlan
from services.nodeagent.datapath.maps.conntrack import ConntrackMap, CtEntry
from services.nodeagent.datapath.maps.endpoints import EndpointEntry, EndpointMap
from services.nodeagent.datapath.maps.events import FlowRecord, decode_event
from services.nodeagent.datapath.maps.ipcache import IpcacheEntry, IpcacheMap
from services.nodeagent.datapath.maps.metrics import Counter, MetricsMap, VerdictCount
from services.nodeagent.datapath.maps.policy import (
    PolicyMap,
    PortPrefix,
    decide,
    expand_policy,
    port_range_prefixes,
    prefix_to_key,
)
from services.nodeagent.datapath.nodemaps import (
    NodeMaps,
    check_pins,
    is_pinned,
    open_maps,
    unpin,
)
from services.nodeagent.datapath.reconciler import Reconciler, ReconcileResult, ReconcileStats

if TYPE_CHECKING:
    from services.nodeagent.datapath.kernel import (
        FlowReader,
        NodePortProgram,
        PinnedMapBackend,
        Programs,
        attach,
        attached_programs,
        detach,
        detach_nodeport,
        device_mac,
    )

# Names resolved from the kernel access package on first use (PEP 562).
_KERNEL_NAMES = frozenset({
    "FlowReader", "NodePortProgram", "PinnedMapBackend", "Programs", "attach",
    "attached_programs", "detach", "detach_nodeport", "device_mac",
})


def __getattr__(name: str) -> Any:
    if name in _KERNEL_NAMES:
        return getattr(load_kernel(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "LbMaps",
    "LbPlan",
    "MapBackend",
    "MapError",
    "MapFullError",
    "MemoryMapBackend",
    "MetricsMap",
    "NodeMaps",
    "NodePortProgram",
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
    "check_pins",
    "decide",
    "decode_event",
    "detach",
    "detach_nodeport",
    "device_mac",
    "expand_policy",
    "is_pinned",
    "open_maps",
    "port_range_prefixes",
    "prefix_to_key",
    "unpin",
]
