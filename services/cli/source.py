"""The embedded lab's source of cluster objects: ``cilia apply`` and ``cilia delete``.

Publishes the same ``object.upsert``/``object.delete`` events a Kubernetes watcher would, so
nothing downstream knows which source runs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from nats.js.errors import NotFoundError
from opentelemetry.trace import SpanKind

from services.cli.manifests import Manifest
from services.common import subjects
from services.common.bus import Bus
from services.common.codec import decode
from services.common.errors import CodecError
from services.common.tracing import tracer

_tracer = tracer("cilia.cli")

CREATED = "created"
CONFIGURED = "configured"
UNCHANGED = "unchanged"
DELETED = "deleted"
NOT_FOUND = "not found"


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
    subject = subjects.source(m.kind, m.namespace, m.name)
    try:
        raw = await bus.js.get_last_msg(subjects.HISTORY_STREAM, subject)
    except NotFoundError:
        return None
    try:
        event = decode(raw.data or b"")
    except CodecError:
        return None
    return event.data["object"] if event.type == "object.upsert" else None


async def apply(bus: Bus, manifests: list[Manifest]) -> list[Outcome]:
    """Publish every manifest that differs from what the bus holds (one trace per call)."""
    outcomes: list[Outcome] = []
    with _tracer.start_as_current_span("cilia apply", kind=SpanKind.CLIENT,
                                       attributes={"cilia.objects": len(manifests)}):
        for m in manifests:
            before = await current(bus, m)
            if before == m.obj:
                outcomes.append(Outcome(m, UNCHANGED))
                continue
            with _tracer.start_as_current_span(
                    f"apply {m.ref}", attributes={"k8s.namespace": m.namespace,
                                                  "k8s.kind": m.kind, "k8s.name": m.name}):
                await bus.publish(
                    subjects.source(m.kind, m.namespace, m.name), "object.upsert",
                    {"kind": m.kind, "namespace": m.namespace, "name": m.name, "object": m.obj},
                    msg_id=f"apply/{uuid.uuid4()}")
            outcomes.append(Outcome(m, CREATED if before is None else CONFIGURED))
    return outcomes


async def delete(bus: Bus, manifests: list[Manifest]) -> list[Outcome]:
    """Publish a delete for every manifest the bus holds."""
    outcomes: list[Outcome] = []
    with _tracer.start_as_current_span("cilia delete", kind=SpanKind.CLIENT):
        for m in manifests:
            before = await current(bus, m)
            if before is None:
                outcomes.append(Outcome(m, NOT_FOUND))
                continue
            await bus.publish(
                subjects.source(m.kind, m.namespace, m.name), "object.delete",
                {"kind": m.kind, "namespace": m.namespace, "name": m.name, "object": before},
                msg_id=f"delete/{uuid.uuid4()}")
            outcomes.append(Outcome(m, DELETED))
    return outcomes
