"""Tests for verifier/merkle.py: RFC 9162 §2.1 hashing, proofs and their construction.

Three independent sources of truth: published RFC 6962 test vectors, the naive recursive
copy of the RFC in tests/merkle_reference.py, and the verification code (which shares no
proof-shape logic with the construction code beyond the expected proof length).
"""

from __future__ import annotations

import random
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lineage.verifier.errors import ProofError
from lineage.verifier.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MemoryTree,
    consistency_proof,
    consistency_proof_coords,
    inclusion_proof,
    inclusion_proof_coords,
    leaf_hash,
    node_hash,
    nodes_completed_by_append,
    root_from_inclusion_proof,
    tree_root,
    tree_root_coords,
    verify_consistency,
    verify_inclusion,
)
from tests import merkle_reference as ref
from tests.budget import examples

# --- Published test vectors ---------------------------------------------------------------
# From transparency-dev/merkle, proof/verify_test.go (commit 02194e9afb6c1d95b5381350007963
# aa70fff472), which carries them over from the Certificate Transparency C++/Go test code:
# the eight RFC 6962 test leaves, the roots of the trees of their first 1..8 leaves, and
# known proofs. In that file inclusion vectors name the leaf 1-based; here they are 0-based.

RFC6962_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
RFC6962_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
EMPTY_TREE_HASH = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
H_L0 = "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
H_L4 = "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"
H_23 = "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"
H_4567 = "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"
H_L7 = "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"
H_45 = "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"
H_L1 = "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"
H_L5 = "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"
H_0123 = RFC6962_ROOTS[3]
H_01 = RFC6962_ROOTS[1]
INCLUSION_VECTORS = [  # (leaf index, tree size, proof)
    (0, 1, []),
    (0, 8, [H_L1, H_23, H_4567]),
    (5, 8, [H_L4, H_L7, H_0123]),
    (2, 3, [H_01]),
    (1, 5, [H_L0, H_23, H_L4]),
]
CONSISTENCY_VECTORS = [  # (first, second, proof)
    (1, 1, []),
    (1, 8, [H_L1, H_23, H_4567]),
    (6, 8, [H_45, H_L7, H_0123]),
    (2, 5, [H_23, H_L4]),
    (6, 7, [H_45, H_L5, H_0123]),
]


def rfc6962_tree() -> MemoryTree:
    return MemoryTree(leaf_hash(d) for d in RFC6962_LEAVES)


def test_constants():
    assert HASH_SIZE == 32
    assert EMPTY_ROOT.hex() == EMPTY_TREE_HASH
    assert tree_root(0, MemoryTree()) == EMPTY_ROOT
    assert MemoryTree().root() == EMPTY_ROOT


def test_leaf_hash_of_the_empty_leaf():
    assert leaf_hash(b"").hex() == H_L0


@pytest.mark.parametrize("size", range(1, 9))
def test_rfc6962_roots(size):
    tree = rfc6962_tree()
    assert tree.root(size).hex() == RFC6962_ROOTS[size - 1]
    assert tree_root(size, tree).hex() == RFC6962_ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_rfc6962_inclusion_vectors(index, size, proof):
    tree = rfc6962_tree()
    assert [h.hex() for h in tree.inclusion_proof(index, size)] == proof
    root = bytes.fromhex(RFC6962_ROOTS[size - 1])
    verify_inclusion(index, size, tree.leaf(index), [bytes.fromhex(h) for h in proof], root)


@pytest.mark.parametrize(("first", "second", "proof"), CONSISTENCY_VECTORS)
def test_rfc6962_consistency_vectors(first, second, proof):
    tree = rfc6962_tree()
    assert [h.hex() for h in tree.consistency_proof(first, second)] == proof
    r1, r2 = (bytes.fromhex(RFC6962_ROOTS[s - 1]) for s in (first, second))
    verify_consistency(first, second, r1, r2, [bytes.fromhex(h) for h in proof])


# --- Exhaustive cross-check against the naive reference -----------------------------------

N_EXHAUSTIVE = 128
LEAVES = tuple(b"leaf %d" % i for i in range(N_EXHAUSTIVE))
TREE = MemoryTree(leaf_hash(d) for d in LEAVES)


