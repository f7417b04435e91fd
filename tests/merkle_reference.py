"""A deliberately naive copy of the RFC 9162 §2.1 definitions, to check verifier/merkle.py.

Each function is the RFC's recursive definition written out on a tuple of leaf inputs
D[n] = (d(0), ..., d(n-1)), with its own hashing: nothing is imported from the code under
test. The only concession to speed is that MTH is memoised (on the tuple of inputs), so
the exhaustive tests can call it for every subtree of every tree size; that changes no
result.
"""

from __future__ import annotations

import hashlib
from functools import cache

__all__ = ["mth", "path", "proof", "subproof"]


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def mth(d: tuple[bytes, ...]) -> bytes:
    """§2.1.1 MTH(D[n])."""
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(n)
    return hashlib.sha256(b"\x01" + mth(d[0:k]) + mth(d[k:n])).digest()


def path(m: int, d: tuple[bytes, ...]) -> list[bytes]:
    """§2.1.3.1 PATH(m, D[n]): the inclusion proof for leaf m, 0 <= m < n."""
    n = len(d)
    assert 0 <= m < n
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*path(m, d[0:k]), mth(d[k:n])]
    return [*path(m - k, d[k:n]), mth(d[0:k])]


def proof(m: int, d: tuple[bytes, ...]) -> list[bytes]:
    """§2.1.4.1 PROOF(m, D[n]) = SUBPROOF(m, D[n], true), 0 < m <= n."""
    assert 0 < m <= len(d)
    return subproof(m, d, True)


def subproof(m: int, d: tuple[bytes, ...], b: bool) -> list[bytes]:
    """§2.1.4.1 SUBPROOF(m, D[n], b)."""
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = _k(n)
    if m <= k:
        return [*subproof(m, d[0:k], b), mth(d[k:n])]
    return [*subproof(m - k, d[k:n], False), mth(d[0:k])]
