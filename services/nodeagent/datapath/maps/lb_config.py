"""The lb_config map (``lib/lb.h``): a one-slot array with the node's NodePort settings: the
address SNAT'd traffic leaves with, the SNAT source port range, and the DSR mode flag.

Written when the NodePort programs are attached
(:meth:`~services.nodeagent.datapath.kernel.NodePortProgram.set_config`).
"""

from __future__ import annotations

from typing import NamedTuple

from services.nodeagent.datapath._byteorder import be32_to_ip, ip_to_be32
from services.nodeagent.datapath.backend import MapBackend
from services.nodeagent.datapath.constants import MAX_PORT
from services.nodeagent.datapath.maps.spec import MapSpec, Twin, U32Key, u16, u32

NAME = "lb_config"
# NodePort SNAT source ports. Above Linux's default ephemeral range (32768-60999) so that a
# port the node's own connections use is never taken for a translated flow.
SNAT_PORT_MIN = 61000
SNAT_PORT_MAX = 65535
LB_CFG_F_DSR = 0x1             # lb_config.flags: honour DSR options from cluster nodes
_SLOT = U32Key(index=0).to_bytes()


# struct lb_config (lib/lb.h)
class LbConfig(Twin):
    C_STRUCT, C_HEADER = "lb_config", "lb.h"
    _fields_ = (("node_ip", u32), ("flags", u32), ("snat_port_min", u16),
                ("snat_port_max", u16))  # node_ip: network byte order; ports: host order


class LbSettings(NamedTuple):
    """What ``lb_config`` holds."""

    node_ip: str
    dsr: bool = False
    snat_ports: tuple[int, int] = (SNAT_PORT_MIN, SNAT_PORT_MAX)


def encode_config(settings: LbSettings) -> bytes:
    """The configuration as the map's value.

    Raises:
        ValueError: the port range is empty or outside 1-65535, or the address is no IPv4.
    """
    low, high = settings.snat_ports
    if not 0 < low <= high <= MAX_PORT:
        raise ValueError(f"lb_config: field snat_ports={settings.snat_ports!r} is not a range "
                         f"within 1-{MAX_PORT}")
    return LbConfig(node_ip=ip_to_be32(settings.node_ip),
                    flags=LB_CFG_F_DSR if settings.dsr else 0,
                    snat_port_min=low, snat_port_max=high).to_bytes()


class LbConfigMap:
    """The node's NodePort settings (one slot)."""

    def __init__(self, backend: MapBackend) -> None:
        self.backend = backend

    def write(self, settings: LbSettings) -> None:
        value = encode_config(settings)
        self.backend.update([(_SLOT, value)])

    def read(self) -> LbSettings:
        raw = self.backend.read_all().get(_SLOT, bytes(LbConfig()))
        cfg = LbConfig.from_buffer_copy(raw)
        return LbSettings(be32_to_ip(cfg.node_ip), bool(cfg.flags & LB_CFG_F_DSR),
                          (cfg.snat_port_min, cfg.snat_port_max))

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


SPEC: MapSpec[LbConfigMap] = MapSpec(
    name=NAME, header="lb.h", map_type="array", key=U32Key, value=LbConfig, max_entries=1,
    cflags={}, view=LbConfigMap)