@pytest.mark.parametrize("size", range(1, N_EXHAUSTIVE + 1))
def test_every_inclusion_proof_matches_reference_and_verifies(size):
    d = LEAVES[:size]
    root = TREE.root(size)
    assert root == ref.mth(d)
    for index in range(size):
        proof = TREE.inclusion_proof(index, size)
        assert proof == ref.path(index, d), (index, size)
        assert root_from_inclusion_proof(index, size, TREE.leaf(index), proof) == root
        verify_inclusion(index, size, TREE.leaf(index), proof, root)


@pytest.mark.parametrize("second", range(1, N_EXHAUSTIVE + 1))
def test_every_consistency_proof_matches_reference_and_verifies(second):
    d = LEAVES[:second]
    root2 = TREE.root(second)
    for first in range(1, second + 1):
        proof = TREE.consistency_proof(first, second)
        assert proof == ref.proof(first, d), (first, second)
        verify_consistency(first, second, TREE.root(first), root2, proof)


def test_nodes_stored_by_appends_are_exactly_the_complete_subtrees():
    """What a ledger persists (the output of nodes_completed_by_append, leaf by leaf) is
    every complete subtree and nothing else, and proofs built from it match the reference."""

    class DictReader(dict):
        def read_nodes(self, coords):
            return [self[c] for c in coords]

    stored = DictReader()
    for index, data in enumerate(LEAVES):
        stored.update(nodes_completed_by_append(index, leaf_hash(data), stored))
        size = index + 1
        complete = {(k, j) for k in range(8) for j in range(size >> k)}
        assert set(stored) == complete
    for (level, index), h in stored.items():
        assert h == ref.mth(LEAVES[index << level : (index + 1) << level])
    assert inclusion_proof(77, 100, stored) == ref.path(77, LEAVES[:100])
    assert consistency_proof(37, 100, stored) == ref.proof(37, LEAVES[:100])


# --- Mutations: every one must be rejected with ProofError --------------------------------

OTHER = bytes(range(32))


