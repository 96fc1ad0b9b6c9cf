"""The API server, through kubernetes_asyncio: credentials, list and watch (a thin shell).

Credentials come the way Kubernetes hands them out, in this order:

1. ``--kubeconfig PATH``, when given;
2. in a pod: the service account's token and CA
   (``/var/run/secrets/kubernetes.io/serviceaccount``) and ``KUBERNETES_SERVICE_HOST``/``PORT``;
3. ``$KUBECONFIG``, else ``~/.kube/config``.

Objects are read as raw JSON (``_preload_content=False``), never as kubernetes_asyncio models:
the bus carries the API server's own camelCase objects, and custom resources have no model.
The watch stream is read here line by line rather than through ``kubernetes_asyncio.watch``,
which retries a 410 once with the same stale position and reconnects silently: the reflector
decides when to re-watch and when to relist.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config
from kubernetes_asyncio.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_HOST_ENV_NAME,
    SERVICE_TOKEN_FILENAME,
)

from services.k8s.errors import ApiError, BrokenStream, ConfigError, status_error
from services.k8s.reflector import ListPage
from services.k8s.resources import Resource

log = logging.getLogger(__name__)

KUBECONFIG_ENV = "KUBECONFIG"
DEFAULT_KUBECONFIG = "~/.kube/config"
LIST_TIMEOUT_S = 60.0           # one list page, whole
CONNECT_TIMEOUT_S = 10.0
WATCH_READ_GRACE_S = 30.0       # a watch silent this long past its own timeout is dead
AUTH = ["BearerToken"]          # kubernetes_asyncio's name of the bearer-token auth setting


async def load_configuration(kubeconfig: str | None = None, *,
                             environ: Mapping[str, str] = os.environ,
                             token_file: str = SERVICE_TOKEN_FILENAME,
                             ca_file: str = SERVICE_CERT_FILENAME) -> Configuration:
    """The client configuration (see the module's docstring for the order).

    Raises:
        ConfigError: naming what was tried and what was missing.
    """
    config = Configuration()
    if kubeconfig:
        return await _from_kubeconfig(kubeconfig, config, "--kubeconfig")
    tried: list[str] = []
    if environ.get(SERVICE_HOST_ENV_NAME):
        try:
            load_incluster_config(client_configuration=config, token_filename=token_file,
                                  cert_filename=ca_file, environ=dict(environ))
            log.info("k8s: in-cluster credentials (%s)", config.host)
            return config
        except ConfigException as exc:
            tried.append(f"in-cluster: {exc} (token {token_file}, CA {ca_file})")
    else:
        tried.append(f"in-cluster: {SERVICE_HOST_ENV_NAME} is not set (not in a pod)")
    path = environ.get(KUBECONFIG_ENV) or os.path.expanduser(DEFAULT_KUBECONFIG)
    origin = f"${KUBECONFIG_ENV}" if environ.get(KUBECONFIG_ENV) else DEFAULT_KUBECONFIG
    if Path(path.split(os.pathsep)[0]).is_file():
        return await _from_kubeconfig(path, config, origin)
    tried.append(f"kubeconfig: {path} ({origin}) does not exist")
    raise ConfigError("no Kubernetes credentials: " + "; ".join(tried)
                      + " (give --kubeconfig PATH, or run in a pod with a service account)")


async def _from_kubeconfig(path: str, config: Configuration, origin: str) -> Configuration:
    try:
        await load_kube_config(config_file=path, client_configuration=config,
                               persist_config=False)
    except (ConfigException, OSError, ValueError) as exc:
        raise ConfigError(f"kubeconfig {path} ({origin}): {exc}") from None
    log.info("k8s: credentials from kubeconfig %s (%s)", path, config.host)
    return config


class ApiServer:
    """List and watch collections of one API server (:class:`~services.k8s.reflector.WatchApi`)."""

    def __init__(self, config: Configuration) -> None:
        self.client = ApiClient(configuration=config)
        self.host = config.host

    async def close(self) -> None:
        await self.client.close()

    async def _get(self, resource: Resource, query: dict[str, str],
                   timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        """Send a GET; an error status raises the error its Status body reports."""
        try:
            resp: aiohttp.ClientResponse = await self.client.call_api(
                resource.path, "GET", query_params=list(query.items()),
                header_params={"Accept": "application/json"}, auth_settings=AUTH,
                _preload_content=False, _request_timeout=timeout)
        except aiohttp.ClientError as exc:
            raise BrokenStream(f"{self.host}{resource.path}: {exc}") from None
        if resp.status >= 300:
            try:
                body = await resp.read()
            finally:
                resp.release()
            raise _error(resp.status, body)
        return resp

    async def list(self, resource: Resource, *, limit: int,
                   continue_token: str | None) -> ListPage:
        query = {"limit": str(limit)}
        if continue_token:
            query["continue"] = continue_token
        resp = await self._get(resource, query, aiohttp.ClientTimeout(
            total=LIST_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S))
        try:
            body = json.loads(await resp.read())
        except (aiohttp.ClientError, ValueError) as exc:
            raise BrokenStream(f"{resource.list_kind}: unreadable list: {exc}") from None
        finally:
            resp.release()
        meta = body.get("metadata") or {} if isinstance(body, dict) else {}
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list) or "resourceVersion" not in meta:
            raise BrokenStream(f"{resource.list_kind}: not a list (no items or resourceVersion)")
        return ListPage([i for i in items if isinstance(i, dict)], str(meta["resourceVersion"]),
                        meta.get("continue") or None)

    async def watch(self, resource: Resource, *, resource_version: str,
                    timeout_s: int) -> AsyncGenerator[dict[str, Any], None]:
        query = {"watch": "true", "allowWatchBookmarks": "true",
                 "resourceVersion": resource_version, "timeoutSeconds": str(timeout_s)}
        resp = await self._get(resource, query, aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT_S,
            sock_read=timeout_s + WATCH_READ_GRACE_S))
        try:
            while True:
                try:
                    line = await resp.content.readline()
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    raise BrokenStream(f"{resource.kind} watch: {exc}") from None
                if not line:
                    return                          # the server ended the stream
                if not line.endswith(b"\n"):
                    raise BrokenStream(f"{resource.kind} watch: cut in the middle of an event")
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError as exc:
                    raise BrokenStream(f"{resource.kind} watch: bad event: {exc}") from None
                if not isinstance(event, dict):
                    raise BrokenStream(f"{resource.kind} watch: an event is not a map")
                yield event
        finally:
            resp.release()


def _error(status: int, body: bytes) -> ApiError:
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("kind") == "Status":
        return status_error({**parsed, "code": parsed.get("code") or status})
    return status_error({"code": status, "message": body[:200].decode("utf-8", "replace")})
