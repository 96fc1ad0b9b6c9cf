"""Service load balancing: the lb service and its pure parts.

- :mod:`.model`: Service / EndpointSlice validation (``parse_service``, ``parse_endpointslice``)
- :mod:`.kinds`: Service and EndpointSlice as entries of ``cilia apply``'s kind registry
- :mod:`.resolve`: backends from EndpointSlices or from the selector over ready pods
- :mod:`.maglev`: Maglev tables (``build_table``), Cilium's algorithm
- :mod:`.ids`: service ids, backend ids, ClusterIPs and NodePorts by KV compare-and-set
- :mod:`.events`: :class:`~.events.LbView`, the fold of ``cilia.lb.>`` (subjects, event types
  and payloads are the bus contract's, :mod:`services.common.contract.lb`)
- :mod:`.service`: the ``lb`` service (``python -m services.lb``)

The node side lives in ``services/nodeagent/lbstate.py`` (reducer) and
``services/nodeagent/datapath/lbmaps.py`` / ``lbnodeport.py`` (maps, underlay program).
"""

from services.lb.errors import AllocationError, LbError, MaglevError, ServiceSpecError
from services.lb.events import LbView
from services.lb.maglev import DEFAULT_TABLE_SIZE, build_table
from services.lb.model import SERVICE_CIDR, parse_endpointslice, parse_service

__all__ = [
    "DEFAULT_TABLE_SIZE",
    "SERVICE_CIDR",
    "AllocationError",
    "LbError",
    "LbView",
    "MaglevError",
    "ServiceSpecError",
    "build_table",
    "parse_endpointslice",
    "parse_service",
]
