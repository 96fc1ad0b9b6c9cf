"""Network namespaces: entering one from a thread, and netlink sockets bound to one.

Only the calling thread moves (setns(2) is per thread), so nothing here forks: pyroute2's own
``IPRoute(netns=...)`` forks a helper, and a forked child of an asyncio program that gets
SIGTERM writes into the parent's signal wakeup fd, so the program would believe it was
signalled. Used by the node agent (its node's netns), the lab (nodes and pods) and the DNS
server (its sockets in a pod's netns).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute

T = TypeVar("T")

NETNS_RUN_DIR = Path("/run/netns")     # where named namespaces are bind-mounted (iproute2's)
CLONE_NEWNET = 0x40000000

LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)   # errno kept for callers


def netns_path(name: str) -> str:
    """The bind-mount path of a named netns (what CNI_NETNS carries)."""
    return str(NETNS_RUN_DIR / name)


def setns_net(fd: int) -> None:
    """Move the calling thread into the network namespace open at ``fd``."""
    if LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def entered_netns(netns: str) -> Iterator[None]:
    """Run the calling thread inside a netns (name or path) until the block ends.

    Sockets opened inside stay in that netns afterwards, which is how :func:`open_iproute`
    works without forking.
    """
    path = netns if "/" in netns else netns_path(netns)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            setns_net(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns_net(own)
    finally:
        os.close(own)


def run_in_netns(netns: str, fn: Callable[[], T]) -> T:
    """``fn()`` inside a netns, on a thread of its own: the caller's thread never moves."""
    def inside() -> T:
        with entered_netns(netns):
            return fn()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(inside).result()


def open_iproute(netns: str | None) -> IPRoute:
    """An IPRoute socket bound to a netns (None: the caller's), opened without forking."""
    if netns is None:
        return IPRoute()
    with entered_netns(netns):
        return IPRoute()


def off_loop(fn: Callable[[], T]) -> T:
    """Call ``fn`` here, or in a helper thread when this thread runs an asyncio loop.

    pyroute2's synchronous API drives an event loop of its own and refuses to run on a thread
    whose loop is running; callers that may be inside ``asyncio.run`` use this.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()
