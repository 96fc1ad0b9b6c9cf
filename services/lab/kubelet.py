"""The lab's kubelet: pod sandboxes (netns), CNI ADD/DEL through the plugin, the workload.

Creating a pod: validate, pick a node, report the pod as scheduled (``on_scheduled``: the
source publishes it, as a kube-apiserver would hold it before its sandbox exists), create the
sandbox netns ``cilia-<lab>-<ns>_<pod>``, run ``cilia-cni`` ADD (env + stdin, inside the node's
netns, like a kubelet on that node; a failed ADD is cleaned up with DEL and tried again a few
times, as a kubelet retries a sandbox), start the workload in the sandbox, wait until it
listens, record everything in ``pods.json``. Deleting reverses it: stop the workload (by
recorded pid), CNI DEL, remove the netns. A failure half way undoes what was done.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.clusterdns import resolv_conf
from services.common.paths import write_json_atomic
from services.common.processes import ProcRef, is_alive, stop_process
from services.common.tracing import inject_headers
from services.lab import cniexec
from services.lab import netns as ns
from services.lab._workload import start_client, start_dns, start_workload
from services.lab.errors import (
    CniInvokeError,
    LabError,
    PodNotFoundError,
    PodSpecError,
)
from services.lab.plan import container_id, pod_netns_name
from services.lab.podspec import (
    DeploymentSpec,
    PodSpec,
    client_targets,
    deployment_pod,
    owner_deployment,
    parse_deployment,
    parse_pod,
    pick_node,
    random_suffix,
)
from services.lab.state import cni_conf_path, lab_dir, lab_lock, load_lab, log_dir
from services.lab.topology import DEFAULT_LAB
from services.nodeagent.cni.spec import TRACEPARENT_ARG

log = logging.getLogger(__name__)

PODS_STATE_VERSION = 1
POD_IFNAME = "eth0"
DNS_IMAGE = "cilia/dns"     # the image whose pods run the cluster DNS server, not the workload
CLIENT_IMAGE = "cilia/client"   # pods that connect to their args' HOST:PORT in a loop
ADD_ATTEMPTS = 3            # CNI ADD tries per pod (the agent fails ADD it could not enforce)
ADD_RETRY_DELAY_S = 1.0     # pause before trying ADD again, doubled after each failure

# Called with the pod as scheduled (node chosen, no address yet) right before CNI ADD.
OnScheduled = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class ApplyResult:
    """What applying an object did: its pods now, and the pods it removed."""

    pods: list[dict[str, Any]]
    deleted: list[dict[str, Any]]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kubelet:
    """Pods and Deployments of one lab (every method takes the lab's lock while it changes).

    Args:
        lab: the lab name (must be up).
        cni_path: plugin directories (default ``$CNI_PATH`` or the venv's bin directory).
    """

    def __init__(self, lab: str = DEFAULT_LAB, cni_path: list[str] | None = None) -> None:
        self.lab = lab
        self.cni_path = cni_path

    # -- state -------------------------------------------------------------------------------

    @property
    def _pods_file(self) -> Path:
        return lab_dir(self.lab) / "pods.json"

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self._pods_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise LabError(f"lab {self.lab}: pods state {self._pods_file}: {exc}") from exc
        if data.get("version") != PODS_STATE_VERSION:
            raise LabError(f"lab {self.lab}: pods state: unsupported version "
                           f"{data.get('version')!r}")
        return dict(data.get("pods", {}))

    def _save(self, records: Mapping[str, Any]) -> None:
        write_json_atomic(self._pods_file, {"version": PODS_STATE_VERSION, "pods": records})

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, Any]]]:
        load_lab(self.lab)  # raises LabNotFoundError when the lab is not up
        with lab_lock(self.lab):
            yield self._load()

    # -- queries -----------------------------------------------------------------------------

    def list_pods(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """All pods (of one namespace), sorted by namespace and name.

        ``status.phase`` is observed: Failed when the pod's workload process has died.
        """
        return [_observed(rec) for key, rec in sorted(self._load().items())
                if namespace is None or key.split("/", 1)[0] == namespace]

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        rec = self._load().get(f"{namespace}/{name}")
        return _observed(rec) if rec else None

    def pod_netns(self, namespace: str, name: str) -> str:
        """The netns name of a pod's sandbox.

        Raises:
            PodNotFoundError: no such pod.
        """
        rec = self._load().get(f"{namespace}/{name}")
        if rec is None:
            raise PodNotFoundError(f"pod {namespace}/{name} not found in lab {self.lab}")
        return str(rec["runtime"]["netns"])

    def deployment_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [p for p in self.list_pods(namespace) if owner_deployment(p) == name]

    # -- pods --------------------------------------------------------------------------------

    def create_pod(self, pod: Mapping[str, Any],
                   on_scheduled: OnScheduled | None = None) -> dict[str, Any]:
        """Create a pod (or return it if it exists with the same ports; labels are updated).

        Args:
            on_scheduled: called with the pod as scheduled, before its CNI ADD.

        Returns:
            The pod with ``metadata.uid``, ``spec.nodeName``, ``status.podIP``/``hostIP``.

        Raises:
            PodSpecError: invalid object or unknown ``spec.nodeName``.
            CniInvokeError: the CNI plugin failed (nothing is left behind).
            WorkloadError: the workload did not start (nothing is left behind).
        """
        spec = parse_pod(pod)
        if _image(pod) == CLIENT_IMAGE:
            client_targets(pod)     # a bad target fails before anything is created
        with self._locked() as records:
            out = self._create(records, spec, pod, on_scheduled)
            self._save(records)
            return out

    def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete a pod; False if there was none."""
        with self._locked() as records:
            rec = records.pop(f"{namespace}/{name}", None)
            if rec is None:
                return False
            self._teardown(rec)
            self._save(records)
            return True

    def apply(self, obj: Mapping[str, Any],
              on_scheduled: OnScheduled | None = None) -> ApplyResult:
        """Apply a Pod or a Deployment: its pods now, and the pods it removed.

        Args:
            on_scheduled: called with each new pod as scheduled, before its CNI ADD.
        """
        kind = obj.get("kind")
        if kind == "Pod":
            return ApplyResult([self.create_pod(obj, on_scheduled)], [])
        if kind == "Deployment":
            return self.apply_deployment(obj, on_scheduled)
        raise PodSpecError(f"kind {kind!r}: the lab kubelet runs Pods and Deployments only")

    def apply_deployment(self, deploy: Mapping[str, Any],
                         on_scheduled: OnScheduled | None = None) -> ApplyResult:
        """Converge a Deployment's pods: replicas of the current template, others deleted.

        Returns:
            The deployment's pods (sorted by name) and the pods deleted (old template or
            surplus), for the caller to publish.
        """
        spec = parse_deployment(deploy)
        with self._locked() as records:
            try:
                return self._converge(records, spec, on_scheduled)
            finally:
                self._save(records)

    def delete_deployment(self, namespace: str, name: str) -> list[str]:
        """Delete a Deployment's pods; returns their names."""
        with self._locked() as records:
            gone = [key for key, rec in sorted(records.items())
                    if key.startswith(f"{namespace}/") and owner_deployment(rec["pod"]) == name]
            for key in gone:
                self._teardown(records.pop(key))
            self._save(records)
            return [key.split("/", 1)[1] for key in gone]

    # -- internals ---------------------------------------------------------------------------

    def _converge(self, records: dict[str, dict[str, Any]], spec: DeploymentSpec,
                  on_scheduled: OnScheduled | None) -> ApplyResult:
        owned = sorted(key for key, rec in records.items()
                       if key.startswith(f"{spec.namespace}/")
                       and owner_deployment(rec["pod"]) == spec.name)
        current = [k for k in owned
                   if records[k]["pod"]["metadata"]["labels"].get("pod-template-hash")
                   == spec.template_hash]
        keep, extra = current[:spec.replicas], current[spec.replicas:]
        deleted = []
        for key in [k for k in owned if k not in current] + extra:
            rec = records[key]
            self._teardown(rec)
            deleted.append(records.pop(key)["pod"])
        pods = [records[k]["pod"] for k in keep]
        while len(pods) < spec.replicas:
            obj = deployment_pod(spec, random_suffix())
            if f"{spec.namespace}/{obj['metadata']['name']}" in records:
                continue
            pods.append(self._create(records, parse_pod(obj), obj, on_scheduled))
        return ApplyResult(sorted(pods, key=lambda p: p["metadata"]["name"]), deleted)

    def _create(self, records: dict[str, dict[str, Any]], spec: PodSpec,
                pod: Mapping[str, Any], on_scheduled: OnScheduled | None) -> dict[str, Any]:
        existing = records.get(spec.key)
        if existing is not None:
            old = parse_pod(existing["pod"])
            if old.ports != spec.ports:
                raise PodSpecError(f"Pod {spec.key}: spec.containers: ports differ from the "
                                   "running pod (delete it first)")
            existing["pod"]["metadata"]["labels"] = dict(spec.labels)
            return dict(existing["pod"])
        state = load_lab(self.lab)
        plan = state.plan
        nodes = [n.name for n in plan.nodes]
        if spec.node_name is not None and spec.node_name not in nodes:
            raise PodSpecError(f"Pod {spec.key}: spec.nodeName: {spec.node_name!r} is not a "
                               f"node of lab {self.lab} ({', '.join(nodes)})")
        counts: dict[str, int] = {}
        for rec in records.values():
            counts[rec["runtime"]["node"]] = counts.get(rec["runtime"]["node"], 0) + 1
        node = plan.node(spec.node_name or pick_node(nodes, counts))
        uid, created = str(uuid.uuid4()), _now()
        runtime: dict[str, Any] = {
            "node": node.name, "nodeNetns": node.netns,
            "netns": pod_netns_name(self.lab, spec.namespace, spec.name),
            "containerId": container_id(uid), "workload": None, "cniResult": None,
        }
        netconf = json.loads(cni_conf_path(self.lab, node.name).read_text())
        if on_scheduled is not None:
            on_scheduled(_pod_object(pod, spec, uid, created, node.name, str(node.node_ip),
                                     None))
        ns.create_ipv4_netns(runtime["netns"])
        try:
            result = self._add(netconf, spec, runtime, node.netns)
            runtime["cniResult"] = result
            runtime["resolvConf"] = self._write_resolv_conf(spec, runtime["netns"])
            runtime["workload"] = self._start_workload(spec, runtime["netns"], pod,
                                                       node.name).to_json()
        except BaseException:
            # undo what was done; the error worth reporting is the one that got us here
            with contextlib.suppress(LabError, OSError):
                self._teardown({"runtime": runtime, "netconf": netconf})
            raise
        out = _pod_object(pod, spec, uid, created, node.name, str(node.node_ip),
                          _pod_ip(result))
        records[spec.key] = {"pod": out, "runtime": runtime, "netconf": netconf}
        return out

    def _add(self, netconf: Mapping[str, Any], spec: PodSpec, runtime: Mapping[str, Any],
             node_netns: str) -> dict[str, Any] | None:
        """CNI ADD, tried again after a failure (cleaned up with DEL first), like a kubelet."""
        delay = ADD_RETRY_DELAY_S
        for attempt in range(1, ADD_ATTEMPTS + 1):
            try:
                return cniexec.invoke("ADD", netconf, container_id=runtime["containerId"],
                                      netns_path=ns.netns_path(runtime["netns"]),
                                      ifname=POD_IFNAME, args=_cni_args(spec, runtime),
                                      cni_path=self.cni_path, run_in_netns=node_netns)
            except CniInvokeError as exc:
                if attempt == ADD_ATTEMPTS:
                    raise
                log.warning("pod %s: %s (attempt %d of %d; trying again in %gs)", spec.key,
                            exc, attempt, ADD_ATTEMPTS, delay)
                with contextlib.suppress(LabError):
                    cniexec.invoke("DEL", netconf, container_id=runtime["containerId"],
                                   netns_path=ns.netns_path(runtime["netns"]),
                                   ifname=POD_IFNAME, cni_path=self.cni_path,
                                   run_in_netns=node_netns)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_workload(self, spec: PodSpec, netns: str, pod: Mapping[str, Any],
                        node: str) -> ProcRef:
        logfile = log_dir(self.lab) / f"pod-{spec.namespace}_{spec.name}.log"
        if _image(pod) == DNS_IMAGE:
            return start_dns(netns, spec.name, spec.namespace, node, logfile,
                             load_lab(self.lab).world)
        if _image(pod) == CLIENT_IMAGE:
            return start_client(netns, spec.name, spec.namespace, client_targets(pod), logfile)
        return start_workload(netns, spec.name, spec.namespace, [p.port for p in spec.ports],
                              logfile)

    def _write_resolv_conf(self, spec: PodSpec, netns: str) -> str:
        """The pod's resolv.conf (kube-dns, search domains), bind-mounted by ``exec``."""
        path = lab_dir(self.lab) / "resolv" / f"{netns}.conf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(resolv_conf(spec.namespace), encoding="utf-8")
        return str(path)

    def pod_resolv_conf(self, namespace: str, name: str) -> str | None:
        """The resolv.conf file of a pod (None for pods created before there was one)."""
        rec = self._load().get(f"{namespace}/{name}")
        path = rec["runtime"].get("resolvConf") if rec else None
        return str(path) if path else None

    def _teardown(self, rec: Mapping[str, Any]) -> None:
        runtime = rec["runtime"]
        if runtime.get("workload"):
            stop_process(ProcRef.from_json(runtime["workload"]))
        netconf = rec.get("netconf")
        try:
            if netconf is not None:
                cniexec.invoke("DEL", netconf, container_id=runtime["containerId"],
                               netns_path=ns.netns_path(runtime["netns"]), ifname=POD_IFNAME,
                               cni_path=self.cni_path, run_in_netns=runtime["nodeNetns"],
                               prev_result=runtime.get("cniResult"))
        finally:
            ns.remove_netns(runtime["netns"])
            if runtime.get("resolvConf"):
                Path(runtime["resolvConf"]).unlink(missing_ok=True)


def _observed(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The pod as recorded, with ``status.phase`` Failed if its workload has died."""
    pod = dict(rec["pod"])
    workload = rec["runtime"].get("workload")
    if workload and not is_alive(ProcRef.from_json(workload)):
        pod["status"] = {**pod["status"], "phase": "Failed"}
    return pod


def _image(pod: Mapping[str, Any]) -> str:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return str((containers[0] or {}).get("image") or "")


def _cni_args(spec: PodSpec, runtime: Mapping[str, Any]) -> dict[str, str]:
    args = {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": spec.namespace,
            "K8S_POD_NAME": spec.name, "K8S_POD_INFRA_CONTAINER_ID": runtime["containerId"]}
    # The trace of the apply that creates the pod continues in the agent's ADD.
    traceparent = inject_headers({}).get("traceparent")
    if traceparent:
        args[TRACEPARENT_ARG] = traceparent
    return args


def _pod_ip(result: Mapping[str, Any] | None) -> str:
    try:
        return str(result["ips"][0]["address"]).split("/")[0]  # type: ignore[index]
    except (TypeError, KeyError, IndexError) as exc:
        raise LabError(f"CNI ADD returned no address: {result!r}") from exc


def _pod_object(pod: Mapping[str, Any], spec: PodSpec, uid: str, created: str, node: str,
                host_ip: str, pod_ip: str | None) -> dict[str, Any]:
    """The Pod as the API server holds it: Running with its address, or (``pod_ip`` None)
    scheduled on ``node`` and Pending, before its sandbox has one."""
    meta = dict(pod.get("metadata") or {})
    meta.update(name=spec.name, namespace=spec.namespace, labels=dict(spec.labels), uid=uid,
                creationTimestamp=created)
    body = dict(pod.get("spec") or {})
    body["nodeName"] = node
    if pod_ip is None:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body,
                "status": {"phase": "Pending", "hostIP": host_ip}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body,
            "status": {"phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
                       "hostIP": host_ip, "startTime": meta["creationTimestamp"]}}
