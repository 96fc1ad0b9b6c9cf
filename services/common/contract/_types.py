"""Value types the event schemas share: names, addresses, identities, ports (msgspec).

Strings with a syntax are ``str`` subclasses that :func:`dec_hook` checks while msgspec decodes
or converts a payload, so an error names the field (msgspec adds the path, ``$.rules[0].name``)
and says what is wrong in words rather than as a regular expression. Numbers use msgspec's
``Meta`` bounds; checks that span fields live in each struct's ``__post_init__``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from msgspec import Meta

from services.common.identities import LOCAL_IDENTITY_FLAG, MAX_CLUSTER_ID, MIN_CLUSTER_ID
from services.common.labels import KNOWN_SOURCES
from services.common.policytypes import MAX_PORT

U8_MAX = (1 << 8) - 1
U16_MAX = (1 << 16) - 1
U32_MAX = (1 << 32) - 1
I64_MAX = (1 << 63) - 1   # msgspec bounds fit an int64
MAX_DNS_LABEL = 63
MAX_DNS_SUBDOMAIN = 253
MAX_PORT_NAME = 15              # IANA service names
MAX_LABEL_VALUE = 253           # identity label values (a service account name may be 253)
MAX_LABEL_KEY = 317             # DNS prefix (253) + "/" + name (63)
MAX_FQDN = 255                  # a DNS name or pattern
SELECTOR_ID_HEX = 16            # services.policy.selector.SELECTOR_ID_HEX
MAX_RESERVED_ID = MIN_CLUSTER_ID - 1          # reserved identities are 1..255
MAX_LOCAL_ID = 2 * LOCAL_IDENTITY_FLAG - 1    # CIDR identities: the flag plus 24 bits

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_SELECTOR_ID = re.compile(rf"^[0-9a-f]{{{SELECTOR_ID_HEX}}}$")
_FQDN = re.compile(r"^([-a-zA-Z0-9_*]+(\.[-a-zA-Z0-9_*]+)*\.?|\*)$")
_TOKEN_SAFE = re.compile(r"^[^\s.*>]+$")   # one NATS subject token
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"^{_OCTET}(\.{_OCTET}){{3}}$")
_PREFIX_LEN = re.compile(r"^(3[0-2]|[12]?[0-9])$")


if TYPE_CHECKING:
    # For the type checker each checked string is a plain ``str``: a producer that builds a
    # typed payload passes ordinary strings, and the codec checks them when it encodes.
    DnsLabel = str
    Namespace = str
    DnsSubdomain = str
    OptionalName = str
    PodRef = str
    IPv4 = str
    OptionalIPv4 = str
    Prefix = str
    PortName = str
    LabelText = str
    SourcedKey = str
    LabelValue = str
    SelectorId = str
    Fqdn = str
    Token = str
else:
    class DnsLabel(str):
        """A Kubernetes DNS label (namespaces, container and Service names)."""

    class Namespace(str):
        """A namespace: a DNS label, or "" for a cluster-scoped object."""

    class DnsSubdomain(str):
        """A Kubernetes object name (DNS subdomain)."""

    class OptionalName(str):
        """An object name, or ""."""

    class PodRef(str):
        """``namespace/name`` of a pod, or ""."""

    class IPv4(str):
        """A dotted-quad IPv4 address."""

    class OptionalIPv4(str):
        """An IPv4 address, or "" for none."""

    class Prefix(str):
        """An IPv4 or IPv6 prefix with no host bits set (``10.0.0.0/8``)."""

    class PortName(str):
        """A named port (IANA service name), or "" for none."""

    class LabelText(str):
        """A label as identities carry it: ``source:key=value`` (or ``reserved:name``)."""

    class SourcedKey(str):
        """A selector key with its source: ``k8s:app``."""

    class LabelValue(str):
        """A Kubernetes label value."""

    class SelectorId(str):
        """A selector id: hex digits of SHA-256 over the selector's canonical form."""

    class Fqdn(str):
        """A DNS name or ``toFQDNs`` pattern."""

    class Token(str):
        """Text usable as one subject token (no spaces, dots or wildcards)."""


def _text(obj: Any, what: str) -> str:
    if not isinstance(obj, str):
        raise TypeError(f"expected {what}, got {type(obj).__name__}")
    return obj


