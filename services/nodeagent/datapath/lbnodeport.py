"""The underlay program: NodePort/LoadBalancer/externalIP frontends for outside clients.

``cil_from_netdev`` goes on tc ingress and ``cil_to_netdev`` on tc egress of the node's
underlay-facing interface (``bpf_nodeport.c``). It shares the node's pinned maps with the pod
programs, so whichever loads first creates them. Typical agent use::

    np = NodePortProgram(node)                  # compile + load
    np.attach("eth0", netns="cilia-node1", node_ip="172.31.0.11")
    ...
    detach_nodeport("eth0", netns="cilia-node1")
    np.close()
"""

from __future__ import annotations

import hashlib

from bcc import BPF

from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath._byteorder import ip_to_be32
from services.nodeagent.datapath.backend import PinnedMapBackend
from services.nodeagent.datapath.errors import ProgramLoadError, VerifierError
from services.nodeagent.datapath.loader import (
    _capture_stderr,
    attach_fds,
    expand_includes,
)
from services.nodeagent.datapath.twins import LbConfig

NODEPORT_SOURCE = "bpf_nodeport.c"
PROG_FROM_NETDEV = "cil_from_netdev"   # tc ingress of the underlay interface
PROG_TO_NETDEV = "cil_to_netdev"       # tc egress of the underlay interface
_CONFIG_KEY = (0).to_bytes(4, "little")


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
                self.bpf = BPF(text=text.encode(), cflags=c.build_cflags(self.pin_dir))
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

    def set_node_ip(self, node_ip: str) -> None:
        """The address SNAT'd traffic to remote backends leaves with (this node's)."""
        with PinnedMapBackend(self.pin_dir / c.MAP_LB_CONFIG, 4, len(bytes(LbConfig()))) as m:
            m.update([(_CONFIG_KEY, LbConfig(node_ip=ip_to_be32(node_ip)).to_bytes())])

    def attach(self, ifname: str, netns: str | None = None, node_ip: str | None = None) -> int:
        """Attach both programs to the underlay interface (replacing ours); returns its
        ifindex. ``node_ip`` also sets the SNAT address."""
        if node_ip:
            self.set_node_ip(node_ip)
        return attach_fds(self.fds, ifname, netns, PROG_FROM_NETDEV, PROG_TO_NETDEV)

    def close(self) -> None:
        """Release our handles; attached filters keep the programs running."""
        self.bpf.close()


def detach_nodeport(ifname: str, netns: str | None = None) -> None:
    """Remove the underlay programs (same filters as the pod programs' ``detach``)."""
    from services.nodeagent.datapath.loader import detach

    detach(ifname, netns)
