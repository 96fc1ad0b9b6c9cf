"""The embedded lab's source of cluster objects: ``cilia apply`` and ``cilia delete``.

Publishes the same ``object.upsert``/``object.delete`` events a Kubernetes watcher would, so
nothing downstream knows which source runs.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import click
from opentelemetry.trace import SpanKind

from services.cli.manifests import (
    LAST_APPLIED,
    Manifest,
    ManifestErrors,
    check_sizes,
    load,
    with_last_applied,
)
from services.common.bus import Bus
from services.common.contract import ObjectEvent, ObjectUpsert, source_subject
from services.common.tracing import tracer

_tracer = tracer("cilia.cli")

CREATED = "created"
CONFIGURED = "configured"
UNCHANGED = "unchanged"
DELETED = "deleted"
NOT_FOUND = "not found"


SCHEDULED_PUBLISH_TIMEOUT_S = 30.0   # publishing a scheduled pod from the runtime's thread
WORKLOAD_KINDS = ("Pod", "Deployment")


class Runtime(Protocol):
    """What runs pods (the lab's kubelet): returns the pods as they now run.

    ``on_scheduled`` is called (from the runtime's thread) with each new pod as scheduled,
    before its CNI ADD: the source publishes it then, so that the pod is known on the bus
    while its node's agent sets up its endpoint.
    """

    def apply(self, obj: Mapping[str, Any],
              on_scheduled: Callable[[dict[str, Any]], None] | None = None) -> Any: ...

    def delete_pod(self, namespace: str, name: str) -> bool: ...

    def delete_deployment(self, namespace: str, name: str) -> list[str]: ...


@dataclass(frozen=True)
class Outcome:
    manifest: Manifest
    result: str

    def __str__(self) -> str:
        if self.result == NOT_FOUND:
            return f'Error: {self.manifest.kind.lower()} "{self.manifest.name}" not found'
        return f"{self.manifest.ref} {self.result}"


async def current(bus: Bus, m: Manifest) -> dict[str, object] | None:
    """The object the bus holds for this manifest's key, or None."""
    return await current_object(bus, m.kind, m.namespace, m.name)


async def current_object(bus: Bus, kind: str, namespace: str,
                         name: str) -> dict[str, object] | None:
    """The object the bus holds for (kind, namespace, name), or None."""
    event = await bus.last_event(source_subject(kind, namespace, name))
    return event.payload.object if event is not None and isinstance(event.payload, ObjectUpsert) \
        else None


def _last_applied(obj: Mapping[str, Any] | None) -> str | None:
    if obj is None:
        return None
    meta = obj.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    return annotations.get(LAST_APPLIED) if isinstance(annotations, Mapping) else None


async def _publish_object(bus: Bus, obj: Mapping[str, Any],
                          event_type: ObjectEvent = ObjectEvent.UPSERT) -> None:
    kind, meta = obj["kind"], obj["metadata"]
    namespace = meta.get("namespace") or ""
    await bus.publish(source_subject(kind, namespace, meta["name"]), event_type,
                      {"kind": kind, "namespace": namespace, "name": meta["name"],
                       "object": dict(obj)}, msg_id=f"apply/{uuid.uuid4()}")


async def _run_workload(bus: Bus, runtime: Runtime, obj: dict[str, Any]) -> None:
    """Have the runtime run a Pod or Deployment (creating what is missing, like a
    controller), then publish its pods where they differ from what the bus holds.

    Each new pod is published as scheduled (node, no address) before its CNI ADD, as a
    kube-apiserver holds it, and again with its address once it runs.
    """
    loop = asyncio.get_running_loop()

    def scheduled(pod: dict[str, Any]) -> None:
        asyncio.run_coroutine_threadsafe(_publish_object(bus, pod), loop).result(
            SCHEDULED_PUBLISH_TIMEOUT_S)

    result = await asyncio.to_thread(runtime.apply, obj, scheduled)
    for pod in result.pods:
        meta = pod["metadata"]
        if await current_object(bus, "Pod", meta["namespace"], meta["name"]) != pod:
            await _publish_object(bus, pod)
    for pod in result.deleted:
        await _publish_object(bus, pod, ObjectEvent.DELETE)


async def apply(bus: Bus, manifests: list[Manifest],
                runtime: Runtime | None = None) -> list[Outcome]:
    """Publish every manifest that differs from what the bus holds (one trace per call).

    With a ``runtime`` (the lab), Pods and Deployments also run: their pods are created through
    the CNI and published with their addresses, as a kubelet reports them.

    Raises:
        ManifestErrors: an object's event does not fit the bus's message size limit
            (checked for every object before anything is published).
    """
    check_sizes(manifests, bus.nc.max_payload)
    outcomes: list[Outcome] = []
    with _tracer.start_as_current_span("cilia apply", kind=SpanKind.CLIENT,
                                       attributes={"cilia.objects": len(manifests)}):
        for m in manifests:
            before = await current(bus, m)
            obj = with_last_applied(m.obj)
            if _last_applied(before) == _last_applied(obj):
                if runtime is not None and m.kind in WORKLOAD_KINDS:
                    await _run_workload(bus, runtime, obj)   # its pods may be gone
                outcomes.append(Outcome(m, UNCHANGED))
                continue
            with _tracer.start_as_current_span(
                    f"apply {m.ref}", attributes={"k8s.namespace": m.namespace,
                                                  "k8s.kind": m.kind, "k8s.name": m.name}):
                await _publish_object(bus, obj)
                if runtime is not None and m.kind in WORKLOAD_KINDS:
                    await _run_workload(bus, runtime, obj)
            outcomes.append(Outcome(m, CREATED if before is None else CONFIGURED))
    return outcomes


async def delete(bus: Bus, manifests: list[Manifest],
                 runtime: Runtime | None = None) -> list[Outcome]:
    """Publish a delete for every manifest the bus holds (and stop its pods in the lab)."""
    outcomes: list[Outcome] = []
    with _tracer.start_as_current_span("cilia delete", kind=SpanKind.CLIENT):
        for m in manifests:
            before = await current(bus, m)
            if before is None:
                outcomes.append(Outcome(m, NOT_FOUND))
                continue
            if runtime is not None and m.kind == "Deployment":
                names = await asyncio.to_thread(runtime.delete_deployment, m.namespace, m.name)
                for name in names:
                    await _publish_object(bus, {"kind": "Pod", "metadata": {
                        "name": name, "namespace": m.namespace}}, ObjectEvent.DELETE)
            elif runtime is not None and m.kind == "Pod":
                await asyncio.to_thread(runtime.delete_pod, m.namespace, m.name)
            await _publish_object(bus, before, ObjectEvent.DELETE)
            outcomes.append(Outcome(m, DELETED))
    return outcomes


def load_or_exit(files: tuple[str, ...], kinds: tuple[str, ...] | None = None,
                 verb: str = "applied") -> list[Manifest]:
    """The validated manifests of ``files``; on any error, print them all and exit 1."""
    try:
        return load(files, kinds=kinds)
    except ManifestErrors as exc:
        exit_with(exc, verb)


def exit_with(exc: ManifestErrors, verb: str = "applied") -> NoReturn:
    """Print every problem, one line each, say that nothing was done, exit 1."""
    for err in exc.errors:
        click.echo(f"error: {err}", err=True)
    click.echo(f"nothing was {verb}", err=True)
    sys.exit(1)


def echo_outcomes(outcomes: list[Outcome]) -> None:
    """Print outcomes like kubectl (not-found on stderr); exit 1 if anything was not found."""
    for outcome in outcomes:
        click.echo(str(outcome), err=outcome.result == NOT_FOUND)
    if any(o.result == NOT_FOUND for o in outcomes):
        sys.exit(1)