def _dns_label(obj: Any) -> str:
    text = _text(obj, "a DNS label")
    if len(text) > MAX_DNS_LABEL or not _DNS_LABEL.fullmatch(text):
        raise ValueError(f"{text[:80]!r} is not a valid DNS label")
    return text


def _namespace(obj: Any) -> str:
    text = _text(obj, "a namespace")
    return text if text == "" else _dns_label(text)


def _dns_subdomain(obj: Any) -> str:
    text = _text(obj, "a name")
    if len(text) > MAX_DNS_SUBDOMAIN or not _DNS_SUBDOMAIN.fullmatch(text):
        raise ValueError(f"{text[:80]!r} is not a valid object name (DNS subdomain)")
    return text


def _optional_name(obj: Any) -> str:
    text = _text(obj, "a name")
    return text if text == "" else _dns_subdomain(text)


def _pod_ref(obj: Any) -> str:
    text = _text(obj, "namespace/name")
    if text == "":
        return text
    ns, sep, name = text.partition("/")
    if not sep:
        raise ValueError(f"{text[:80]!r} is not namespace/name")
    _dns_label(ns)
    _dns_subdomain(name)
    return text


def check_ipv4(text: str) -> None:
    """Raise ValueError unless ``text`` is a dotted-quad IPv4 address (as
    ``ipaddress.IPv4Address`` reads it: no leading zeros; a regular expression, as that
    module costs more than the rest of a payload's checks)."""
    if not _IPV4.fullmatch(text):
        raise ValueError(f"{text[:80]!r} is not an IPv4 address")


def _ipv4(obj: Any) -> str:
    text = _text(obj, "an IPv4 address")
    check_ipv4(text)
    return text


def _optional_ipv4(obj: Any) -> str:
    text = _text(obj, "an IPv4 address")
    if text:
        check_ipv4(text)
    return text


def _prefix(obj: Any) -> str:
    text = _text(obj, "an IP prefix")
    addr, slash, length = text.partition("/")
    if not slash:
        raise ValueError(f"{text[:80]!r} is not an IP prefix (address/length)")
    if _IPV4.fullmatch(addr) and _PREFIX_LEN.fullmatch(length):    # the common case, fast
        value = int.from_bytes(bytes(int(o) for o in addr.split(".")), "big")
        if value & ((1 << (32 - int(length))) - 1) == 0:
            return text
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{text[:80]!r} is not an IP prefix: {exc}") from None
    return text


def _port_name(obj: Any) -> str:
    text = _text(obj, "a port name")
    if text and (len(text) > MAX_PORT_NAME or not _PORT_NAME.fullmatch(text) or text.isdigit()):
        raise ValueError(f"{text[:80]!r} is not a valid port name")
    return text


def check_label_key(key: str) -> None:
    """Raise ValueError unless ``key`` is a qualified label key."""
    if not key or len(key) > MAX_LABEL_KEY or not _LABEL_KEY.fullmatch(key):
        raise ValueError(f"label key {key[:80]!r} is not valid")


def _label_value(obj: Any) -> str:
    text = _text(obj, "a label value")
    if len(text) > MAX_LABEL_VALUE or not _LABEL_VALUE.fullmatch(text):
        raise ValueError(f"label value {text[:80]!r} is not valid")
    return text


def _label_text(obj: Any) -> str:
    text = _text(obj, "a label (source:key=value)")
    key_part, _, value = text.partition("=")
    source, sep, key = key_part.partition(":")
    if not sep or source not in KNOWN_SOURCES:
        raise ValueError(f"label {text[:80]!r} is not source:key=value with a known source")
    check_label_key(key)
    _label_value(value)
    return text


def _sourced_key(obj: Any) -> str:
    text = _text(obj, "a label key (source:key)")
    source, sep, key = text.partition(":")
    if not sep or source not in KNOWN_SOURCES:
        raise ValueError(f"key {text[:80]!r} is not source:key with a known source")
    check_label_key(key)
    return text


def _selector_id(obj: Any) -> str:
    text = _text(obj, "a selector id")
    if not _SELECTOR_ID.fullmatch(text):
        raise ValueError(f"{text[:80]!r} is not a selector id ({SELECTOR_ID_HEX} hex digits)")
    return text


