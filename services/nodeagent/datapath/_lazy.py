"""The one door from the pure datapath to the kernel: :func:`load_kernel` imports
:mod:`services.nodeagent.datapath.kernel` (bcc, the bpf syscalls, pyroute2) on first use.

Everything else in the datapath package (map modules, views, encoders, the reconciler, the
registry) imports without bcc or pyroute2, so the agent's reducers, replay and the CLI's help
load no kernel library; the kernel is loaded when a program or a pinned map is opened.
"""

from __future__ import annotations

import importlib
from types import ModuleType

KERNEL_MODULE = "services.nodeagent.datapath.kernel"


def load_kernel() -> ModuleType:
    """The kernel access package, imported on the first call.

    (Not named ``kernel``: importing the subpackage binds that name on the datapath package.)
    """
    return importlib.import_module(KERNEL_MODULE)
