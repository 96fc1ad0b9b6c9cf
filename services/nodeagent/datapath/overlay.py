"""The VXLAN overlay (``--routing tunnel``): device constants, identity marks, the programs.

In tunnel mode every node has a VXLAN device ``cilia_vxlan`` in collect-metadata ("external")
mode; the kernel routes remote pod CIDRs into it. ``bpf/bpf_overlay.c`` runs on that device:

- ``cil_to_overlay`` (tc egress) sets the tunnel key: remote = the destination's tunnel
  endpoint from the ipcache, VNI = the source's security identity;
- ``cil_from_overlay`` (tc ingress) reads the VNI and tags ``skb->mark`` with it
  (:data:`MARK_MAGIC_IDENTITY`), which the destination pod's ``cil_to_pod`` trusts instead of
  looking the source up in its ipcache.

The pure helpers below are the Python side of ``lib/overlay.h`` (tests and tools use them);
loading and attaching the programs goes through the lazily imported kernel access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.common.identities import ID_HOST, ID_REMOTE_NODE, ID_WORLD
from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath._lazy import load_kernel

if TYPE_CHECKING:
    from services.nodeagent.datapath.kernel import Programs

ROUTING_NATIVE = "native"     # remote pod CIDRs via the other nodes' addresses
ROUTING_TUNNEL = "tunnel"     # remote pod CIDRs through the VXLAN device
ROUTING_MODES = (ROUTING_NATIVE, ROUTING_TUNNEL)

OVERLAY_DEVICE = "cilia_vxlan"      # Cilium's is cilium_vxlan
OVERLAY_PORT = 8472                 # Cilium's (and Linux's historic) VXLAN UDP port
# Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) bytes added to every packet.
VXLAN_OVERHEAD = 50
UNDERLAY_MTU = 1500

PROGRAM_SOURCE = "bpf_overlay.c"
PROG_TO_OVERLAY = "cil_to_overlay"      # tc egress of the VXLAN device: set the tunnel key
PROG_FROM_OVERLAY = "cil_from_overlay"  # tc ingress: VNI -> skb->mark

# skb->mark as lib/overlay.h writes it (Cilium's MARK_MAGIC_IDENTITY layout).
MARK_MAGIC_HOST_MASK = 0x0F00
MARK_MAGIC_IDENTITY = 0x0F00
VNI_MAX = 0xFFFFFF                   # the VNI is 24 bits
DROP_NO_TUNNEL_ENDPOINT = c.DROP_NO_TUNNEL_ENDPOINT


def overlay_mtu(underlay_mtu: int = UNDERLAY_MTU) -> int:
    """The MTU of the VXLAN device and of pods in tunnel mode."""
    return underlay_mtu - VXLAN_OVERHEAD


def identity_mark(identity: int) -> int:
    """``skb->mark`` carrying ``identity`` (identity bits 0-15 high, 16-23 low, magic between)."""
    if not 0 < identity <= VNI_MAX:
        raise ValueError(f"identity {identity} does not fit a 24-bit mark")
    return MARK_MAGIC_IDENTITY | ((identity & 0xFFFF) << 16) | ((identity & 0xFF0000) >> 16)


def mark_identity(mark: int) -> int:
    """The identity a mark carries; 0 when it is not an identity mark."""
    if mark & MARK_MAGIC_HOST_MASK != MARK_MAGIC_IDENTITY:
        return 0
    return ((mark & 0xFF) << 16) | (mark >> 16)


def vni_of(identity: int) -> int:
    """The VNI the sender writes for a source identity (0: the receiver looks it up)."""
    return 0 if identity > VNI_MAX or identity == ID_WORLD else identity


def received_identity(vni: int) -> int:
    """The source identity the receiver hands to the pod for a VNI (0: none, look it up)."""
    return ID_REMOTE_NODE if vni == ID_HOST else vni


def validate_routing(mode: str) -> str:
    """Return ``mode`` if it is a routing mode.

    Raises:
        ValueError: any other value (the message names the field and the choices).
    """
    if mode not in ROUTING_MODES:
        raise ValueError(f"routing: {mode!r} is not one of {', '.join(ROUTING_MODES)}")
    return mode


def load_overlay(node: str) -> Programs:
    """Compile and load the overlay programs of a node (sharing its pinned maps).

    Raises:
        ProgramLoadError, VerifierError: as :class:`Programs`.
    """
    programs: Programs = load_kernel().Programs(node, c.BPF_SRC_DIR / PROGRAM_SOURCE,
                                           names=(PROG_TO_OVERLAY, PROG_FROM_OVERLAY))
    return programs


def attach_overlay(programs: Programs, netns: str | None) -> int:
    """Attach the overlay programs to the node's VXLAN device; returns its ifindex.

    Raises:
        AttachError: the device is missing (the lab was not made with ``--routing tunnel``).
    """
    ifindex: int = load_kernel().attach(programs, OVERLAY_DEVICE, netns, ingress=PROG_FROM_OVERLAY,
                                   egress=PROG_TO_OVERLAY)
    return ifindex


def detach_overlay(netns: str | None) -> None:
    """Remove the overlay programs from the VXLAN device (a missing device is fine)."""
    load_kernel().detach(OVERLAY_DEVICE, netns)


def setup_overlay(node: str, netns: str | None, routing: str) -> Programs | None:
    """What the agent does at start: in tunnel mode load and attach the overlay programs.

    Returns:
        The loaded programs (tunnel mode), or None (native routing: nothing to do).

    Raises:
        ValueError: ``routing`` is not a routing mode.
        DatapathError: loading or attaching failed.
    """
    if validate_routing(routing) == ROUTING_NATIVE:
        return None
    programs = load_overlay(node)
    try:
        attach_overlay(programs, netns)
    except BaseException:
        programs.close()
        raise
    return programs