def _fqdn(obj: Any) -> str:
    text = _text(obj, "a DNS name")
    if len(text) > MAX_FQDN or not _FQDN.fullmatch(text):
        raise ValueError(f"{text[:80]!r} is not a DNS name or pattern")
    return text


def _token(obj: Any) -> str:
    text = _text(obj, "a name")
    if len(text) > MAX_DNS_SUBDOMAIN or not _TOKEN_SAFE.fullmatch(text):
        raise ValueError(f"{text[:80]!r} is not a valid name")
    return text


_CHECKS: dict[type, Callable[[Any], str]] = {
    DnsLabel: _dns_label, Namespace: _namespace, DnsSubdomain: _dns_subdomain,
    OptionalName: _optional_name, PodRef: _pod_ref, IPv4: _ipv4, OptionalIPv4: _optional_ipv4,
    Prefix: _prefix, PortName: _port_name, LabelText: _label_text, SourcedKey: _sourced_key,
    LabelValue: _label_value, SelectorId: _selector_id, Fqdn: _fqdn, Token: _token,
}


# Strings already checked, per type: the same names, selector ids and addresses recur in
# every message (a subject's rules repeat in each of its policy.rules messages), and a dict
# lookup costs a fraction of a check.
_CHECKED: dict[type, dict[str, str]] = {tp: {} for tp in _CHECKS}
MAX_CHECKED = 1 << 16       # strings remembered per type (then the memory starts over)


def dec_hook(tp: type, obj: Any) -> Any:
    """msgspec's hook for the checked string types above."""
    known = _CHECKED.get(tp)
    if known is None:
        raise NotImplementedError(f"no decoder for {tp!r}")
    if type(obj) is str:
        hit = known.get(obj)
        if hit is not None:
            return hit
    value = tp(_CHECKS[tp](obj))
    if len(known) >= MAX_CHECKED:
        known.clear()
    known[obj] = value
    return value


# -- numbers -------------------------------------------------------------------------------

Revision = Annotated[int, Meta(ge=0)]
Port = Annotated[int, Meta(ge=1, le=MAX_PORT)]
PortOrZero = Annotated[int, Meta(ge=0, le=MAX_PORT)]
Proto = Annotated[int, Meta(ge=0, le=U8_MAX)]
U16 = Annotated[int, Meta(ge=0, le=U16_MAX)]
U32 = Annotated[int, Meta(ge=0, le=U32_MAX)]
U64 = Annotated[int, Meta(ge=0, le=I64_MAX)]
# Any identity number; :func:`check_identity` refuses the unused gaps.
IdentityNum = Annotated[int, Meta(ge=1, le=MAX_LOCAL_ID)]
# An identity the identity service allocates or reserves (never a CIDR identity).
ClusterIdentity = Annotated[int, Meta(ge=1, le=MAX_CLUSTER_ID)]
Text = str   # free text (bounded by the bus's message size only)
Seconds = Annotated[float, Meta(ge=0)]


def identity_ok(num: int) -> bool:
    """Reserved (1..255), cluster (256..65535) or node-local CIDR (flag + 1..2^24-1)."""
    return 1 <= num <= MAX_CLUSTER_ID or LOCAL_IDENTITY_FLAG < num <= MAX_LOCAL_ID


def check_identity(num: int, field: str) -> None:
    """Raise ValueError naming ``field`` unless ``num`` is an identity number."""
    if not identity_ok(num):
        raise ValueError(f"{field}: {num} is not an identity number (1-{MAX_CLUSTER_ID} or "
                         f"{LOCAL_IDENTITY_FLAG + 1}-{MAX_LOCAL_ID})")


def check_identities(nums: Iterable[int], field: str) -> None:
    for num in nums:
        check_identity(num, field)


class Payload(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Base of every event payload: unknown fields are an error (the version says what a
    payload holds).

    A producer may build the payload itself (a misspelt or missing field fails at once; the
    values are checked when the codec encodes it). Encoded, an optional field left at its
    default is absent, as in a producer's dict that leaves the key out.
    """

    def subjects(self) -> tuple[str, ...]:
        """The subjects this payload may be published on (empty: any, for replies)."""
        return ()
