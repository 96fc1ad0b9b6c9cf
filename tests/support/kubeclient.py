"""kubernetes_asyncio clients of the test API server (``tests/support/k8sapi``), loaded from
the kubeconfig it writes, as a watcher pod would load its own."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient


@contextlib.asynccontextmanager
async def kube_client(api: Any, directory: Path, name: str = "client") -> AsyncIterator[ApiClient]:
    """One client (its own connection pool) of the API server ``api``."""
    path = directory / f"{name}.kubeconfig"
    api.kubeconfig(path)
    client = await config.new_client_from_config(config_file=str(path))
    try:
        yield client
    finally:
        await client.close()


async def eventually(what: str, check: Callable[[], bool], timeout: float = 10.0,
                     interval: float = 0.05) -> None:
    """Poll ``check`` until it holds; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)
