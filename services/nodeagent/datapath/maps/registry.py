"""The registry of the node's pinned BPF maps: what the agent opens, checks and repairs, what
the layout test checks against the C headers, what ``cilia bpf`` lists and replay shows.

Order matters only for display (replay shows the node maps in this order).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from services.nodeagent.datapath.maps import (
    conntrack,
    endpoints,
    events,
    fragments,
    ipcache,
    lb_affinity,
    lb_backends,
    lb_config,
    lb_ct,
    lb_maglev_slots,
    lb_node_macs,
    lb_services,
    metrics,
    policy,
)
from services.nodeagent.datapath.maps.spec import MapSpec, Twin
from services.nodeagent.datapath.maps.stack import STACK_TWINS

REGISTRY: tuple[MapSpec[Any], ...] = (
    ipcache.SPEC,
    endpoints.SPEC,
    policy.SPEC,
    conntrack.SPEC,
    fragments.SPEC,
    events.SPEC,
    metrics.SPEC,
    lb_services.SPEC,
    lb_backends.SPEC,
    lb_maglev_slots.SPEC,
    lb_ct.SPEC,
    lb_affinity.SPEC,
    lb_config.SPEC,
    lb_node_macs.SPEC,
)

BY_NAME: dict[str, MapSpec[Any]] = {spec.name: spec for spec in REGISTRY}
ALL_MAPS: tuple[str, ...] = tuple(BY_NAME)


def spec(name: str) -> MapSpec[Any]:
    """The spec of a map by its pin name.

    Raises:
        KeyError: no such map.
    """
    return BY_NAME[name]


def group(name: str) -> tuple[MapSpec[Any], ...]:
    """The maps a map set opens together (``GROUP_NODE``, ``GROUP_LB``)."""
    return tuple(s for s in REGISTRY if s.group == name)


def written(specs: Iterable[MapSpec[Any]] = REGISTRY) -> tuple[MapSpec[Any], ...]:
    """The maps the agent writes (each has a health part; drift is checked and repaired)."""
    return tuple(s for s in specs if s.part)


def keyed() -> tuple[MapSpec[Any], ...]:
    """The maps with keys and values (every map but the ring buffer): their pins can be
    opened with a size check."""
    return tuple(s for s in REGISTRY if s.key is not None)


def rendered() -> tuple[MapSpec[Any], ...]:
    """The maps ``cilia bpf <command> list`` shows."""
    return tuple(s for s in REGISTRY if s.renderer is not None)


def replayed() -> tuple[MapSpec[Any], ...]:
    """The node maps replay shows (from the reducers' desired entries)."""
    return tuple(s for s in REGISTRY if s.flat is not None)


def all_twins() -> tuple[type[Twin], ...]:
    """Every twin of a C struct: the maps' and the BPF stack's."""
    seen: dict[type[Twin], None] = {}
    for s in REGISTRY:
        seen.update(dict.fromkeys(s.all_twins()))
    seen.update(dict.fromkeys(STACK_TWINS))
    return tuple(seen)


def build_cflags(node_pin_dir: Path) -> list[str]:
    """The ``-D`` flags that configure the C sources for one node: the pin directory, then
    each map's (its capacity and tunables)."""
    defines: dict[str, object] = {"CILIA_PIN_DIR": f'"{node_pin_dir}"'}
    for s in REGISTRY:
        defines.update(s.cflags)
    return [f"-D{name}={value}" for name, value in defines.items()]
