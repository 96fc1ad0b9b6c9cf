"""A node's maps opened together from the registry, and the node maps the agent patches.

A :class:`MapSet` opens every map of one registry group (by default from its pin under
``/sys/fs/bpf/cilia/<node>/``, through the kernel's pinned backend; any backend factory for
pure tests) and hands out their typed views. :class:`NodeMaps` is the node group: ipcache,
endpoints, policy (written by the agent, each through its reconciler) and conntrack (read and
collected). The load-balancing group is :class:`~services.nodeagent.datapath.lb.LbMaps`.

The agent hands each written map its complete desired contents in domain terms; encoding
happens first, then the reconciler applies only the difference to the kernel. An entry that
cannot be encoded is left out and counted (``ReconcileResult.skipped``) while the others are
written: one bad entry never blocks a map.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, cast

from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath._lazy import load_kernel
from services.nodeagent.datapath.backend import MapBackend
from services.nodeagent.datapath.maps import conntrack, endpoints, ipcache, metrics, policy
from services.nodeagent.datapath.maps import registry as reg
from services.nodeagent.datapath.maps.spec import GROUP_NODE, MapSpec
from services.nodeagent.datapath.maps.view import ReconciledMap, Repairable, WrittenView
from services.nodeagent.datapath.reconciler import Reconciler

V = TypeVar("V")
BackendFactory = Callable[[MapSpec[Any]], MapBackend]


def pinned_factory(node: str) -> BackendFactory:
    """Backends opened from the node's pins (kernel access, loaded here on first use).

    The factory raises :class:`~services.nodeagent.datapath.errors.MapError` when a pin is
    missing or has other key/value sizes than this build's twins.
    """
    pins = c.pin_dir(node)

    def make(spec: MapSpec[Any]) -> MapBackend:
        backend: MapBackend = load_kernel().PinnedMapBackend(pins / spec.name, spec.key_size,
                                                        spec.value_size)
        return backend

    return make


def close_backend(backend: MapBackend) -> None:
    close = getattr(backend, "close", None)
    if close is not None:
        close()


def check_pins(node: str, specs: Iterable[MapSpec[Any]] | None = None) -> None:
    """Check that the node's existing pins (of ``specs``; default every keyed map of the
    registry) have the key and value sizes this build expects; absent pins are fine (loading
    creates them). Cheap: nothing is compiled.

    Raises:
        MapError: a pin exists with other sizes (it names the map), or cannot be opened.
    """
    pins = c.pin_dir(node)
    make = pinned_factory(node)
    for spec in reg.keyed() if specs is None else specs:
        if (pins / spec.name).exists():
            close_backend(make(spec))


def is_pinned(node: str) -> bool:
    """Whether every map of the registry is pinned for ``node``."""
    return all((c.pin_dir(node) / name).exists() for name in reg.ALL_MAPS)


def unpin(node: str) -> None:
    """Remove the node's pins (``lab down``). Programs still attached keep their maps until
    their interfaces go away."""
    shutil.rmtree(c.pin_dir(node), ignore_errors=True)


class MapSet:
    """The maps of one registry group of one node, opened together."""

    def __init__(self, node: str, group: str, factory: BackendFactory | None = None) -> None:
        self.node = node
        self.pin_dir: Path = c.pin_dir(node)
        self._factory = factory or pinned_factory(node)
        self._backends: dict[str, MapBackend] = {}
        self.views: dict[str, Any] = {}
        try:
            for spec in reg.group(group):
                backend = self._factory(spec)
                self._backends[spec.name] = backend
                self.views[spec.name] = spec.open(backend)
        except BaseException:
            self.close()
            raise

    def view(self, spec: MapSpec[V]) -> V:
        """The typed view of one of the set's maps.

        Raises:
            KeyError: the map is not in this set.
        """
        return cast(V, self.views[spec.name])

    def written(self) -> dict[str, Repairable]:
        """The views of the maps the agent writes, by map name."""
        return {s.name: self.views[s.name] for s in reg.written()
                if s.name in self.views}

    def writer(self, name: str) -> WrittenView:
        """The view the agent writes map ``name`` through (one reconciler).

        Raises:
            KeyError: no such written map in this set, or it has no single reconciler.
        """
        view = self.written()[name]
        if not isinstance(view, ReconciledMap):
            raise KeyError(f"map {name!r} is not written through a reconciler")
        return cast(WrittenView, view)

    def reconcilers(self) -> dict[str, Reconciler]:
        """The reconciler of each written map that has one, by map name (for metrics)."""
        return {name: v.reconciler for name, v in self.written().items()
                if isinstance(v, ReconciledMap)}

    def repairers(self) -> dict[str, Callable[[], int]]:
        """Drift repair of each map the agent writes, by map name: each call puts back what
        differs from what was written and returns how many entries or slots it wrote."""
        return {name: v.repair for name, v in self.written().items()}

    def stats(self) -> dict[str, dict[str, int]]:
        """Cumulative reconcile counters per written map."""
        return {name: r.stats.as_dict() for name, r in self.reconcilers().items()}

    def close(self) -> None:
        for backend in self._backends.values():
            close_backend(backend)

    def __enter__(self) -> MapSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NodeMaps(MapSet):
    """The node group: ipcache, endpoints, policy and conntrack of one node."""

    def __init__(self, node: str, factory: BackendFactory | None = None) -> None:
        super().__init__(node, GROUP_NODE, factory)
        self.ipcache = self.view(ipcache.SPEC)
        self.endpoints = self.view(endpoints.SPEC)
        self.policy = self.view(policy.SPEC)
        self.conntrack = self.view(conntrack.SPEC)

    def purge_flows(self, addresses: Iterable[str]) -> int:
        """Forget the conntrack entries of ``addresses`` (see
        :meth:`~.maps.conntrack.ConntrackMap.purge`)."""
        return self.conntrack.purge(addresses)

    def metrics(self) -> metrics.MetricsMap:
        """The per-CPU verdict counters; close it when done."""
        return metrics.SPEC.open(self._factory(metrics.SPEC))

    def __enter__(self) -> NodeMaps:
        return self


def open_maps(node: str) -> NodeMaps:
    """Open the node's pinned maps (no compilation; works while no agent runs)."""
    return NodeMaps(node)