def inclusion_mutations(i, n, leaf, proof, root):
    """(description, arguments of verify_inclusion) for one valid proof."""
    m = [
        ("index - 1", (i - 1, n, leaf, proof, root)),
        ("index + 1", (i + 1, n, leaf, proof, root)),
        ("size * 2", (i, n * 2, leaf, proof, root)),
        ("wrong leaf", (i, n, leaf_hash(b"not a leaf"), proof, root)),
        ("empty root", (i, n, leaf, proof, EMPTY_ROOT)),
        ("other root", (i, n, leaf, proof, OTHER)),
        ("31-byte root", (i, n, leaf, proof, root[:31])),
        ("33-byte root", (i, n, leaf, proof, root + b"\0")),
        ("31-byte leaf", (i, n, leaf[:31], proof, root)),
        ("33-byte leaf", (i, n, leaf + b"\0", proof, root)),
        ("extended by zeros", (i, n, leaf, [*proof, bytes(32)], root)),
        ("extended by root", (i, n, leaf, [*proof, root], root)),
        ("preceded by root", (i, n, leaf, [root, *proof], root)),
    ]
    if n // 2 > i:
        m.append(("size // 2", (i, n // 2, leaf, proof, root)))
    if proof:
        m += [
            ("truncated", (i, n, leaf, proof[:-1], root)),
            ("first dropped", (i, n, leaf, proof[1:], root)),
            ("31-byte hash", (i, n, leaf, [proof[0][:31], *proof[1:]], root)),
            ("33-byte hash", (i, n, leaf, [*proof[:-1], proof[-1] + b"\0"], root)),
        ]
    if len(proof) > 1:
        m.append(("reversed", (i, n, leaf, proof[::-1], root)))
        for k in range(len(proof) - 1):
            swapped = [*proof[:k], proof[k + 1], proof[k], *proof[k + 2 :]]
            m.append((f"swapped {k} and {k + 1}", (i, n, leaf, swapped, root)))
    return m


def consistency_mutations(m, n, r1, r2, proof):
    """(description, arguments of verify_consistency) for one valid proof, m < n."""
    out = [
        ("first - 1", (m - 1, n, r1, r2, proof)),
        ("first + 1", (m + 1, n, r1, r2, proof)),
        ("second * 2", (m, n * 2, r1, r2, proof)),
        ("swapped sizes", (n, m, r1, r2, proof)),
        ("swapped roots", (m, n, r2, r1, proof)),
        ("other first root", (m, n, OTHER, r2, proof)),
        ("other second root", (m, n, r1, OTHER, proof)),
        ("31-byte first root", (m, n, r1[:31], r2, proof)),
        ("33-byte second root", (m, n, r1, r2 + b"\0", proof)),
        ("empty proof", (m, n, r1, r2, [])),
        ("truncated", (m, n, r1, r2, proof[:-1])),
        ("first dropped", (m, n, r1, r2, proof[1:])),
        ("extended by root", (m, n, r1, r2, [*proof, r2])),
        ("preceded by first root", (m, n, r1, r2, [r1, *proof])),
        ("31-byte hash", (m, n, r1, r2, [proof[0][:31], *proof[1:]])),
        ("33-byte hash", (m, n, r1, r2, [*proof[:-1], proof[-1] + b"\0"])),
    ]
    if len(proof) > 1:
        out.append(("reversed", (m, n, r1, r2, proof[::-1])))
        for k in range(len(proof) - 1):
            swapped = [*proof[:k], proof[k + 1], proof[k], *proof[k + 2 :]]
            out.append((f"swapped {k} and {k + 1}", (m, n, r1, r2, swapped)))
    return out


def assert_all_rejected(verify, mutations):
    accepted = []
    for desc, args in mutations:
        try:
            verify(*args)
        except ProofError:
            continue
        accepted.append(desc)
    assert not accepted, f"accepted: {accepted}"


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 16, 31, 64, 100, 127, 128])
def test_inclusion_mutations_rejected(size):
    root = TREE.root(size)
    for index in range(size):
        proof = TREE.inclusion_proof(index, size)
        leaf = TREE.leaf(index)
        verify_inclusion(index, size, leaf, proof, root)  # the unmutated proof holds
        assert_all_rejected(verify_inclusion, inclusion_mutations(index, size, leaf, proof, root))


@pytest.mark.parametrize("second", [2, 3, 4, 5, 7, 8, 9, 16, 31, 64, 100, 127, 128])
def test_consistency_mutations_rejected(second):
    r2 = TREE.root(second)
    for first in range(1, second):
        proof = TREE.consistency_proof(first, second)
        r1 = TREE.root(first)
        verify_consistency(first, second, r1, r2, proof)
        assert_all_rejected(verify_consistency, consistency_mutations(first, second, r1, r2, proof))


def flipped_bits(proof):
    for k, h in enumerate(proof):
        for bit in range(8 * HASH_SIZE):
            flipped = bytearray(h)
            flipped[bit // 8] ^= 1 << (bit % 8)
            yield f"proof[{k}] bit {bit}", [*proof[:k], bytes(flipped), *proof[k + 1 :]]


@pytest.mark.parametrize(("index", "size"), [(1, 5), (5, 8), (0, 127), (126, 127), (77, 100)])
def test_inclusion_every_flipped_bit_rejected(index, size):
    leaf, root = TREE.leaf(index), TREE.root(size)
    mutations = [
        (d, (index, size, leaf, p, root))
        for d, p in flipped_bits(TREE.inclusion_proof(index, size))
    ]
    assert len(mutations) >= 256
    assert_all_rejected(verify_inclusion, mutations)


@pytest.mark.parametrize(("first", "second"), [(2, 5), (6, 8), (1, 127), (64, 100), (99, 128)])
def test_consistency_every_flipped_bit_rejected(first, second):
    r1, r2 = TREE.root(first), TREE.root(second)
    proof = TREE.consistency_proof(first, second)
    mutations = [(d, (first, second, r1, r2, p)) for d, p in flipped_bits(proof)]
    assert_all_rejected(verify_consistency, mutations)


def test_root_mismatch_carries_both_roots():
    proof, leaf, root = TREE.inclusion_proof(3, 10), TREE.leaf(3), TREE.root(10)
    with pytest.raises(ProofError) as e:
        verify_inclusion(3, 10, leaf, proof, OTHER)
    assert (e.value.expected, e.value.computed) == (OTHER, root)
    with pytest.raises(ProofError) as e:
        verify_consistency(4, 10, TREE.root(4), OTHER, TREE.consistency_proof(4, 10))
    assert (e.value.expected, e.value.computed) == (OTHER, root)


def test_a_proof_binds_the_root_not_the_tree_size():
    """RFC 9162 proofs do not commit to the tree size: the proof for leaf 0 of 3 leaves,
    [h(l1), h(l2)], also fits leaf 0 of 4 leaves with h(l2) read as an inner node. It leads
    to the same root, which is what the proof binds; callers take size and root from one
    verified checkpoint. (Hence the mutations above use size * 2 and size // 2.)"""
    proof, root = TREE.inclusion_proof(0, 3), TREE.root(3)
    verify_inclusion(0, 4, TREE.leaf(0), proof, root)
    verify_consistency(1, 4, TREE.root(1), root, TREE.consistency_proof(1, 3))


# --- Malformed arguments ------------------------------------------------------------------

H = leaf_hash(b"x")


@pytest.mark.parametrize(
    ("index", "size", "leaf", "proof", "root"),
    [
        (0, 0, H, [], EMPTY_ROOT),  # empty tree: no leaf to include
        (1, 1, H, [], H),  # index == size
        (5, 3, H, [H], H),  # index > size
        (-1, 3, H, [H, H], H),
        (True, 2, H, [H], H),  # bool is not an index
        (0, True, H, [], H),
        (0, 1.0, H, [], H),
        (0, 2**64, H, [H] * 64, H),  # beyond uint64
        (0, 1, H[:31], [], H[:31]),
        (0, 1, bytearray(H), [], H),  # not bytes
        (0, 2, H, H, H),  # a bytes object is not a proof
        (0, 2, H, None, H),
        (0, 2, H, [H.hex()], H),
        (0, 1, H, [H], H),  # a tree of one leaf has an empty proof
    ],
)
def test_verify_inclusion_rejects_malformed_input(index, size, leaf, proof, root):
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf, proof, root)


def test_single_leaf_tree():
    verify_inclusion(0, 1, H, [], H)
    with pytest.raises(ProofError):
        verify_inclusion(0, 1, H, [], OTHER)


@pytest.mark.parametrize(
    ("first", "second", "r1", "r2", "proof"),
    [
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, []),  # first = 0 is refused outright
        (0, 5, EMPTY_ROOT, H, []),
        (0, 5, EMPTY_ROOT, H, [H]),
        (3, 2, H, H, [H]),  # first > second
        (3, 3, H, H, [H]),  # equal sizes need an empty proof
        (3, 3, H, OTHER, []),  # equal sizes need equal roots
        (3, 3, H[:31], H[:31], []),
        (False, 3, H, H, []),
        (1, 2.0, H, H, [H]),
        (-1, 2, H, H, [H]),
        (1, 2, H, H, H),  # bytes is not a proof
    ],
)
def test_verify_consistency_rejects_malformed_input(first, second, r1, r2, proof):
    with pytest.raises(ProofError):
        verify_consistency(first, second, r1, r2, proof)


