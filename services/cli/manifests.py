"""Reading Kubernetes manifests from files: multi-document YAML, validated whole.

Every document of every file is checked before anything is published, so that a bad file never
half-applies. Errors name the file, the document index, kind/name and the field at fault.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.common.errors import CiliaError
from services.common.objects import DEFAULT_NAMESPACE, KindSpec, ObjectError
from services.common.objects import KINDS as CORE_KINDS
from services.policy import KIND_CCNP, KIND_CNP, KIND_KNP, PolicyValidationError, parse_policy

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def _validate_policy(doc: Any) -> None:
    try:
        parse_policy(doc)
    except PolicyValidationError as exc:
        raise ObjectError(exc.path, exc.reason) from exc


POLICY_KINDS: dict[str, KindSpec] = {
    KIND_CNP: KindSpec(("cilium.io/v2",), namespaced=True, validate=_validate_policy),
    KIND_CCNP: KindSpec(("cilium.io/v2",), namespaced=False, validate=_validate_policy),
    KIND_KNP: KindSpec(("networking.k8s.io/v1",), namespaced=True, validate=_validate_policy),
}
# Every kind a source accepts.
KINDS: dict[str, KindSpec] = {**CORE_KINDS, **POLICY_KINDS}


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


def validate_document(doc: Any) -> dict[str, Any]:
    """Validate one decoded document; returns it with defaults filled in.

    Raises:
        ObjectError: naming the field at fault.
    """
    if not isinstance(doc, dict):
        raise ObjectError("", f"a manifest must be a map, got {type(doc).__name__}")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ObjectError("kind", "is required")
    spec = KINDS.get(kind)
    if spec is None:
        raise ObjectError("kind", f"unsupported kind {kind!r} (supported: "
                                  f"{', '.join(sorted(KINDS))})")
    if doc.get("apiVersion") not in spec.api_versions:
        raise ObjectError("apiVersion", f"{kind} needs apiVersion "
                                        f"{' or '.join(spec.api_versions)}, "
                                        f"got {doc.get('apiVersion')!r}")
    spec.validate(doc)
    obj = copy.deepcopy(doc)
    if spec.namespaced:
        obj["metadata"].setdefault("namespace", DEFAULT_NAMESPACE)
    if kind == "Namespace":
        # The API server labels every namespace with its own name; policies select on it.
        labels = obj["metadata"].get("labels") or {}
        obj["metadata"]["labels"] = {**labels, NAMESPACE_NAME_LABEL: obj["metadata"]["name"]}
    return obj


def load(paths: Iterable[str], kinds: tuple[str, ...] | None = None) -> list[Manifest]:
    """Read and validate every document of every file.

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
            docs = list(yaml.safe_load_all(file.read_text()))
        except OSError as exc:
            errors.append(ManifestError(str(file), None, None, exc.strerror or str(exc)))
            continue
        except yaml.YAMLError as exc:
            errors.append(ManifestError(str(file), None, None, f"invalid YAML: {exc}"))
            continue
        for index, doc in enumerate(docs):
            if doc is None:
                continue  # empty document between separators
            try:
                obj = validate_document(doc)
                if kinds is not None and obj["kind"] not in kinds:
                    raise ObjectError("kind", f"expected one of {', '.join(kinds)}, "
                                              f"got {obj['kind']!r}")
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
