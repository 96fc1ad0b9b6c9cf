"""The lab as nodes of a Kubernetes API server (``cilia lab up --k8s-api``).

What a cluster's kubelets, scheduler and Deployment controller would do for the lab's nodes,
against the API server, level-triggered (every :data:`SYNC_S` the API's Pods and Deployments
are listed and the differences acted on, as controllers resync):

- **Nodes**: each lab node is registered as a Node (its pod CIDR, its addresses, and the MAC
  of its underlay device, which DSR needs), as a kubelet registers itself.
- **Scheduler**: a Pod without ``spec.nodeName`` gets the lab node with the fewest pods.
- **Kubelet**: a Pod bound to a lab node runs there through the CNI plugin (the lab's
  :class:`~services.lab.kubelet.Kubelet`), then its ``status`` gets ``podIP``, ``hostIP``,
  ``phase: Running`` and the ``Ready`` condition; a Pod gone from the API is torn down.
- **Deployment controller**: a Deployment gets ``spec.replicas`` Pods of its current
  template (``pod-template-hash``), owned by it; others are deleted.

Nothing here publishes on the bus: the watcher (``services/k8s``) reads all of it from the API,
as it would from a real cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from services.lab.errors import LabError
from services.lab.kubelet import Kubelet
from services.lab.podspec import (
    deployment_pod,
    owner_deployment,
    parse_deployment,
    pick_node,
    random_suffix,
)
from services.lab.state import load_lab
from services.nodeagent.datapath import device_mac
from services.nodeagent.lbstate import NODE_MAC_ANNOTATION

from .plan import node_object

log = logging.getLogger(__name__)

SYNC_S = 0.3                 # how often the API's Pods and Deployments are listed
UNDERLAY_DEVICE = "eth0"     # the lab node's underlay interface
TEMPLATE_HASH_LABEL = "pod-template-hash"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


async def api_client(kubeconfig: str | None) -> client.ApiClient:
    """An API client from a kubeconfig."""
    conf = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=conf)
    return client.ApiClient(configuration=conf)


async def _json(call: Any) -> dict[str, Any]:
    """The JSON body of a kubernetes_asyncio call made with ``_preload_content=False``."""
    resp = await call
    try:
        return dict(json.loads(await resp.read()))
    finally:
        resp.release()


class K8sLab:
    """The lab's nodes, scheduler, kubelet and Deployment controller on an API server."""

    def __init__(self, lab: str, api: client.ApiClient) -> None:
        self.lab = lab
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.kubelet = Kubelet(lab)
        self.nodes = [n.name for n in load_lab(lab).plan.nodes]
        self._failed: dict[str, str] = {}   # pod uid -> why it could not run (not retried)

    # -- nodes --------------------------------------------------------------------------

    async def register_nodes(self) -> None:
        for node in load_lab(self.lab).plan.nodes:
            obj = node_object(node)
            with contextlib.suppress(Exception):   # no device, no DSR: the rest still works
                mac = await asyncio.to_thread(device_mac, UNDERLAY_DEVICE, node.netns)
                obj["metadata"]["annotations"] = {NODE_MAC_ANNOTATION: mac}
            status = obj.pop("status")
            try:
                await self.core.create_node(cast(Any, obj))   # a dict body is sent as is
            except ApiException as exc:
                if exc.status != 409:
                    raise
                await self.core.patch_node(node.name, {"metadata": obj["metadata"],
                                                       "spec": obj["spec"]})
            status["conditions"] = [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                     "lastTransitionTime": _now()}]
            await self.core.patch_node_status(node.name, {"status": status})

    # -- the loop -------------------------------------------------------------------------

    async def sync(self) -> None:
        """One pass: Deployments' pods, scheduling, running and stopping pods."""
        deployments = (await _json(self.apps.list_deployment_for_all_namespaces(
            _preload_content=False)))["items"]
        pods = (await _json(self.core.list_pod_for_all_namespaces(
            _preload_content=False)))["items"]
        await self._deployments(deployments, pods)
        await self._pods(pods)

    async def run(self) -> None:
        await self.register_nodes()
        while True:
            try:
                await self.sync()
            except (ApiException, OSError, LabError) as exc:
                log.warning("lab %s: sync failed: %s", self.lab, exc)
            await asyncio.sleep(SYNC_S)

    # -- the Deployment controller --------------------------------------------------------

    async def _deployments(self, deployments: list[dict[str, Any]],
                           pods: list[dict[str, Any]]) -> None:
        owners = {_key(d): d for d in deployments}
        owned: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            name = owner_deployment(pod)
            if name is None:
                continue
            ns = pod["metadata"]["namespace"]
            if f"{ns}/{name}" not in owners:    # its Deployment is gone
                await self._delete_pod(pod)
                continue
            owned.setdefault(f"{ns}/{name}", []).append(pod)
        for key, deploy in owners.items():
            try:
                spec = parse_deployment(deploy)
            except LabError as exc:
                log.warning("%s", exc)
                continue
            mine = sorted(owned.get(key, []), key=lambda p: p["metadata"]["name"])
            current = [p for p in mine if (p["metadata"].get("labels") or {}).get(
                TEMPLATE_HASH_LABEL) == spec.template_hash]
            for pod in [p for p in mine if p not in current] + current[spec.replicas:]:
                await self._delete_pod(pod)
            for _ in range(spec.replicas - len(current)):
                pod = deployment_pod(spec, random_suffix())
                pod["metadata"]["ownerReferences"][0]["uid"] = deploy["metadata"].get("uid", "")
                await self.core.create_namespaced_pod(spec.namespace, cast(Any, pod))

    async def _delete_pod(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(ApiException):     # 404: gone already
            await self.core.delete_namespaced_pod(meta["name"], meta["namespace"])

    # -- scheduler and kubelet ------------------------------------------------------------

    async def _pods(self, pods: list[dict[str, Any]]) -> None:
        running = {_key(p): p for p in self.kubelet.list_pods()}
        counts: dict[str, int] = {}
        for p in pods:
            node = (p.get("spec") or {}).get("nodeName")
            if node:
                counts[node] = counts.get(node, 0) + 1
        wanted: set[str] = set()
        for pod in pods:
            meta, spec = pod["metadata"], pod.get("spec") or {}
            node = spec.get("nodeName")
            if not node:
                node = pick_node(self.nodes, counts)
                counts[node] = counts.get(node, 0) + 1
                await self.core.patch_namespaced_pod(meta["name"], meta["namespace"],
                                                     {"spec": {"nodeName": node}})
                continue        # runs on the next pass, bound
            if node not in self.nodes or meta.get("deletionTimestamp"):
                continue
            key = _key(pod)
            wanted.add(key)
            if key in running or meta.get("uid") in self._failed:
                continue
            await self._run_pod(pod)
        for key, rec in running.items():
            node = (rec.get("spec") or {}).get("nodeName")
            if key not in wanted and node in self.nodes:
                ns, name = key.split("/", 1)
                await asyncio.to_thread(self.kubelet.delete_pod, ns, name)
                log.info("pod %s stopped (gone from the API)", key)

    async def _run_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            out = await asyncio.to_thread(self.kubelet.create_pod, pod)
        except LabError as exc:
            self._failed[meta.get("uid", "")] = str(exc)
            log.warning("pod %s: %s", _key(pod), exc)
            await self.core.patch_namespaced_pod_status(
                meta["name"], meta["namespace"],
                {"status": {"phase": "Failed", "reason": "CiliaLabError", "message": str(exc)}})
            return
        status = out.get("status") or {}
        ip = status.get("podIP")
        await self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}] if ip else [],
            "hostIP": status.get("hostIP"), "startTime": _now(),
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": _now()}]}})
        log.info("pod %s running on %s at %s", _key(pod), pod["spec"]["nodeName"], ip)


async def _main(lab: str, kubeconfig: str | None) -> None:
    api = await api_client(kubeconfig)
    runtime = K8sLab(lab, api)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(runtime.run())
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
    finally:
        task.cancel()
        waiter.cancel()
        await api.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.lab.k8sruntime",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--lab", required=True)
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s k8s-lab %(message)s")
    try:
        asyncio.run(_main(args.lab, args.kubeconfig))
    except (LabError, ApiException, config.ConfigException) as exc:
        print(f"k8s lab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