def test_equal_sizes_with_equal_roots_and_empty_proof_hold():
    verify_consistency(3, 3, TREE.root(3), TREE.root(3), [])
    assert TREE.consistency_proof(3, 3) == []


def test_hash_primitives_check_sizes():
    assert node_hash(H, OTHER) != node_hash(OTHER, H)
    for bad in (H[:31], H + b"\0", b"", H.hex()):
        with pytest.raises(ProofError):
            node_hash(bad, H)
        with pytest.raises(ProofError):
            node_hash(H, bad)
    with pytest.raises(TypeError):
        leaf_hash("text")  # type: ignore[arg-type]


def test_construction_rejects_impossible_requests():
    for call in (
        lambda: inclusion_proof(10, 10, TREE),
        lambda: inclusion_proof(0, 0, TREE),
        lambda: consistency_proof(0, 10, TREE),
        lambda: consistency_proof(11, 10, TREE),
        lambda: TREE.root(N_EXHAUSTIVE + 1),
        lambda: TREE.inclusion_proof(0, N_EXHAUSTIVE + 1),
        lambda: TREE.consistency_proof(1, N_EXHAUSTIVE + 1),
        lambda: TREE.leaf(N_EXHAUSTIVE),
        lambda: tree_root(-1, TREE),
        lambda: nodes_completed_by_append(0, H[:31], MemoryTree()),
        lambda: MemoryTree().append(b"short"),
    ):
        with pytest.raises(ProofError):
            call()


def test_misbehaving_reader_is_caught():
    class Short:
        def read_nodes(self, coords):
            return TREE.read_nodes(coords)[:-1]

    class Truncating:
        def read_nodes(self, coords):
            return [h[:31] for h in TREE.read_nodes(coords)]

    for reader in (Short(), Truncating()):
        with pytest.raises(ProofError):
            inclusion_proof(5, 100, reader)
        with pytest.raises(ProofError):
            tree_root(100, reader)


# --- Reads: one batched call per proof, O(log n) nodes ------------------------------------


class CountingReader:
    def __init__(self, tree: MemoryTree):
        self.tree = tree
        self.calls: list[list[tuple[int, int]]] = []

    def read_nodes(self, coords):
        self.calls.append(list(coords))
        return self.tree.read_nodes(coords)


