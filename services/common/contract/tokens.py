"""Subject tokens: how names become NATS subject tokens, and how subjects match filters.

Object names become subject tokens; Kubernetes names may contain ``.`` (a NATS token
separator) but never ``_``, so ``.`` maps to ``_`` and back without ambiguity. A
cluster-scoped object's namespace token is :data:`CLUSTER_SCOPE`.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

CLUSTER_SCOPE = "_"   # namespace token of cluster-scoped objects
TOKEN_SEPARATOR = "."
ANY_TOKEN = "*"       # a filter token matching exactly one subject token
ANY_TAIL = ">"        # a final filter token matching one or more subject tokens


def token(name: str) -> str:
    """Encode a Kubernetes name as one subject token."""
    return name.replace(".", "_") if name else CLUSTER_SCOPE




def ip_token(prefix: str) -> str:
    """``10.0.0.1`` -> ``10-0-0-1``; ``10.0.0.0/8`` -> ``10-0-0-0_8``."""
    return prefix.replace(".", "-").replace("/", "_").replace(":", "x")


@lru_cache(maxsize=65536)
def subject_matches(subject: str, pattern: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` is one or more tokens."""
    sub, pat = subject.split(TOKEN_SEPARATOR), pattern.split(TOKEN_SEPARATOR)
    for i, tok in enumerate(pat):
        if tok == ANY_TAIL:
            return len(sub) > i
        if i >= len(sub) or (tok != ANY_TOKEN and tok != sub[i]):
            return False
    return len(sub) == len(pat)


def matches_any(subject: str, patterns: Iterable[str]) -> bool:
    """Whether ``subject`` matches one of the filters ``patterns``."""
    return any(subject_matches(subject, p) for p in patterns)
