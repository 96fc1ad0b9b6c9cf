"""The agent side of the CNI plugin: an asyncio unix-socket server that creates endpoints.

The agent embeds :class:`CniServer` and passes an :class:`EndpointHooks` implementation: the
created hook runs after the endpoint is wired and before ADD answers (attach programs, fill the
endpoint map, wait until the endpoint is enforced); if it raises, the endpoint is rolled back
and ADD fails (code 11, "try again later", when the hook says it was not ready in time). The
deleted hook runs before the veth is removed on DEL; its errors are logged, DEL still succeeds.

Run standalone (what the lab starts per node until the full agent takes over)::

    python -m services.nodeagent.cniserver --node-config <state>/nodes/<node>/node.json
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol

from opentelemetry.trace import SpanKind

from services.common.tracing import extract_context, tracer
from services.nodeagent.cni.protocol import MAX_MESSAGE, decode, encode, error_response
from services.nodeagent.cni.spec import (
    ERR_CHECK_FAILED,
    ERR_ENDPOINT,
    ERR_INVALID_CONFIG,
    ERR_IPAM_EXHAUSTED,
    ERR_TRY_AGAIN,
    ERR_UNKNOWN_CONTAINER,
    TRACEPARENT_ARG,
    CniError,
    add_result,
    check_prev_result,
)
from services.nodeagent.endpoints import (
    Endpoint,
    EndpointCheckError,
    EndpointError,
    EndpointManager,
    EndpointNotFoundError,
    EndpointNotReadyError,
    EndpointRequest,
    NodeConfig,
)
from services.nodeagent.ipam import IpamError, IpamExhaustedError

log = logging.getLogger("cilia.cniserver")

SOCKET_MODE = 0o600
_tracer = tracer("cilia.cniserver")


class EndpointHooks(Protocol):
    """What the agent does when an endpoint appears or goes (sync or async methods)."""

    def on_endpoint_created(self, endpoint: Endpoint) -> Awaitable[None] | None: ...

    def on_endpoint_deleted(self, endpoint: Endpoint) -> Awaitable[None] | None: ...


class NoHooks:
    """Hooks that do nothing (plain veth routing, no datapath programs)."""

    def on_endpoint_created(self, endpoint: Endpoint) -> None:
        return None

    def on_endpoint_deleted(self, endpoint: Endpoint) -> None:
        return None


async def _call(result: Awaitable[None] | None) -> None:
    if inspect.isawaitable(result):
        await result


class CniServer:
    """Serves CNI requests for one node on ``node.socket_path``.

    Args:
        node: the node's configuration.
        hooks: the agent's endpoint hooks (default: none).
    """

    def __init__(self, node: NodeConfig, hooks: EndpointHooks | None = None) -> None:
        self.node = node
        self.hooks: EndpointHooks = hooks or NoHooks()
        self.manager = EndpointManager(node)
        self._lock = asyncio.Lock()
        self._server: asyncio.AbstractServer | None = None

    def endpoints(self) -> list[Endpoint]:
        """The node's endpoints (persisted; valid right after an agent restart)."""
        return self.manager.all()

    async def start(self) -> None:
        """Bind the unix socket (replacing a stale one) and start serving."""
        path = Path(self.node.socket_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_socket():
            path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(path),
                                                       limit=MAX_MESSAGE)
        os.chmod(path, SOCKET_MODE)
        log.info("node %s: CNI server on %s", self.node.name, path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        path = Path(self.node.socket_path)
        if path.is_socket():
            path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if not line.strip():
                return  # a liveness probe: connected and closed
            try:
                response: dict[str, Any] = {"result": await self.handle(decode(line))}
            except CniError as err:
                response = error_response(err)
            writer.write(encode(response))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            log.warning("CNI connection failed: %s", exc)
        finally:
            writer.close()

    async def handle(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """Execute one plugin request; returns the result JSON (None for DEL).

        Raises:
            CniError: with the CNI code to report.
        """
        command = request.get("command")
        cid = str(request.get("containerId") or "")
        if not cid:
            raise CniError(ERR_INVALID_CONFIG, "request: containerId is missing")
        async with self._lock:
            if command == "ADD":
                return await self._add(request, cid)
            if command == "DEL":
                await self._delete(cid)
                return None
            if command == "CHECK":
                return await self._check(request, cid)
        raise CniError(ERR_INVALID_CONFIG, f"request: unknown command {command!r}")

    async def _add(self, request: dict[str, Any], cid: str) -> dict[str, Any]:
        args = request.get("args") or {}
        req = EndpointRequest(container_id=cid, netns_path=str(request.get("netns") or ""),
                              ifname=str(request.get("ifname") or "eth0"),
                              pod_namespace=str(args.get("K8S_POD_NAMESPACE") or "default"),
                              pod_name=str(args.get("K8S_POD_NAME") or cid[:12]))
        try:
            ep, created = await asyncio.to_thread(self.manager.create, req)
        except EndpointNotFoundError as exc:
            raise CniError(ERR_UNKNOWN_CONTAINER, str(exc)) from exc
        except IpamExhaustedError as exc:
            raise CniError(ERR_IPAM_EXHAUSTED, str(exc)) from exc
        except (EndpointError, IpamError, OSError) as exc:
            raise CniError(ERR_ENDPOINT, f"container {cid}: {exc}") from exc
        if created:
            parent = extract_context({"traceparent": str(args.get(TRACEPARENT_ARG) or "")})
            try:
                with _tracer.start_as_current_span(
                        "cni ADD", context=parent, kind=SpanKind.SERVER,
                        attributes={"cilia.node": self.node.name, "cilia.endpoint": ep.id,
                                    "k8s.pod": f"{ep.pod_namespace}/{ep.pod_name}"}):
                    await _call(self.hooks.on_endpoint_created(ep))
            except EndpointNotReadyError as exc:
                # Identity or policy did not reach the maps in time: fail so that the
                # runtime retries (CNI "try again later"), leaving nothing behind.
                log.warning("endpoint %d: %s", ep.id, exc)
                await asyncio.to_thread(self.manager.rollback, ep)
                raise CniError(ERR_TRY_AGAIN, str(exc)) from exc
            except Exception as exc:
                log.exception("endpoint %d: created hook failed", ep.id)
                await asyncio.to_thread(self.manager.rollback, ep)
                raise CniError(ERR_ENDPOINT, f"endpoint {ep.id} ({req.pod_namespace}/"
                               f"{req.pod_name}): agent failed to set it up: {exc}") from exc
            await asyncio.to_thread(self.manager.commit, ep)
            log.info("endpoint %d: %s/%s %s on %s", ep.id, ep.pod_namespace, ep.pod_name,
                     ep.ipv4, ep.host_ifname)
        return add_result(ep.to_json())

    async def _delete(self, cid: str) -> None:
        ep = self.manager.get(cid)
        if ep is not None:
            try:
                await _call(self.hooks.on_endpoint_deleted(ep))
            except Exception:
                log.exception("endpoint %d: deleted hook failed (continuing)", ep.id)
        try:
            await asyncio.to_thread(self.manager.delete, cid)
        except (EndpointError, IpamError, OSError) as exc:
            raise CniError(ERR_ENDPOINT, f"container {cid}: delete failed: {exc}") from exc
        if ep is not None:
            log.info("endpoint %d: %s/%s deleted", ep.id, ep.pod_namespace, ep.pod_name)

    async def _check(self, request: dict[str, Any], cid: str) -> dict[str, Any]:
        try:
            ep = await asyncio.to_thread(self.manager.check, cid)
        except EndpointNotFoundError as exc:
            raise CniError(ERR_UNKNOWN_CONTAINER, str(exc)) from exc
        except EndpointCheckError as exc:
            raise CniError(ERR_CHECK_FAILED, str(exc)) from exc
        prev = (request.get("config") or {}).get("prevResult")
        if isinstance(prev, dict):
            check_prev_result(prev, ep.to_json())
        return add_result(ep.to_json())


async def serve(node: NodeConfig, hooks: EndpointHooks | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then remove the socket."""
    server = CniServer(node, hooks)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    """Standalone CNI server for one node (no datapath programs)."""
    parser = argparse.ArgumentParser(prog="cilia-cniserver")
    parser.add_argument("--node-config", required=True, type=Path,
                        help="node.json written by the lab (see NodeConfig)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(NodeConfig.load(args.node_config)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
