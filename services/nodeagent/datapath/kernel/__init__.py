"""Kernel access of the datapath: bcc (compiling, loading, libbcc's map calls, the ring
buffer), the bpf(2) syscalls, and pyroute2 (attaching programs).

This package is the only part of :mod:`services.nodeagent.datapath` that imports bcc or
pyroute2, and nothing imports it eagerly: the pure side reaches it through
:func:`services.nodeagent.datapath._lazy.load_kernel` (and the datapath package's lazy names, such
as ``datapath.Programs``), so it is loaded only when a program or a pinned map is actually
opened. Reducers, encoders, views and replay import without it.
"""

from services.nodeagent.datapath.kernel.nodeport import (
    NodePortProgram,
    detach_nodeport,
    device_mac,
)
from services.nodeagent.datapath.kernel.pinned import PinnedMapBackend
from services.nodeagent.datapath.kernel.programs import (
    Programs,
    attach,
    attach_fds,
    attached_programs,
    detach,
    expand_includes,
)
from services.nodeagent.datapath.kernel.ringbuf import FlowReader

__all__ = [
    "FlowReader",
    "NodePortProgram",
    "PinnedMapBackend",
    "Programs",
    "attach",
    "attach_fds",
    "attached_programs",
    "detach",
    "detach_nodeport",
    "device_mac",
    "expand_includes",
]
