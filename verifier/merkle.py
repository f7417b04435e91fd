"""RFC 9162 §2.1 Merkle trees: hashing, proof verification, and proof construction.

Verification (``root_from_inclusion_proof``, ``verify_inclusion``, ``verify_consistency``)
is pure arithmetic on bytes: compute the root a proof leads to, then compare.

Construction (``tree_root``, ``inclusion_proof``, ``consistency_proof``) reads stored hashes
of complete subtrees through a ``HashReader``. A node is named by ``(level, index)``: the
complete subtree over leaves ``[index * 2**level, (index + 1) * 2**level)``; level 0 is the
leaf hash. Each proof first computes the set of nodes it needs (a pure function, at most
about 2 * log2(n) nodes), reads them in one ``read_nodes`` call, then folds them.
docs/LOG.md describes the scheme with a worked example.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

from lineage.verifier.errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "Coord",
    "HashReader",
    "MemoryTree",
    "consistency_proof",
    "consistency_proof_coords",
    "consistency_proof_size",
    "inclusion_proof",
    "inclusion_proof_coords",
    "leaf_hash",
    "node_hash",
    "nodes_completed_by_append",
    "root_from_inclusion_proof",
    "tree_root",
    "tree_root_coords",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 9162 §2.1.1: MTH({}) = HASH()
MAX_TREE_SIZE = 2**64 - 1  # RFC 9162 carries tree sizes and leaf indices as uint64

Coord = tuple[int, int]  # (level, index): leaves [index * 2**level, (index + 1) * 2**level)


# --- Hashing (RFC 9162 §2.1.1) -----------------------------------------------------------
def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 §2.1.1: MTH({d(0)}) = SHA-256(0x00 || d(0))."""
    if not isinstance(data, bytes):
        raise TypeError(f"leaf data must be bytes, not {type(data).__name__}")
    # 1 byte 0x00 (leaf prefix) || the leaf bytes
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))."""
    _check_hash(left, "left child hash")
    _check_hash(right, "right child hash")
    # 1 byte 0x01 (node prefix) || 32 bytes left child || 32 bytes right child
    return hashlib.sha256(b"\x01" + left + right).digest()


def _check_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        size = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise ProofError(f"{what} must be {HASH_SIZE} bytes, got {size}")
    return value


def _check_size(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProofError(f"{what} must be an integer, not {type(value).__name__}")
    if not 0 <= value <= MAX_TREE_SIZE:
        raise ProofError(f"{what} {value} is outside [0, 2**64 - 1]")
    return value


def _check_proof(proof: object, length: int, what: str) -> list[bytes]:
    if isinstance(proof, bytes | str) or not isinstance(proof, Sequence):
        raise ProofError(f"{what} must be a sequence of hashes, not {type(proof).__name__}")
    if len(proof) != length:
        raise ProofError(f"{what} has {len(proof)} hashes, expected {length}")
    return [_check_hash(h, f"{what} hash {i}") for i, h in enumerate(proof)]


# --- The shape of proofs: leaf ranges and their complete subtrees -------------------------
def _split(n: int) -> int:
    """RFC 9162 §2.1.1: k, the largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges [lo, hi) whose MTHs make PATH(index, D[0:size]), leaf end first (§2.1.3.1).

    PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])      for m < k
                  = PATH(m - k, D[k:n]) : MTH(D[0:k])  for m >= k
    """
    lo, hi, ranges = 0, size, []
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    ranges.reverse()
    return ranges


def _consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """Leaf ranges whose MTHs make PROOF(first, D[second]) = SUBPROOF(m, D[n], true) (§2.1.4.1).

    SUBPROOF(m, D[m], true) = {};  SUBPROOF(m, D[m], false) = {MTH(D[m])}
    SUBPROOF(m, D[n], b) = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])          for m <= k
                         = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])  for m > k
    """
    lo, hi, whole, ranges = 0, second, True, []
    while first != hi:
        k = _split(hi - lo)
        if first - lo <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
            whole = False
    if not whole:
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


def _range_coords(lo: int, hi: int) -> list[Coord]:
    """The complete subtrees of D[lo:hi], left to right: one per set bit of hi - lo, as the
    left child of an incomplete tree is its largest complete subtree (§2.1.1). Every range a
    proof names starts at a multiple of its largest piece, so each piece is aligned."""
    coords = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        coords.append((level, lo >> level))
        lo += 1 << level
    return coords


def _fold(pieces: list[bytes]) -> bytes:
    """MTH of a range from its complete pieces, folded right to left as §2.1.1 nests them."""
    root = pieces[-1]
    for left in reversed(pieces[:-1]):
        root = node_hash(left, root)
    return root


def _unique_coords(ranges: list[tuple[int, int]]) -> list[Coord]:
    return list(dict.fromkeys(c for lo, hi in ranges for c in _range_coords(lo, hi)))


def _check_inclusion_args(leaf_index: int, tree_size: int) -> None:
    if _check_size(leaf_index, "leaf index") >= _check_size(tree_size, "tree size"):
        raise ProofError(f"leaf index {leaf_index} is not in a tree of size {tree_size}")


def _check_consistency_args(first: int, second: int) -> None:
    _check_size(second, "second tree size")
    if _check_size(first, "first tree size") == 0:
        # RFC 9162 §2.1.4 defines PROOF(m, D[n]) for 0 < m only: every tree extends the empty
        # tree, so a "proof" from size 0 would check nothing while reading as a check.
        raise ProofError("first tree size must be at least 1 (nothing to prove from size 0)")
    if first > second:
        raise ProofError(f"first tree size {first} is larger than second tree size {second}")


def tree_root_coords(tree_size: int) -> list[Coord]:
    """Nodes whose hashes fold into MTH(D[0:tree_size]) (§2.1.1): one per set bit of the size."""
    return _range_coords(0, _check_size(tree_size, "tree size"))


def inclusion_proof_coords(leaf_index: int, tree_size: int) -> list[Coord]:
    """Nodes to read for PATH(leaf_index, D[0:tree_size]) (RFC 9162 §2.1.3.1)."""
    _check_inclusion_args(leaf_index, tree_size)
    return _unique_coords(_inclusion_ranges(leaf_index, tree_size))


def consistency_proof_size(first: int, second: int) -> int:
    """How many hashes PROOF(first, D[second]) has: 0 when ``first == second``."""
    _check_consistency_args(first, second)
    return len(_consistency_ranges(first, second))


def consistency_proof_coords(first: int, second: int) -> list[Coord]:
    """Nodes to read for PROOF(first, D[0:second]) (RFC 9162 §2.1.4.1)."""
    _check_consistency_args(first, second)
    return _unique_coords(_consistency_ranges(first, second))


# --- Verification (RFC 9162 §2.1.3.2, §2.1.4.2) -------------------------------------------
def root_from_inclusion_proof(
    leaf_index: int, tree_size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """RFC 9162 §2.1.3.2: the root that ``proof`` leads to from ``leaf_hash``; no comparison."""
    _check_inclusion_args(leaf_index, tree_size)
    _check_hash(leaf_hash, "leaf hash")
    path = _check_proof(proof, len(_inclusion_ranges(leaf_index, tree_size)), "inclusion proof")
    fn, sn, r = leaf_index, tree_size - 1, leaf_hash  # steps 2 and 3
    for p in path:  # step 4
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:  # step 5
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(
    leaf_index: int, tree_size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2: raise ProofError unless ``proof`` leads from the leaf to ``root``."""
    _check_hash(root, "root")
    computed = root_from_inclusion_proof(leaf_index, tree_size, leaf_hash, proof)
    if computed != root:
        raise ProofError("inclusion proof does not lead to the root", root, computed)


