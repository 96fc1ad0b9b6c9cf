"""Pod address management for one node: addresses from the node's pod CIDR.

The allocator is pure (:class:`PodCidrAllocator` takes and returns data); :class:`IpamStore`
is the thin persistent shell the CNI server uses, so allocations survive an agent restart.

Rules:
- the network address, the gateway (the first host address, owned by the node) and the
  broadcast address are never handed out;
- allocation is idempotent per container id: asking twice returns the same address;
- release is idempotent: releasing an unknown container id is not an error.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import CiliaError
from services.common.paths import write_json_atomic

IPAM_STATE_VERSION = 1  # schema version of the ipam state file


class IpamError(CiliaError):
    """Base of the IPAM errors."""


class IpamExhaustedError(IpamError):
    """The pod CIDR has no free address left."""


class IpamStateError(IpamError):
    """The persisted state cannot be read."""


def gateway_of(cidr: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The node's gateway address in its pod CIDR: the first host address."""
    return cidr.network_address + 1


@dataclass
class PodCidrAllocator:
    """Allocates host addresses of one pod CIDR to container ids.

    Args:
        cidr: the node's pod CIDR (at least a /30 so that one address remains).
        allocations: container id -> address (as loaded from the state file).
    """

    cidr: ipaddress.IPv4Network
    allocations: dict[str, ipaddress.IPv4Address] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cidr.prefixlen > 30:
            raise IpamError(f"pod CIDR {self.cidr}: prefix /{self.cidr.prefixlen} leaves no "
                            "address for pods (need /30 or larger)")
        for cid, ip in self.allocations.items():
            if ip not in self.cidr or ip in self.reserved:
                raise IpamStateError(f"allocation {cid}: {ip} is not a pod address of "
                                     f"{self.cidr}")

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return gateway_of(self.cidr)

    @property
    def reserved(self) -> frozenset[ipaddress.IPv4Address]:
        """Addresses never handed to pods: network, gateway, broadcast."""
        return frozenset({self.cidr.network_address, self.gateway,
                          self.cidr.broadcast_address})

    def allocate(self, container_id: str) -> ipaddress.IPv4Address:
        """Return the container's address, allocating the lowest free one if it has none.

        Raises:
            IpamExhaustedError: no free address remains.
        """
        if container_id in self.allocations:
            return self.allocations[container_id]
        used = set(self.allocations.values()) | self.reserved
        for ip in self.cidr.hosts():
            if ip not in used:
                self.allocations[container_id] = ip
                return ip
        raise IpamExhaustedError(f"pod CIDR {self.cidr}: no free address for container "
                                 f"{container_id} ({len(self.allocations)} allocated)")

    def release(self, container_id: str) -> ipaddress.IPv4Address | None:
        """Release the container's address; returns it, or None if it had none."""
        return self.allocations.pop(container_id, None)

    def lookup(self, container_id: str) -> ipaddress.IPv4Address | None:
        return self.allocations.get(container_id)

    def to_json(self) -> dict[str, object]:
        return {"version": IPAM_STATE_VERSION, "cidr": str(self.cidr),
                "allocations": {cid: str(ip) for cid, ip in sorted(self.allocations.items())}}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> PodCidrAllocator:
        """Decode the state file content.

        Raises:
            IpamStateError: unknown version or malformed content.
        """
        if data.get("version") != IPAM_STATE_VERSION:
            raise IpamStateError(f"ipam state: unsupported version {data.get('version')!r}")
        try:
            cidr = ipaddress.IPv4Network(str(data["cidr"]))
            raw = data.get("allocations") or {}
            if not isinstance(raw, dict):
                raise TypeError("allocations is not a map")
            allocations = {str(k): ipaddress.IPv4Address(str(v)) for k, v in raw.items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise IpamStateError(f"ipam state: {exc}") from exc
        return cls(cidr, allocations)


class IpamStore:
    """The node's allocator persisted in ``path`` (written after every change).

    Args:
        path: the state file (created on first allocation).
        cidr: the node's pod CIDR; must equal the CIDR in an existing state file.
    """

    def __init__(self, path: Path, cidr: ipaddress.IPv4Network) -> None:
        self.path = path
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise IpamStateError(f"ipam state {path}: {exc}") from exc
            self.allocator = PodCidrAllocator.from_json(data)
            if self.allocator.cidr != cidr:
                raise IpamStateError(f"ipam state {path}: holds CIDR {self.allocator.cidr}, "
                                     f"the node's pod CIDR is {cidr}")
        else:
            self.allocator = PodCidrAllocator(cidr)

    def allocate(self, container_id: str) -> ipaddress.IPv4Address:
        """Allocate (or return the existing) address of a container and persist."""
        known = self.allocator.lookup(container_id)
        if known is not None:
            return known
        ip = self.allocator.allocate(container_id)
        self._save()
        return ip

    def release(self, container_id: str) -> ipaddress.IPv4Address | None:
        """Release a container's address and persist; None if it had none."""
        ip = self.allocator.release(container_id)
        if ip is not None:
            self._save()
        return ip

    def lookup(self, container_id: str) -> ipaddress.IPv4Address | None:
        return self.allocator.lookup(container_id)

    def _save(self) -> None:
        write_json_atomic(self.path, self.allocator.to_json())
