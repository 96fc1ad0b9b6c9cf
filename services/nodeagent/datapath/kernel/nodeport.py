"""The underlay program: NodePort/LoadBalancer/externalIP frontends for outside clients.

``cil_from_netdev`` goes on tc ingress and ``cil_to_netdev`` on tc egress of the node's
underlay-facing interface (``bpf_nodeport.c``). It shares the node's pinned maps with the pod
programs, so whichever loads first creates them. Typical agent use::

    np = NodePortProgram(node)                  # compile + load
    np.attach("eth0", netns="cilia-node1", node_ip="172.31.0.11", dsr=False)
    mac = device_mac("eth0", netns="cilia-node1")   # for the Node object's annotation
    ...
    detach_nodeport("eth0", netns="cilia-node1")
    np.close()
"""

from __future__ import annotations

import hashlib

from bcc import BPF

from services.common.netns import open_iproute
from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath.constants import NODEPORT_SOURCE, PROG_FROM_NETDEV, PROG_TO_NETDEV
from services.nodeagent.datapath.errors import AttachError, ProgramLoadError, VerifierError
from services.nodeagent.datapath.kernel.pinned import PinnedMapBackend
from services.nodeagent.datapath.kernel.programs import (
    _capture_stderr,
    attach_fds,
    detach,
    expand_includes,
)
from services.nodeagent.datapath.maps import lb_config
from services.nodeagent.datapath.maps.lb_config import LbConfigMap, LbSettings
from services.nodeagent.datapath.maps.registry import build_cflags


class NodePortProgram:
    """The compiled underlay programs of one node, with their map pins created."""

    def __init__(self, node: str) -> None:
        """Compile and load ``bpf_nodeport.c``.

        Raises:
            ProgramLoadError: compilation failed.
            VerifierError: the kernel rejected a program.
        """
        self.node = node
        self.pin_dir = c.pin_dir(node)
        src = c.BPF_SRC_DIR / NODEPORT_SOURCE
        text = expand_includes(src)
        self.digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        try:
            with _capture_stderr() as log:
                self.bpf = BPF(text=text.encode(), cflags=build_cflags(self.pin_dir))
        except Exception as exc:
            raise ProgramLoadError(src.name, f"compilation failed: {exc}", "".join(log)) from exc
        self.fds: dict[str, int] = {}
        try:
            for name in (PROG_FROM_NETDEV, PROG_TO_NETDEV):
                with _capture_stderr() as log:
                    try:
                        self.fds[name] = int(self.bpf.load_func(name.encode(),
                                                                BPF.SCHED_CLS).fd)
                    except Exception as exc:
                        raise VerifierError(name, f"load failed: {exc}", "".join(log)) from exc
        except VerifierError:
            self.bpf.close()
            raise

    def set_config(self, node_ip: str, dsr: bool = False, snat_ports: tuple[int, int] = (
            lb_config.SNAT_PORT_MIN, lb_config.SNAT_PORT_MAX)) -> None:
        """Write ``lb_config``: the address SNAT'd traffic to remote backends leaves with (this
        node's), the SNAT source port range, and whether DSR options from cluster nodes are
        honoured (``CILIA_LB_MODE=dsr``).

        Raises:
            ValueError: the port range is empty or outside 1-65535.
        """
        settings = LbSettings(node_ip, dsr, snat_ports)
        lb_config.encode_config(settings)      # a bad range fails before the pin is opened
        spec = lb_config.SPEC
        config = LbConfigMap(PinnedMapBackend(self.pin_dir / spec.name, spec.key_size,
                                              spec.value_size))
        try:
            config.write(settings)
        finally:
            config.close()

    def attach(self, ifname: str, netns: str | None = None, node_ip: str | None = None,
               dsr: bool = False) -> int:
        """Attach both programs to the underlay interface (replacing ours); returns its
        ifindex. ``node_ip`` also writes the configuration (SNAT address, ``dsr`` mode)."""
        if node_ip:
            self.set_config(node_ip, dsr)
        return attach_fds(self.fds, ifname, netns, PROG_FROM_NETDEV, PROG_TO_NETDEV)

    def close(self) -> None:
        """Release our handles; attached filters keep the programs running."""
        self.bpf.close()


def device_mac(ifname: str, netns: str | None = None) -> str:
    """The MAC address of ``ifname`` (``aa:bb:cc:dd:ee:ff``): what other nodes see as the
    Ethernet source of this node's frames on the underlay.

    Raises:
        AttachError: the interface does not exist.
    """
    ipr = open_iproute(netns)
    try:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise AttachError(f"interface {ifname!r} not found in netns {netns!r}")
        return str(ipr.get_links(found[0])[0].get_attr("IFLA_ADDRESS"))
    finally:
        ipr.close()


def detach_nodeport(ifname: str, netns: str | None = None) -> None:
    """Remove the underlay programs (same filters as the pod programs' ``detach``)."""
    detach(ifname, netns)