def _roots_from_consistency_proof(
    first: int, second: int, first_root: bytes, path: list[bytes]
) -> tuple[bytes, bytes]:
    """RFC 9162 §2.1.4.2 steps 2 to 6: the (first, second) roots the proof leads to."""
    if first & (first - 1) == 0:  # step 2: first is a power of two
        path = [first_root, *path]
    fn, sn = first - 1, second - 1  # step 3
    while fn & 1:  # step 4
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:  # step 7, first part
        raise ProofError("consistency proof is too short")
    return fr, sr


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2: raise ProofError unless the tree of size ``second`` extends ``first``.

    Requires 0 < first <= second; equal sizes need an empty proof and equal roots.
    """
    _check_consistency_args(first, second)
    _check_hash(first_root, "first root")
    _check_hash(second_root, "second root")
    path = _check_proof(proof, len(_consistency_ranges(first, second)), "consistency proof")
    if first == second:
        if first_root != second_root:
            raise ProofError("equal tree sizes with different roots", first_root, second_root)
        return
    fr, sr = _roots_from_consistency_proof(first, second, first_root, path)
    if fr != first_root:
        raise ProofError("consistency proof does not lead to the first root", first_root, fr)
    if sr != second_root:
        raise ProofError("consistency proof does not lead to the second root", second_root, sr)


# --- Construction from stored complete subtrees --------------------------------------------
class HashReader(Protocol):
    """Stored complete-subtree hashes: one 32-byte hash per coordinate, in order, or raise.
    Each proof makes one call, so a database backend answers it with one query."""

    def read_nodes(self, coords: Sequence[Coord]) -> list[bytes]: ...


def _read(reader: HashReader, coords: list[Coord]) -> dict[Coord, bytes]:
    if not coords:
        return {}
    hashes = reader.read_nodes(coords)
    if len(hashes) != len(coords):
        raise ProofError(f"hash reader returned {len(hashes)} hashes for {len(coords)} nodes")
    return {c: _check_hash(h, f"stored node {c}") for c, h in zip(coords, hashes, strict=True)}


def _build(ranges: list[tuple[int, int]], reader: HashReader) -> list[bytes]:
    pieces = [_range_coords(lo, hi) for lo, hi in ranges]
    nodes = _read(reader, _unique_coords(ranges))
    return [_fold([nodes[c] for c in p]) for p in pieces]


def tree_root(tree_size: int, reader: HashReader) -> bytes:
    """RFC 9162 §2.1.1: MTH(D[0:tree_size]); EMPTY_ROOT for the empty tree."""
    if _check_size(tree_size, "tree size") == 0:
        return EMPTY_ROOT
    return _build([(0, tree_size)], reader)[0]


def inclusion_proof(leaf_index: int, tree_size: int, reader: HashReader) -> list[bytes]:
    """RFC 9162 §2.1.3.1: PATH(leaf_index, D[0:tree_size]), leaf end first."""
    _check_inclusion_args(leaf_index, tree_size)
    return _build(_inclusion_ranges(leaf_index, tree_size), reader)


def consistency_proof(first: int, second: int, reader: HashReader) -> list[bytes]:
    """RFC 9162 §2.1.4.1: PROOF(first, D[0:second]); empty when first == second."""
    _check_consistency_args(first, second)
    return _build(_consistency_ranges(first, second), reader)


def nodes_completed_by_append(
    index: int, leaf_hash: bytes, reader: HashReader
) -> list[tuple[Coord, bytes]]:
    """The complete subtrees that appending leaf ``index`` completes, lowest first.

    (0, index) is the leaf itself; for each k >= 1 with (index + 1) a multiple of 2**k,
    node (k, (index + 1) / 2**k - 1) = node_hash(its left child, the node just made).
    The left children are read through ``reader`` in one call.
    """
    if _check_size(index, "leaf index") == MAX_TREE_SIZE:
        raise ProofError("the tree is full")
    _check_hash(leaf_hash, "leaf hash")
    n = index + 1
    levels = (n & -n).bit_length() - 1  # trailing zero bits of n
    lefts = _read(reader, [(k, (n >> k) - 2) for k in range(levels)])
    nodes, h = [((0, index), leaf_hash)], leaf_hash
    for k in range(levels):
        h = node_hash(lefts[(k, (n >> k) - 2)], h)
        nodes.append(((k + 1, (n >> (k + 1)) - 1), h))
    return nodes


class MemoryTree:
    """An append-only tree in memory that keeps every complete-subtree hash (a HashReader)."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._nodes: dict[Coord, bytes] = {}
        self._size = 0
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        return self._size

    def read_nodes(self, coords: Sequence[Coord]) -> list[bytes]:
        try:
            return [self._nodes[c] for c in coords]
        except KeyError as e:
            raise ProofError(f"node {e.args[0]} is not in a tree of size {self._size}") from None

    def append(self, leaf_hash: bytes) -> int:
        """Add a leaf hash; returns its index."""
        index = self._size
        self._nodes.update(nodes_completed_by_append(index, leaf_hash, self))
        self._size += 1
        return index

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        return self.read_nodes([(0, index)])[0]

    def _upto(self, size: int | None) -> int:
        if size is None:
            return self._size
        if _check_size(size, "tree size") > self._size:
            raise ProofError(f"tree size {size} is beyond the tree's {self._size} leaves")
        return size

    def root(self, size: int | None = None) -> bytes:
        return tree_root(self._upto(size), self)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(index, self._upto(size), self)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        return consistency_proof(first, self._upto(second), self)
