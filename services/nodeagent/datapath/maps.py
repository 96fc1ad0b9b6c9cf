"""Typed views of a node's pinned maps, each driven by one :class:`Reconciler`.

The agent hands each map its complete desired contents in domain terms (``PolicyKey`` ->
``Verdict``, prefix -> :class:`IpcacheEntry`, pod IP -> :class:`EndpointEntry`); encoding
happens first, then the reconciler applies only the difference to the kernel. An entry that
cannot be encoded is left out and counted (``ReconcileResult.skipped``) while the others are
written: one bad entry never blocks a map. In the policy map that fails closed: a subject
whose deny cannot be encoded loses its allows too.
"""

from __future__ import annotations

import ctypes as ct
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from services.common.policytypes import PolicyKey, Verdict
from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath._byteorder import be16_to_port, be32_to_ip, ip_to_be32
from services.nodeagent.datapath.backend import MapBackend, PinnedMapBackend
from services.nodeagent.datapath.encode import (
    EncodeError,
    EndpointEntry,
    IpcacheEntry,
    decode_endpoints,
    decode_ipcache,
    encode_endpoints,
    encode_ipcache,
    endpoint_keys,
    ipcache_keys,
)
from services.nodeagent.datapath.metrics import MetricsMap
from services.nodeagent.datapath.policykeys import (
    PortPrefix,
    decode_policy,
    encode_policy,
    policy_partition,
    prefix_to_key,
)
from services.nodeagent.datapath.reconciler import Reconciler, ReconcileResult
from services.nodeagent.datapath.twins import (
    CtKey,
    CtValue,
    EndpointKey,
    EndpointValue,
    IpcacheKey,
    IpcacheValue,
    PolicyMapKey,
    PolicyMapValue,
    Twin,
)


class IpcacheMap:
    """prefix -> identity and hosting node."""

    def __init__(self, backend: MapBackend) -> None:
        self.reconciler = Reconciler(backend)

    def reconcile(self, desired: Mapping[str, IpcacheEntry],
                  prefixes: Iterable[str] | None = None) -> ReconcileResult:
        """Make the ipcache hold exactly ``desired`` (``"10.0.1.5/32"`` -> entry).

        With ``prefixes``, only those prefixes are reconciled (an incremental patch: a prefix
        listed there but absent from ``desired`` is deleted); others are left alone.
        """
        keys = None if prefixes is None else ipcache_keys(prefixes)
        errors: list[EncodeError] = []
        encoded = encode_ipcache(desired, errors)
        return self.reconciler.skip(errors, self.reconciler.reconcile(encoded, keys=keys))

    def entries(self) -> dict[str, IpcacheEntry]:
        """What the kernel map holds (read from the map, not the mirror)."""
        return decode_ipcache(self.reconciler.backend.read_all())


class EndpointMap:
    """local pod IPv4 -> endpoint id, identity, ifindex, enforcement flags."""

    def __init__(self, backend: MapBackend) -> None:
        self.reconciler = Reconciler(backend)

    def reconcile(self, desired: Mapping[str, EndpointEntry],
                  ips: Iterable[str] | None = None) -> ReconcileResult:
        """Make the endpoints map hold exactly ``desired`` (pod IP -> entry).

        With ``ips``, only those addresses are reconciled (absent from ``desired``: deleted).
        """
        keys = None if ips is None else endpoint_keys(ips)
        errors: list[EncodeError] = []
        encoded = encode_endpoints(desired, errors)
        return self.reconciler.skip(errors, self.reconciler.reconcile(encoded, keys=keys))

    def entries(self) -> dict[str, EndpointEntry]:
        return decode_endpoints(self.reconciler.backend.read_all())


class PolicyMap:
    """(subject, direction, peer, proto, port block) -> allow / deny, partitioned by subject."""

    def __init__(self, backend: MapBackend) -> None:
        self.reconciler = Reconciler(backend, partition_of=policy_partition)

    def reconcile(self, desired: Mapping[PolicyKey, Verdict],
                  subjects: Iterable[int] | None = None) -> ReconcileResult:
        """Make the policy map hold exactly ``desired``.

        Args:
            desired: every entry of the reconciled subjects.
            subjects: reconcile only these subject identities (their entries outside
                ``desired`` are deleted; other subjects are untouched). None: the whole map.
        """
        errors: list[EncodeError] = []
        encoded = encode_policy(desired, errors)
        return self.reconciler.skip(errors, self.reconciler.reconcile(encoded, subjects))

    def blocks(self) -> dict[PortPrefix, Verdict]:
        """The kernel map's entries as port blocks."""
        return decode_policy(self.reconciler.backend.read_all())

    def entries(self, subject: int | None = None) -> list[tuple[PolicyKey, Verdict]]:
        """The kernel map's entries (of one subject, if given) as keys with port ranges,
        sorted; what ``cilia bpf policy get`` shows. Adjacent blocks are not merged."""
        out = [(prefix_to_key(p), v) for p, v in self.blocks().items()
               if subject is None or p.subject == subject]
        return sorted(out)


class CtEntry(NamedTuple):
    src: str
    dst: str
    sport: int
    dport: int
    proto: int
    direction: int
    expires_ns: int
    created_ns: int
    flags: int


