"""Compile and load programs with bcc; attach them with pyroute2 (kernel access).

``cil_from_pod`` goes on tc ingress of a pod's host-side veth and ``cil_to_pod`` on its tc
egress (clsact qdisc, direct-action bpf filters). Attaching again replaces the filters, so
attach is idempotent; the filters keep their programs (and those their pinned maps) alive
after this process exits.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from bcc import BPF
from bcc.libbcc import lib as bcclib
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from services.common.netns import open_iproute
from services.nodeagent.datapath import constants as c
from services.nodeagent.datapath.errors import AttachError, ProgramLoadError, VerifierError
from services.nodeagent.datapath.maps.registry import build_cflags

# clsact hook points (TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS / TC_H_MIN_EGRESS)).
TC_PARENT_INGRESS = 0xFFFFFFF2
TC_PARENT_EGRESS = 0xFFFFFFF3
# Our filters' fixed priority and handle, so that re-attaching replaces them.
TC_FILTER_PRIO = 1
TC_FILTER_HANDLE = ":1"
VERIFIER_LOG_BYTES = 1 << 22
_LOG_LEVEL_VERBOSE = 1
_NO_ATTACH_TYPE = 0xFFFFFFFF   # -1 as the unsigned argument libbcc declares

_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$')


def expand_includes(path: Path, seen: set[Path] | None = None) -> str:
    """The source with its local ``#include "..."`` headers inlined (each once).

    bcc rewrites map accesses (``map.lookup()``) only in the main translation text, so the
    headers under ``lib/`` are pasted in rather than included.
    """
    seen = set() if seen is None else seen
    lines: list[str] = []
    for line in path.read_text().splitlines():
        m = _INCLUDE.match(line)
        if m:
            inc = (path.parent / m.group(1)).resolve()
            if inc not in seen:
                seen.add(inc)
                lines.append(expand_includes(inc, seen))
            continue
        lines.append(line)
    return "\n".join(lines)


@contextlib.contextmanager
def _capture_stderr() -> Iterator[list[str]]:
    """Collect what C libraries (clang, libbpf) print on fd 2 while the block runs."""
    out: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


class Programs:
    """The compiled veth programs of one node, with their map pins created."""

    def __init__(self, node: str, source: Path | None = None,
                 names: tuple[str, ...] = (c.PROG_FROM_POD, c.PROG_TO_POD)) -> None:
        """Compile and load. Maps are created and pinned on first load, reused afterwards.

        ``names`` are the programs of ``source`` to load (default: the veth programs).

        Raises:
            ProgramLoadError: compilation failed (the log holds the compiler output).
            VerifierError: the kernel rejected a program (the log is the verifier log).
        """
        self.node = node
        self.pin_dir = c.pin_dir(node)
        src_path = source or c.BPF_SRC_DIR / c.PROGRAM_SOURCE
        text = expand_includes(src_path)
        self.digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        cflags = build_cflags(self.pin_dir)
        try:
            with _capture_stderr() as log:
                self.bpf = BPF(text=text.encode(), cflags=cflags)
        except Exception as exc:
            raise ProgramLoadError(src_path.name, f"compilation failed: {exc}",
                                   "".join(log)) from exc
        try:
            self.fds = {name: self._load(name) for name in names}
        except ProgramLoadError:
            self.bpf.close()
            raise

    def _load(self, name: str) -> int:
        err: Exception | None = None
        with _capture_stderr() as log:
            try:
                fd = int(self.bpf.load_func(name.encode(), BPF.SCHED_CLS).fd)
            except Exception as exc:
                err = exc
        if err is None:
            return fd
        text = "".join(log).strip() or self._verifier_log(name)
        raise VerifierError(name, f"load failed: {err}", text) from err

    def _verifier_log(self, name: str) -> str:
        """Load once more with a log buffer to get the verifier's explanation."""
        mod = self.bpf.module
        fname = name.encode()
        buf = ct.create_string_buffer(VERIFIER_LOG_BYTES)
        with _capture_stderr():
            fd = bcclib.bcc_func_load(mod, BPF.SCHED_CLS, fname,
                                      bcclib.bpf_function_start(mod, fname),
                                      bcclib.bpf_function_size(mod, fname),
                                      bcclib.bpf_module_license(mod),
                                      bcclib.bpf_module_kern_version(mod),
                                      _LOG_LEVEL_VERBOSE, buf, VERIFIER_LOG_BYTES, None,
                                      _NO_ATTACH_TYPE)
        if fd >= 0:
            os.close(fd)
        return buf.value.decode(errors="replace")

    def close(self) -> None:
        """Release our handles; attached filters keep the programs running."""
        self.bpf.close()


