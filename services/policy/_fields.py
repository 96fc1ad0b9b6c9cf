"""Field-level validation shared by the Cilium and Kubernetes policy parsers."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from services.common.labels import SOURCE_ANY
from services.common.policytypes import ANY_PROTO, MAX_PORT, PROTO_BY_NAME

from .cidr import CIDRRule, make_cidr_rule
from .errors import CIDRError, PolicyValidationError, SelectorError, UnsupportedFieldError
from .fqdnmatch import NameMatcher, match_name, match_pattern
from .model import FQDNSelector, PortRule
from .selector import EndpointSelector, parse_selector

MAX_PORT_NAME = 15  # IANA service names are at most 15 characters
PORT_PROTOCOLS = ("TCP", "UDP", "SCTP", "ANY")
_PORT_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


# Why a field cilia recognises is rejected (shown in the error).
UNSUPPORTED_HINTS: dict[str, str] = {
    "rules": "L7 rules; cilia enforces L3/L4 and egress DNS rules only",
    "http": "HTTP rules need an HTTP proxy; cilia enforces DNS rules only",
    "kafka": "Kafka rules need a Kafka proxy; cilia enforces DNS rules only",
    "l7proto": "generic L7 parsers; cilia enforces DNS rules only",
    "l7": "generic L7 rules; cilia enforces DNS rules only",
    "serverNames": "TLS SNI matching needs the L7 proxy",
    "listener": "L7 listeners need the L7 proxy",
    "originatingTLS": "TLS interception needs the L7 proxy",
    "terminatingTLS": "TLS interception needs the L7 proxy",
    "toServices": "service-based peers",
    "toGroups": "cloud-provider groups",
    "fromGroups": "cloud-provider groups",
    "fromRequires": "deprecated requirement selectors",
    "toRequires": "deprecated requirement selectors",
    "fromNodes": "node selectors",
    "toNodes": "node selectors",
    "nodeSelector": "host policies",
    "icmps": "ICMP type rules",
    "authentication": "mutual authentication",
    "labels": "rule labels",
    "toFQDNs": "DNS names in deny rules",
    "cidrGroupRef": "CiliumCIDRGroup references",
    "cidrGroupSelector": "CiliumCIDRGroup selectors",
}


@dataclass(frozen=True)
class Ctx:
    """The object being parsed, for error messages."""

    kind: str
    namespace: str
    name: str

    def fail(self, path: str, reason: str) -> NoReturn:
        """Raise a validation error for the field at ``path``."""
        raise PolicyValidationError(reason, path, self.kind, self.namespace, self.name)

    def unsupported(self, path: str, what: str, hint: str = "") -> NoReturn:
        """Raise an :class:`UnsupportedFieldError` for the field at ``path``."""
        reason = f"{what} is not supported by cilia" + (f" ({hint})" if hint else "")
        raise UnsupportedFieldError(reason, path, self.kind, self.namespace, self.name)

    def mapping(self, doc: Any, path: str) -> dict[str, Any]:
        """``doc`` itself, if it is a mapping."""
        if not isinstance(doc, dict):
            self.fail(path, f"must be a mapping, got {type(doc).__name__}")
        return doc

    def listing(self, doc: Any, path: str) -> list[Any]:
        """``doc`` itself if it is a list; ``[]`` if absent."""
        if doc is None:
            return []
        if not isinstance(doc, list):
            self.fail(path, f"must be a list, got {type(doc).__name__}")
        return doc

    def check_fields(self, doc: dict[str, Any], path: str, known: Iterable[str],
                     unsupported: Iterable[str] = ()) -> None:
        """Reject fields cilia does not implement (named) and fields nobody knows."""
        unsupported = set(unsupported)
        known = set(known)
        for key in doc:
            if key in unsupported:
                self.unsupported(f"{path}.{key}", f"field {key!r}", UNSUPPORTED_HINTS.get(key, ""))
            if key not in known:
                self.fail(f"{path}.{key}", f"unknown field {key!r}")

    def selector(self, doc: Any, path: str, default_source: str = SOURCE_ANY) -> EndpointSelector:
        """Parse a label selector, reporting errors against this object."""
        try:
            return parse_selector(doc, path, default_source)
        except SelectorError as exc:
            self.fail(exc.path or path, exc.reason)

    def cidr(self, prefix: Any, excepts: Iterable[Any], path: str) -> CIDRRule:
        """Validate a CIDR rule, reporting errors against this object."""
        try:
            return make_cidr_rule(prefix, excepts)
        except CIDRError as exc:
            self.fail(path, str(exc))


def parse_port(ctx: Ctx, item: Any, path: str, default_proto: str) -> PortRule:
    """Parse one ``{port, endPort, protocol}`` entry (Cilium and Kubernetes share the shape)."""
    item = ctx.mapping(item, path)
    ctx.check_fields(item, path, ("port", "endPort", "protocol"))
    proto_name = item.get("protocol", default_proto)
    if proto_name not in PORT_PROTOCOLS:
        ctx.fail(f"{path}.protocol",
                 f"unknown protocol {proto_name!r} (expected one of {', '.join(PORT_PROTOCOLS)})")
    proto = PROTO_BY_NAME[proto_name] if proto_name != "ANY" else ANY_PROTO
    raw = item.get("port", 0)
    name = ""
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        ctx.fail(f"{path}.port", f"port must be a number or a port name, got {raw!r}")
    if isinstance(raw, str) and not raw.isdigit():
        if (len(raw) > MAX_PORT_NAME or not _PORT_NAME_RE.fullmatch(raw) or "--" in raw
                or not re.search("[a-z]", raw)):
            ctx.fail(f"{path}.port", f"invalid port name {raw!r} (an IANA service name: "
                                     f"lowercase letters, digits, '-', at most 15 characters)")
        name, port = raw, 0
    else:
        port = int(raw)
        if not 0 <= port <= MAX_PORT:
            ctx.fail(f"{path}.port", f"port {port} out of range 0-{MAX_PORT}")
    end = item.get("endPort")
    if end is None:
        return PortRule(proto, port, port, name)
    if isinstance(end, bool) or not isinstance(end, int):
        ctx.fail(f"{path}.endPort", f"endPort must be a number, got {end!r}")
    if name or port == 0:
        ctx.fail(f"{path}.endPort", "endPort needs a numeric, non-zero port")
    if not port <= end <= MAX_PORT:
        ctx.fail(f"{path}.endPort", f"endPort {end} must be between port {port} and {MAX_PORT}")
    return PortRule(proto, port, end, name)


def _name_or_pattern(ctx: Ctx, item: Any, path: str) -> NameMatcher:
    """A ``{matchName}`` or ``{matchPattern}`` item (exactly one), compiled."""
    item = ctx.mapping(item, path)
    ctx.check_fields(item, path, ("matchName", "matchPattern"))
    name, pattern = item.get("matchName"), item.get("matchPattern")
    if (name is None) == (pattern is None):
        ctx.fail(path, "needs exactly one of matchName or matchPattern")
    field, value, compile_ = (("matchName", name, match_name) if name is not None
                              else ("matchPattern", pattern, match_pattern))
    if not isinstance(value, str):
        ctx.fail(f"{path}.{field}", f"must be a string, got {type(value).__name__}")
    try:
        return compile_(value)
    except ValueError as exc:
        ctx.fail(f"{path}.{field}", str(exc))


def parse_fqdn(ctx: Ctx, item: Any, path: str) -> FQDNSelector:
    """Validate a ``toFQDNs`` entry (exactly one of matchName / matchPattern)."""
    matcher = _name_or_pattern(ctx, item, path)
    return (FQDNSelector(match_pattern=matcher.text) if matcher.is_pattern
            else FQDNSelector(match_name=matcher.text))


def parse_dns_rule(ctx: Ctx, item: Any, path: str) -> str:
    """Validate a ``rules.dns`` entry (exactly one of matchName / matchPattern); return its
    normalized text (:func:`~services.policy.fqdnmatch.dns_matcher` rebuilds the matcher)."""
    return _name_or_pattern(ctx, item, path).text


def parse_metadata(doc: dict[str, Any], kind: str, namespaced: bool,
                   default_namespace: str) -> Ctx:
    """Read ``metadata.name``/``namespace`` and return the context for errors."""
    raw_meta = doc.get("metadata")
    meta = raw_meta if isinstance(raw_meta, dict) else {}
    name = meta.get("name")
    namespace = meta.get("namespace")
    ctx = Ctx(kind, namespace if isinstance(namespace, str) else "",
              name if isinstance(name, str) else "")
    if not isinstance(raw_meta, dict):
        ctx.fail("metadata", "metadata with a name is required")
    if not isinstance(name, str) or not name:
        ctx.fail("metadata.name", "a non-empty name is required")
    if not namespaced:
        ctx = Ctx(kind, "", ctx.name)
        if namespace is not None:
            ctx.fail("metadata.namespace", f"{kind} is cluster-scoped and takes no namespace")
        return ctx
    if namespace is None:
        namespace = default_namespace
    if not isinstance(namespace, str) or not namespace:
        ctx.fail("metadata.namespace", "namespace must be a non-empty string")
    return Ctx(kind, namespace, name)