class ConntrackMap:
    """Connection tracking entries; the kernel writes them, userspace lists and collects."""

    def __init__(self, backend: MapBackend) -> None:
        self.backend = backend

    def entries(self) -> list[CtEntry]:
        out = []
        for kb, vb in self.backend.read_all().items():
            k = CtKey.from_buffer_copy(kb)
            v = CtValue.from_buffer_copy(vb)
            out.append(CtEntry(be32_to_ip(k.saddr), be32_to_ip(k.daddr), be16_to_port(k.sport),
                               be16_to_port(k.dport), k.proto, k.direction, v.expires_ns,
                               v.created_ns, v.flags))
        return out

    def gc(self, now_ns: int | None = None) -> int:
        """Delete expired entries; returns how many. ``now_ns`` is CLOCK_MONOTONIC time."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        expired = [kb for kb, vb in self.backend.read_all().items()
                   if CtValue.from_buffer_copy(vb).expires_ns <= now]
        if expired:
            self.backend.delete(expired)
        return len(expired)

    def purge(self, addresses: Iterable[str]) -> int:
        """Delete every entry with one of ``addresses`` at either end: the flows of an
        endpoint that went away, so that a new endpoint on a reused address starts clean.
        Returns how many."""
        addrs = {ip_to_be32(a) for a in addresses}
        if not addrs:
            return 0
        dead = [kb for kb in self.backend.read_all()
                if {CtKey.from_buffer_copy(kb).saddr, CtKey.from_buffer_copy(kb).daddr} & addrs]
        if dead:
            self.backend.delete(dead)
        return len(dead)

    def expire_all(self) -> int:
        """Set every entry's deadline to the past (they stop matching at once)."""
        items = []
        for kb, vb in self.backend.read_all().items():
            v = CtValue.from_buffer_copy(vb)
            v.expires_ns = 0
            items.append((kb, v.to_bytes()))
        if items:
            self.backend.update(items)
        return len(items)


# (pin file, key twin, value twin) of every reconciled/listed map.
_MAP_TWINS: dict[str, tuple[type[Twin], type[Twin]]] = {
    c.MAP_IPCACHE: (IpcacheKey, IpcacheValue),
    c.MAP_ENDPOINTS: (EndpointKey, EndpointValue),
    c.MAP_POLICY: (PolicyMapKey, PolicyMapValue),
    c.MAP_CONNTRACK: (CtKey, CtValue),
}

BackendFactory = Callable[[str, int, int], MapBackend]
Twins = Mapping[str, tuple[type[Twin], type[Twin]]]


def check_pins(node: str, twins: Twins | None = None) -> None:
    """Check that the node's existing pins of ``twins`` (default: the node maps) have the
    key and value sizes this build expects; absent pins are fine (loading creates them).
    Cheap: nothing is compiled.

    Raises:
        MapError: a pin exists with other sizes (it names the map), or cannot be opened.
    """
    pins = c.pin_dir(node)
    for name, (key, value) in (_MAP_TWINS if twins is None else twins).items():
        if (pins / name).exists():
            PinnedMapBackend(pins / name, ct.sizeof(key), ct.sizeof(value)).close()


class NodeMaps:
    """All maps of one node, opened from their pins (or any backend factory, for tests)."""

    def __init__(self, node: str, factory: BackendFactory | None = None) -> None:
        self.node = node
        self.pin_dir: Path = c.pin_dir(node)
        make = factory or self._pinned
        backends = {name: make(name, ct.sizeof(k), ct.sizeof(v))
                    for name, (k, v) in _MAP_TWINS.items()}
        self._backends = backends
        self.ipcache = IpcacheMap(backends[c.MAP_IPCACHE])
        self.endpoints = EndpointMap(backends[c.MAP_ENDPOINTS])
        self.policy = PolicyMap(backends[c.MAP_POLICY])
        self.conntrack = ConntrackMap(backends[c.MAP_CONNTRACK])

    def _pinned(self, name: str, key_size: int, value_size: int) -> MapBackend:
        return PinnedMapBackend(self.pin_dir / name, key_size, value_size)

    def purge_flows(self, addresses: Iterable[str]) -> int:
        """Forget the conntrack entries of ``addresses`` (see :meth:`ConntrackMap.purge`)."""
        return self.conntrack.purge(addresses)

    def metrics(self) -> MetricsMap:
        """The per-CPU verdict counters (pinned maps only); close it when done."""
        return MetricsMap(self.pin_dir / c.MAP_METRICS)

    def reconcilers(self) -> dict[str, Reconciler]:
        """The reconciler of each reconciled map, by map name (for metrics)."""
        return {c.MAP_IPCACHE: self.ipcache.reconciler,
                c.MAP_ENDPOINTS: self.endpoints.reconciler,
                c.MAP_POLICY: self.policy.reconciler}

    def stats(self) -> dict[str, dict[str, int]]:
        """Cumulative reconcile counters per map."""
        return {name: r.stats.as_dict() for name, r in self.reconcilers().items()}

    def close(self) -> None:
        for backend in self._backends.values():
            close = getattr(backend, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> NodeMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
