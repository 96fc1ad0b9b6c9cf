"""Reading Kubernetes manifests from files: multi-document YAML, validated whole.

Every document of every file is checked before anything is published, so that a bad file never
half-applies: its encoding (UTF-8), its YAML (nesting depth and alias expansion are limited
before any object is built, see :mod:`services.cli.yamlguard`), the fields of its kind, and
the size of the bus event it becomes against the bus's message size limit. A file with no
object at all is an error too. Errors name the file, the document index, kind/name and the
field at fault.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import yaml

from services.cli.yamlguard import YamlLimitError, check_limits, load_all
from services.common.codec import encode
from services.common.contract import ObjectEvent
from services.common.errors import CiliaError
from services.common.objects import DEFAULT_NAMESPACE, ObjectError
from services.k8s.kinds import KINDS as KINDS
from services.k8s.kinds import NAMESPACE_NAME_LABEL as NAMESPACE_NAME_LABEL
from services.k8s.kinds import POLICY_KINDS as POLICY_KINDS
from services.k8s.kinds import validate_document as validate_document

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
DEFAULT_MAX_PAYLOAD = 1 << 20     # nats-server's default max_payload (1 MiB), used offline
HEADER_ALLOWANCE = 1024           # bytes of a message taken by its headers (id, trace context)


class ManifestError(CiliaError):
    """One problem in one document of one file."""

    def __init__(self, file: str, index: int | None, ref: str | None, message: str) -> None:
        where = file if index is None else f"{file}: document {index}"
        if ref:
            where = f"{where} ({ref})"
        super().__init__(f"{where}: {message}")


class ManifestErrors(CiliaError):
    """Every problem found in a set of files."""

    def __init__(self, errors: list[ManifestError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class Manifest:
    """One validated object and where it came from."""

    file: str
    index: int
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def namespace(self) -> str:
        if not KINDS[self.kind].namespaced:
            return ""
        return str(self.obj["metadata"].get("namespace") or DEFAULT_NAMESPACE)

    @property
    def ref(self) -> str:
        """``kind/name`` as kubectl prints it (lower-case kind)."""
        return f"{self.kind.lower()}/{self.name}"


def manifest_files(paths: Iterable[str]) -> list[Path]:
    """Expand directories into their manifest files, sorted by name (like ``kubectl -f DIR``)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir()
                                if p.is_file() and p.suffix in MANIFEST_SUFFIXES))
        else:
            files.append(path)
    return files


def _ref(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return None
    kind = doc.get("kind") or "?"
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return f"{kind}/{name or '?'}"


def with_last_applied(obj: dict[str, Any]) -> dict[str, Any]:
    """The object with kubectl's last-applied annotation: what `apply` compares next time."""
    meta = dict(obj["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}),
                           LAST_APPLIED: json.dumps(obj, sort_keys=True)}
    return {**obj, "metadata": meta}


def upsert_event(obj: dict[str, Any]) -> dict[str, Any]:
    """The ``object.upsert`` data ``cilia apply`` publishes for a validated object."""
    meta = obj["metadata"]
    return {"kind": obj["kind"], "namespace": meta.get("namespace") or "",
            "name": meta["name"], "object": with_last_applied(obj)}


def check_size(obj: dict[str, Any], max_payload: int, whole: bool = True) -> None:
    """Check that the object's bus event fits a message of ``max_payload`` bytes.

    Args:
        whole: encode the event with the codec's full checks (``load`` does); else only
            measure it (the check against a connected bus, once ``load`` has passed).

    Raises:
        ObjectError: it does not fit, or it holds values the bus cannot carry.
    """
    try:
        event = upsert_event(obj)
        size = len(encode(ObjectEvent.UPSERT, event) if whole else
                   msgpack.packb({"v": 0, "type": ObjectEvent.UPSERT, "data": event}))
    except (CiliaError, TypeError, ValueError, OverflowError) as exc:
        raise ObjectError("", f"cannot be sent on the bus: {exc}") from None
    if size + HEADER_ALLOWANCE > max_payload:
        raise ObjectError("", f"too large for the bus: its event is {size} bytes, the bus "
                              f"takes at most {max_payload - HEADER_ALLOWANCE} "
                              f"(max_payload {max_payload} less {HEADER_ALLOWANCE} for headers)")


def read_documents(file: Path) -> list[Any]:
    """The documents of one file, read safely.

    Raises:
        ManifestError: unreadable, not UTF-8, not YAML, nested too deeply or an alias bomb.
    """
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ManifestError(str(file), None, None, exc.strerror or str(exc)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(str(file), None, None,
                            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                            f"{exc.start})") from None
    try:
        check_limits(text)
        return load_all(text)
    except YamlLimitError as exc:
        raise ManifestError(str(file), exc.index, None, exc.message) from None
    except yaml.YAMLError as exc:
        raise ManifestError(str(file), None, None, f"invalid YAML: {exc}") from None


def load(paths: Iterable[str], kinds: tuple[str, ...] | None = None,
         max_payload: int = DEFAULT_MAX_PAYLOAD) -> list[Manifest]:
    """Read and validate every document of every file.

    Args:
        max_payload: the bus's message size limit each object's event must fit.

    Raises:
        ManifestErrors: at least one file or document is bad; nothing is returned then.
    """
    manifests: list[Manifest] = []
    errors: list[ManifestError] = []
    files = manifest_files(paths)
    if not files:
        raise ManifestErrors([ManifestError(", ".join(paths), None, None,
                                            "no manifest files found")])
    for file in files:
        try:
            docs = read_documents(file)
        except ManifestError as exc:
            errors.append(exc)
            continue
        if all(doc is None for doc in docs):
            errors.append(ManifestError(str(file), None, None, "no objects (an empty file)"))
            continue
        for index, doc in enumerate(docs):
            if doc is None:
                continue  # empty document between separators
            try:
                obj = validate_document(doc)
                if kinds is not None and obj["kind"] not in kinds:
                    raise ObjectError("kind", f"expected one of {', '.join(kinds)}, "
                                              f"got {obj['kind']!r}")
                check_size(obj, max_payload)
                manifests.append(Manifest(str(file), index, obj))
            except ObjectError as exc:
                errors.append(ManifestError(str(file), index, _ref(doc), str(exc)))
    if errors:
        raise ManifestErrors(errors)
    seen: dict[tuple[str, str, str], Manifest] = {}
    for m in manifests:
        key = (m.kind, m.namespace, m.name)
        if key in seen:
            errors.append(ManifestError(m.file, m.index, f"{m.kind}/{m.name}",
                                        f"duplicate of document {seen[key].index} in "
                                        f"{seen[key].file}"))
        seen[key] = m
    if errors:
        raise ManifestErrors(errors)
    return manifests


def check_sizes(manifests: Iterable[Manifest], max_payload: int) -> None:
    """Check every manifest's event against a connected bus's limit (before publishing).

    Raises:
        ManifestErrors: naming each object that does not fit.
    """
    errors = []
    for m in manifests:
        try:
            check_size(m.obj, max_payload, whole=False)
        except ObjectError as exc:
            errors.append(ManifestError(m.file, m.index, f"{m.kind}/{m.name}", str(exc)))
    if errors:
        raise ManifestErrors(errors)
