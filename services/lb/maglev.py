"""Maglev consistent hashing (Eisenbud et al., NSDI 2016), as Cilium builds its tables. Pure.

Every backend gets a permutation of the table's ``M`` slots from two hashes of its stable name
(``offset = h1 % M``, ``skip = h2 % (M - 1) + 1``, slot ``j`` of the permutation is
``(offset + j * skip) % M``); backends then take turns claiming the next free slot of their
permutation until the table is full. ``M`` must be prime so that every permutation visits every
slot. Removing one of ``N`` backends moves only about ``1/N`` of the slots (plus a little
churn), which is what keeps flows on their backend when the set changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from services.lb.errors import MaglevError

DEFAULT_TABLE_SIZE = 16381   # Cilium's default maglev.tableSize (a prime)
MIN_TABLE_SIZE = 3
HASH_SEED = b"cilia-maglev-v1"   # fixed: every agent must build the same table
_HALF = 8                    # bytes of each of the two 64-bit hashes


def is_prime(n: int) -> bool:
    """True if ``n`` is a prime number."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def offset_skip(name: str, size: int) -> tuple[int, int]:
    """The permutation parameters of one backend (Cilium: ``getOffsetAndSkip``)."""
    digest = hashlib.blake2b(name.encode(), digest_size=2 * _HALF, key=HASH_SEED).digest()
    h1 = int.from_bytes(digest[:_HALF], "little")
    h2 = int.from_bytes(digest[_HALF:], "little")
    return h1 % size, h2 % (size - 1) + 1


def build_table(backends: Sequence[tuple[str, int]], size: int = DEFAULT_TABLE_SIZE,
                ) -> list[int]:
    """The Maglev lookup table for a backend set.

    Args:
        backends: ``(stable name, backend id)`` pairs; the name (e.g. ``10.0.1.5:80/TCP``)
            seeds the permutation, so the table depends on the set, not on its order.
        size: the table size ``M``, a prime larger than the number of backends.

    Returns:
        ``M`` backend ids; slot ``hash(flow) % M`` names a flow's backend. Empty for no
        backends.

    Raises:
        MaglevError: ``size`` is not a prime, or too small for the backends.
    """
    if not is_prime(size) or size < MIN_TABLE_SIZE:
        raise MaglevError(f"maglev table size {size} must be a prime >= {MIN_TABLE_SIZE}")
    if not backends:
        return []
    ordered = sorted(backends)
    if len({name for name, _ in ordered}) != len(ordered):
        raise MaglevError("maglev backends must have distinct names")
    if len(ordered) > size:
        raise MaglevError(f"{len(ordered)} backends do not fit a maglev table of {size}")
    params = [offset_skip(name, size) for name, _ in ordered]
    ids = [bid for _, bid in ordered]
    # cur[i] is backend i's next candidate, offset + j * skip (mod size) for its j-th turn;
    # stepping by addition keeps the hot loop free of multiplications and modulos.
    cur = [offset for offset, _ in params]
    skips = [skip for _, skip in params]
    table = [-1] * size
    filled = 0
    count = len(ids)
    while True:
        for i in range(count):
            slot, skip = cur[i], skips[i]
            while table[slot] >= 0:
                slot += skip
                if slot >= size:
                    slot -= size
            table[slot] = ids[i]
            slot += skip
            cur[i] = slot - size if slot >= size else slot
            filled += 1
            if filled == size:
                return table


def remapped_fraction(before: Sequence[int], after: Sequence[int]) -> float:
    """The fraction of slots whose backend differs between two tables of one size."""
    if len(before) != len(after):
        raise MaglevError(f"tables differ in size ({len(before)} vs {len(after)})")
    if not before:
        return 0.0
    return sum(1 for a, b in zip(before, after, strict=True) if a != b) / len(before)
