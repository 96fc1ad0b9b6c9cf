"""The selector a ``toFQDNs`` name or pattern becomes (pure).

An FQDN selector is an :class:`~services.policy.selector.EndpointSelector` with one
requirement, ``fqdn:<hex> In ("")``, where ``<hex>`` is the first :data:`FQDN_KEY_HEX` hex
digits of SHA-256 over the normalized name or pattern. Its id is thus a pure function of the
text: the policy service (which makes its members the CIDR identities of the addresses learned
for the names the text matches) and ``cilia policy selectors`` (which shows the text back)
agree on it without coordination.
"""

from __future__ import annotations

import hashlib

from .fqdnmatch import normalize
from .selector import OP_IN, EndpointSelector, Requirement

FQDN_SOURCE = "fqdn"   # the label source of FQDN selectors' one requirement
FQDN_KEY_HEX = 16      # hex digits of the SHA-256 of the pattern kept as the requirement's key


def fqdn_selector(text: str) -> EndpointSelector:
    """The selector of one ``matchName`` or ``matchPattern`` (any case, trailing dot or not)."""
    key = hashlib.sha256(normalize(text).encode()).hexdigest()[:FQDN_KEY_HEX]
    return EndpointSelector((Requirement(FQDN_SOURCE, key, OP_IN, ("",)),))