BIG_SIZE = 5000


@lru_cache(maxsize=1)
def big() -> tuple[tuple[bytes, ...], MemoryTree]:
    leaves = tuple(b"big %d" % i for i in range(BIG_SIZE))
    return leaves, MemoryTree(leaf_hash(d) for d in leaves)


def check_one_batched_read(reader, coords, size):
    """The call read exactly ``coords``, once, all distinct complete subtrees of [0, size)."""
    assert reader.calls == ([coords] if coords else [])
    assert len(set(coords)) == len(coords)
    assert len(coords) <= 2 * (size - 1).bit_length() + 2
    assert all((j + 1) << k <= size for k, j in coords)


def test_each_proof_is_one_read_of_log_n_nodes():
    _, tree = big()
    rng = random.Random(9162)
    sizes = [1, 2, 3, 1023, 1024, 1025, 2047, 4095, 4096, 4097, BIG_SIZE]
    sizes += [rng.randrange(1, BIG_SIZE + 1) for _ in range(40)]
    for n in sizes:
        reader = CountingReader(tree)
        root = tree_root(n, reader)
        check_one_batched_read(reader, tree_root_coords(n), n)
        assert len(tree_root_coords(n)) == n.bit_count()
        for i in {0, n - 1, n // 2, rng.randrange(n)}:
            reader = CountingReader(tree)
            proof = inclusion_proof(i, n, reader)
            check_one_batched_read(reader, inclusion_proof_coords(i, n), n)
            verify_inclusion(i, n, tree.leaf(i), proof, root)
        for m in {1, n, n // 2 or 1, (n + 1) // 2, rng.randrange(1, n + 1)}:
            reader = CountingReader(tree)
            proof = consistency_proof(m, n, reader)
            check_one_batched_read(reader, consistency_proof_coords(m, n), n)
            verify_consistency(m, n, tree.root(m), root, proof)


def test_append_reads_left_siblings_once():
    tree = MemoryTree(leaf_hash(d) for d in LEAVES[:7])
    reader = CountingReader(tree)
    h7 = leaf_hash(LEAVES[7])
    nodes = nodes_completed_by_append(7, h7, reader)
    assert reader.calls == [[(0, 6), (1, 2), (2, 0)]]
    assert [c for c, _ in nodes] == [(0, 7), (1, 3), (2, 1), (3, 0)]
    assert nodes[0][1] == h7
    assert nodes[-1][1] == ref.mth(LEAVES[:8])
    reader = CountingReader(tree)
    assert nodes_completed_by_append(8, H, reader) == [((0, 8), H)]
    assert reader.calls == []


# --- Properties on larger trees -----------------------------------------------------------


@st.composite
def index_and_size(draw):
    size = draw(st.integers(1, BIG_SIZE))
    return draw(st.integers(0, size - 1)), size


@settings(max_examples=examples(150), deadline=None)
@given(index_and_size())
def test_random_inclusion_proofs_verify(args):
    index, size = args
    leaves, tree = big()
    root = tree.root(size)
    assert root == ref.mth(leaves[:size])
    proof = tree.inclusion_proof(index, size)
    verify_inclusion(index, size, leaf_hash(leaves[index]), proof, root)


@settings(max_examples=examples(150), deadline=None)
@given(index_and_size())
def test_random_consistency_proofs_verify(args):
    first, second = args[0] + 1, args[1]
    _, tree = big()
    proof = tree.consistency_proof(first, second)
    verify_consistency(first, second, tree.root(first), tree.root(second), proof)


@settings(max_examples=examples(150), deadline=None)
@given(st.integers(0, BIG_SIZE - 1))
def test_nodes_completed_by_append_match_memory_tree(index):
    leaves, tree = big()
    reader = CountingReader(tree)
    nodes = nodes_completed_by_append(index, leaf_hash(leaves[index]), reader)
    n = index + 1
    levels = (n & -n).bit_length()  # the leaf, then one node per trailing zero bit of n
    assert [c for c, _ in nodes] == [(k, (n >> k) - 1) for k in range(levels)]
    assert len(reader.calls) == (1 if levels > 1 else 0)
    assert [h for _, h in nodes] == tree.read_nodes([c for c, _ in nodes])
    top_level, top_index = nodes[-1][0]
    assert nodes[-1][1] == ref.mth(leaves[top_index << top_level : n])