@contextlib.contextmanager
def _route(netns: str | None) -> Iterator[IPRoute]:
    # Not pyroute2's NetNS: it forks a helper and SIGTERMs it, and in a process with an
    # asyncio SIGTERM handler (every agent) that signal reaches the parent's handler.
    ipr = open_iproute(netns)
    try:
        yield ipr
    finally:
        ipr.close()


def _ifindex(ipr: IPRoute, ifname: str, netns: str | None) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        where = f"netns {netns!r}" if netns else "the current netns"
        raise AttachError(f"interface {ifname!r} not found in {where}")
    return int(found[0])


def attach(programs: Programs, ifname: str, netns: str | None = None,
           ingress: str = c.PROG_FROM_POD, egress: str = c.PROG_TO_POD) -> int:
    """Attach two programs to an interface's tc hooks (replacing ours if present).

    The default pair is the veth programs for a pod's host-side veth.

    Returns:
        The interface's ifindex (what the endpoint entry's ``ifindex`` should be).
    """
    return attach_fds(programs.fds, ifname, netns, ingress, egress)


def attach_fds(fds: Mapping[str, int], ifname: str, netns: str | None, ingress: str,
               egress: str) -> int:
    """Attach loaded programs (by name, from ``fds``) to the clsact hooks of ``ifname``."""
    hooks = ((TC_PARENT_INGRESS, ingress), (TC_PARENT_EGRESS, egress))
    with _route(netns) as ipr:
        idx = _ifindex(ipr, ifname, netns)
        try:
            ipr.tc("add", "clsact", idx)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise AttachError(f"{ifname}: adding clsact qdisc failed: {exc}") from exc
        for parent, prog in hooks:
            try:
                ipr.tc("replace-filter", "bpf", idx, TC_FILTER_HANDLE, fd=fds[prog],
                       name=prog, parent=parent, classid=1, direct_action=True,
                       prio=TC_FILTER_PRIO)
            except NetlinkError as exc:
                raise AttachError(f"{ifname}: attaching {prog} failed: {exc}") from exc
    return idx


def detach(ifname: str, netns: str | None = None) -> None:
    """Remove our filters from an interface; a missing interface or filter is fine."""
    with _route(netns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return
        for parent in (TC_PARENT_INGRESS, TC_PARENT_EGRESS):
            try:
                ipr.tc("del-filter", "bpf", found[0], TC_FILTER_HANDLE, parent=parent,
                       prio=TC_FILTER_PRIO)
            except NetlinkError as exc:
                if exc.code not in (errno.ENOENT, errno.EINVAL):
                    raise AttachError(f"{ifname}: detaching failed: {exc}") from exc


def attached_programs(ifname: str, netns: str | None = None) -> dict[str, str]:
    """Which bpf program name sits on each hook of an interface ({"ingress": name, ...})."""
    out: dict[str, str] = {}
    with _route(netns) as ipr:
        idx = _ifindex(ipr, ifname, netns)
        for hook, parent in (("ingress", TC_PARENT_INGRESS), ("egress", TC_PARENT_EGRESS)):
            for msg in ipr.get_filters(index=idx, parent=parent):
                opts = msg.get_attr("TCA_OPTIONS")
                name = opts.get_attr("TCA_BPF_NAME") if opts else None
                if name:
                    out[hook] = name
    return out
