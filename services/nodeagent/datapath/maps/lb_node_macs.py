"""The lb_node_macs map (``lib/lb.h``): hash, underlay MAC of a cluster node -> its IPv4.

Written by the agent from the Node objects it folds (each agent publishes its underlay MAC in
an annotation); in DSR mode the NodePort program honours a DSR option only from a frame whose
Ethernet source is in this map.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.nodeagent.datapath._byteorder import be32_to_ip
from services.nodeagent.datapath.errors import EncodeError
from services.nodeagent.datapath.maps._codec import address
from services.nodeagent.datapath.maps.lb_services import PART
from services.nodeagent.datapath.maps.spec import GROUP_LB, MapSpec, Twin, u8, u16, u32
from services.nodeagent.datapath.maps.view import ReconciledMap
from services.nodeagent.datapath.reconciler import ReconcileResult

NAME = "lb_node_macs"
MAX_ENTRIES = 4096             # cluster nodes whose underlay MAC may send DSR options
MAC_BYTES = 6


# struct lb_node_mac_key (lib/lb.h)
class LbNodeMacKey(Twin):
    C_STRUCT, C_HEADER = "lb_node_mac_key", "lb.h"
    _fields_ = (("mac", u8 * 6), ("pad", u16))


# struct lb_node_mac_value (lib/lb.h)
class LbNodeMacValue(Twin):
    C_STRUCT, C_HEADER = "lb_node_mac_value", "lb.h"
    _fields_ = (("node_ip", u32),)  # network byte order


def mac_bytes(what: str, mac: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` as 6 bytes.

    Raises:
        EncodeError: not a MAC address (the message names ``what``).
    """
    try:
        raw = bytes.fromhex(mac.replace(":", ""))
    except (ValueError, AttributeError):
        raw = b""
    if len(raw) != MAC_BYTES or mac.count(":") != MAC_BYTES - 1:
        raise EncodeError(f"{what}: field mac={mac!r} is not a MAC address")
    return raw


def encode_node_macs(desired: Mapping[str, str]) -> dict[bytes, bytes]:
    """Underlay MAC -> node IP of the cluster's nodes (the DSR senders it trusts)."""
    out: dict[bytes, bytes] = {}
    for mac, ip in desired.items():
        what = f"node mac {mac}"
        key = LbNodeMacKey()
        key.mac[:] = list(mac_bytes(what, mac))
        out[key.to_bytes()] = LbNodeMacValue(node_ip=address(what, ip)).to_bytes()
    return out


def decode_node_macs(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {":".join(f"{b:02x}" for b in LbNodeMacKey.from_buffer_copy(kb).mac):
            be32_to_ip(LbNodeMacValue.from_buffer_copy(vb).node_ip) for kb, vb in raw.items()}


class LbNodeMacsMap(ReconciledMap):
    """Underlay MAC -> node IP of the nodes whose DSR options are honoured."""

    def reconcile(self, desired: Mapping[str, str], _scope: None = None) -> ReconcileResult:
        """Make the map hold exactly ``desired``.

        Raises:
            EncodeError: a MAC or address is malformed (lbstate leaves those out already).
        """
        return self.reconciler.reconcile(encode_node_macs(desired))

    def entries(self) -> dict[str, str]:
        """Underlay MAC -> node IP, as the kernel holds them."""
        return decode_node_macs(self.backend.read_all())


SPEC: MapSpec[LbNodeMacsMap] = MapSpec(
    name=NAME, header="lb.h", map_type="hash", key=LbNodeMacKey, value=LbNodeMacValue,
    max_entries=MAX_ENTRIES, cflags={"CILIA_LB_NODES_MAX": MAX_ENTRIES}, view=LbNodeMacsMap,
    group=GROUP_LB, part=PART)
