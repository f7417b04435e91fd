"""Adversarial tests of evidence bundles (docs/FORMAT.md §9): inclusion, replay, consistency.

A module-level log of 16 leaves (built with ``fixtures.generate``: fixed keys, fixed clock)
is cut into bundles: every dependency-closed subset of its leaves that holds the genesis
must verify, and every single mutation of a bundle (a flipped proof bit, a wrong index,
an extra field, a checkpoint of another key or origin, a consistency proof for the wrong
size) must fail with the error class FORMAT.md §9.1 implies.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures import generate as g
from lineage.verifier.bundle import parse_bundle, verify_bundle
from lineage.verifier.checkpoint import Checkpoint, format_checkpoint, sign_checkpoint
from lineage.verifier.cli import main as verify_main
from lineage.verifier.entry import sign_entry
from lineage.verifier.errors import (
    ChainError,
    EncodingError,
    EntryFormatError,
    FormatError,
    ProofError,
    SignatureError,
)
from lineage.verifier.keys import SigningKey
from lineage.verifier.note import Signer, sign_note
from tests.budget import examples

T0 = g.T0
KEY = g.LOG.verifier
OP2 = SigningKey(g.seed("operator-2"))
BOB = SigningKey(g.seed("bob@corp"))
DAVE = SigningKey(g.seed("agent:dave"))
OTHER_KEY = Signer(g.ORIGIN, g.seed("another log"))  # same origin, another key


def _build() -> tuple[g.Log, dict[int, set[int]]]:
    """A log of 16 leaves, and for each index the earlier leaves its replay needs."""
    log = g.Log()
    deps: dict[int, set[int]] = {}

    def add(entry, time: int, *needs: int):
        deps[len(log.leaves)] = set(needs)
        return log.append(entry, time)

    add(g.genesis(), T0)  # 0
    add(g.bind_alice(), T0 + 1)  # 1
    add(g.policy(), T0 + 2)  # 2
    grant = add(g.grant(), T0 + 10, 1)  # 3
    d1 = add(g.delegation(grant), T0 + 20, 3)  # 4
    add(g.access(d1, g.READER, 1), T0 + 61, 4)  # 5
    add(
        sign_entry(
            g.body("key", op="bind", key=BOB.public.b64, principal="bob@corp"), [g.OPERATOR]
        ),
        T0 + 62,
    )  # 6
    add(g.grant(BOB, principal="bob@corp", holder=DAVE.public.b64, agent="dave"), T0 + 63, 6)  # 7
    d2 = add(g.delegation(grant, holder=g.DRAFTER.public.b64, agent="drafter"), T0 + 64, 3)  # 8
    add(g.access(d2, g.DRAFTER, 2, decision="deny"), T0 + 65, 8)  # 9
    add(g.access(grant, g.AGENT, 3, iat=T0 + 66), T0 + 66, 3)  # 10
    add(
        sign_entry(g.body("revocation", target={"credential": d1.id}, reason="done"), [g.ALICE]),
        T0 + 120,
        4,
        1,
    )  # 11
    add(g.access(d1, g.READER, 4, decision="deny", iat=T0 + 121), T0 + 121, 4)  # 12
    add(sign_entry(g.body("policy", version=2, document={}), [g.OPERATOR]), T0 + 130)  # 13
    add(
        sign_entry(g.body("key", op="add", key=OP2.public.b64, roles=["operator"]), [g.OPERATOR]),
        T0 + 131,
    )  # 14
    add(sign_entry(g.body("policy", version=3, document={}), [OP2]), T0 + 132, 14)  # 15
    return log, deps


LOG, DEPS = _build()
N = len(LOG.leaves)
CREDENTIALS = {3, 4, 7, 8}


def closure(indexes) -> list[int]:
    """``indexes`` plus the genesis and everything they need, in increasing order."""
    out, todo = {0}, list(indexes)
    while todo:
        i = todo.pop()
        if i not in out:
            out.add(i)
            todo.extend(DEPS[i])
    return sorted(out)


def full(**kw: Any) -> dict[str, Any]:
    """A fresh bundle of LOG (deep-copied: ``Leaf.to_json`` shares each entry's dict)."""
    return copy.deepcopy(LOG.bundle(**kw))


def to_bytes(bundle: dict[str, Any], indent: int | None = None) -> bytes:
    return json.dumps(bundle, indent=indent).encode()


def flip(b64: str, bit: int) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[bit // 8 % 32] ^= 1 << (bit % 8)
    return base64.b64encode(bytes(raw)).decode()


def checkpoint(size: int, signer: Signer = g.LOG, origin: str = g.ORIGIN) -> bytes:
    """A checkpoint of LOG at ``size``, signed by ``signer`` with ``origin`` in its body."""
    text = format_checkpoint(Checkpoint(origin, size, LOG.tree.root(size)))
    return sign_note(text, [signer])


# --- bundles that verify -------------------------------------------------------------------------


def test_the_log_replays_in_full():
    vb = verify_bundle(to_bytes(full()), KEY)
    assert vb.checkpoint.checkpoint.size == N
    assert len(vb.entries) == N
    assert vb.replay.policy_version == 3
    ids = {LOG.leaves[i].entry.id for i in CREDENTIALS}
    assert set(vb.replay.credentials) == ids
    assert vb.replay.revoked == {LOG.leaves[4].entry.id: 11}


def test_closure_is_dependency_closed():
    for i in range(N):
        assert all(d < i for d in DEPS[i])
    assert closure([15]) == [0, 14, 15]
    assert closure([5]) == [0, 1, 3, 4, 5]


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sets(st.integers(1, N - 1), max_size=N))
def test_random_closed_subsets_verify(chosen):
    indexes = closure(chosen)
    bundle = full(indexes=indexes)
    vb = verify_bundle(to_bytes(bundle), KEY)
    assert [e.index for e in vb.entries] == indexes
    expected = {LOG.leaves[i].entry.id for i in indexes if i in CREDENTIALS}
    assert set(vb.replay.credentials) == expected
    assert vb.checkpoint.checkpoint.size == N


@settings(max_examples=examples(20), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, N), st.sets(st.integers(1, N - 1), max_size=6))
def test_random_subsets_of_earlier_checkpoints_verify(size, chosen):
    indexes = [i for i in closure(chosen) if i < size]
    indexes = closure(indexes)  # still closed: dependencies point backwards
    bundle = full(indexes=indexes, size=size)
    vb = verify_bundle(bundle, KEY)
    assert vb.checkpoint.checkpoint.size == size


def test_missing_dependency_fails_replay_not_inclusion():
    """Inclusion holds for any subset; only replay needs the parent (FORMAT.md §9.1 step 4)."""
    with pytest.raises(ChainError) as info:
        verify_bundle(full(indexes=[0, 1, 4]), KEY)
    assert info.value.check == "link"
    with pytest.raises(ChainError) as info:
        verify_bundle(full(indexes=[0, 3]), KEY)  # the grant without alice's binding
    assert info.value.check == "signature"
    with pytest.raises(ChainError) as info:
        verify_bundle(full(indexes=[1, 3]), KEY)
    assert info.value.check == "genesis"


def test_pretty_printed_bundle_verifies():
    assert verify_bundle(to_bytes(full(), indent=2), KEY).checkpoint.checkpoint.size == N
    assert verify_bundle(b"\n  " + to_bytes(full()) + b"\n", KEY)


# --- inclusion -----------------------------------------------------------------------------------


def test_every_inclusion_proof_bit_flip_fails():
    bundle = full()
    tried = 0
    for i, entry in enumerate(bundle["entries"]):
        assert entry["inclusion"], "a 16-leaf tree has a non-empty path for every leaf"
        for j in range(len(entry["inclusion"])):
            bad = copy.deepcopy(bundle)
            bad["entries"][i]["inclusion"][j] = flip(entry["inclusion"][j], 37 * i + 11 * j)
            with pytest.raises(ProofError) as info:
                verify_bundle(bad, KEY)
            assert f"entry {entry['index']}" in str(info.value)
            assert info.value.expected is not None and info.value.computed is not None
            assert info.value.expected != info.value.computed
            tried += 1
    assert tried == N * 4


@pytest.mark.parametrize("i", [0, 5, 15])
def test_inclusion_proof_of_the_wrong_shape_fails(i):
    bundle = full()
    path = bundle["entries"][i]["inclusion"]
    for bad_path in (path[:-1], [*path, path[0]], [], path[::-1]):
        bad = copy.deepcopy(bundle)
        bad["entries"][i]["inclusion"] = bad_path
        with pytest.raises(ProofError):
            verify_bundle(bad, KEY)
    bad = copy.deepcopy(bundle)
    other = (i + 1) % N
    bad["entries"][i]["inclusion"] = bundle["entries"][other]["inclusion"]
    with pytest.raises(ProofError):
        verify_bundle(bad, KEY)


@pytest.mark.parametrize(
    "where",
    ["time", "entry field", "signature"],
)
def test_tampered_leaf_fails_inclusion(where):
    bad = full()
    leaf = bad["entries"][10]["leaf"]
    if where == "time":
        leaf["time"] -= 1
    elif where == "entry field":
        leaf["entry"]["reason"] = "forbidden"
    else:
        sig = leaf["entry"]["sigs"][0]["sig"]
        leaf["entry"]["sigs"][0]["sig"] = ("B" if sig[0] == "A" else "A") + sig[1:]
    with pytest.raises(ProofError):
        verify_bundle(bad, KEY)


def test_entry_relabelled_with_another_index_fails():
    bad = full()
    bad["entries"][5]["index"] = 6
    del bad["entries"][6]
    with pytest.raises(ProofError):
        verify_bundle(bad, KEY)


def test_index_at_or_beyond_the_checkpoint_size_fails():
    small = full(size=6)
    proof = full(indexes=[6], size=7)["entries"][0]
    for index in (6, 7, 2**40):
        bad = copy.deepcopy(small)
        bad["entries"].append({**copy.deepcopy(proof), "index": index})
        with pytest.raises(ProofError) as info:
            verify_bundle(bad, KEY)
        assert "beyond" in str(info.value)
    bigger = full()
    bigger["checkpoint"] = LOG.checkpoint(8)  # a signed, smaller tree
    with pytest.raises(ProofError):
        verify_bundle(bigger, KEY)


# --- the bundle's own shape ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["duplicate", "swap", "decrease"])
def test_non_increasing_indices_are_rejected(how):
    bad = full()
    entries = bad["entries"]
    if how == "duplicate":
        entries.insert(4, copy.deepcopy(entries[3]))
    elif how == "swap":
        entries[3], entries[4] = entries[4], entries[3]
    else:
        entries.append(copy.deepcopy(entries[2]))
    parse_bundle(to_bytes(bad))  # the schema holds: the order is the `order` check's
    with pytest.raises(ChainError) as info:
        verify_bundle(bad, KEY)
    assert info.value.check == "order", str(info.value)


@pytest.mark.parametrize(
    "path, field",
    [
        ((), "extra"),
        (("entries", 0), "entries[0].extra"),
        (("entries", 3, "leaf"), "entries[3].leaf.extra"),
        (("entries", 3, "leaf", "entry"), "entries[3].leaf.entry.extra"),
        (("consistency",), "consistency.extra"),
    ],
)
def test_unknown_fields_are_rejected(path, field):
    bad = full(since=4)
    cur = bad
    for key in path:
        cur = cur[key]
    cur["extra"] = 1
    with pytest.raises(EntryFormatError) as info:
        verify_bundle(to_bytes(bad), KEY)
    assert info.value.field == field


@pytest.mark.parametrize("field", ["origin", "log_key", "checkpoint", "entries"])
def test_missing_fields_are_named(field):
    bad = full()
    del bad[field]
    with pytest.raises(EntryFormatError) as info:
        parse_bundle(to_bytes(bad))
    assert info.value.field == field


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.update(entries=[]),
        lambda b: b.update(entries={}),
        lambda b: b["entries"][0].update(index=False),  # False must not pass as 0
        lambda b: b["entries"][1].update(index=True),  # True must not pass as 1
        lambda b: b["entries"][1].update(index="1"),
        lambda b: b["entries"][1].update(index=-1),
        lambda b: b["entries"][1].pop("inclusion"),
        lambda b: b["entries"][1].update(inclusion=["AAAA"]),
        lambda b: b["entries"][1].update(inclusion="AAAA"),
        lambda b: b["entries"][1].update(inclusion=[b["entries"][1]["inclusion"][0][:-1] + "B"]),
        lambda b: b["entries"][1].update(
            inclusion=[base64.urlsafe_b64encode(b"\xff" * 32).decode()]
        ),
        lambda b: b["entries"][1].update(inclusion=["A" * 43 + "="] * 65),
        lambda b: b.update(consistency={"from_size": 0, "proof": []}),
        lambda b: b.update(consistency={"from_size": True, "proof": []}),
        lambda b: b.update(consistency={"from_size": 3}),
        lambda b: b.update(origin=7),
        lambda b: b.update(checkpoint=["x"]),
    ],
)
def test_malformed_bundle_is_a_format_error(mutate):
    bad = full()
    mutate(bad)
    with pytest.raises(EntryFormatError):
        verify_bundle(to_bytes(bad), KEY)


def test_bundle_encoding_errors():
    data = to_bytes(full())
    with pytest.raises(EncodingError):
        verify_bundle(data.replace(b'"origin"', b'"origin": "x", "origin"', 1), KEY)
    with pytest.raises(EncodingError):
        verify_bundle(data.replace(b'"time": 1767225600', b'"time": 1767225600.0', 1), KEY)
    with pytest.raises(EncodingError):
        verify_bundle(b"\xff" + data, KEY)
    with pytest.raises(FormatError):
        verify_bundle(data[:-5], KEY)


def test_null_consistency_is_rejected():
    with pytest.raises(EntryFormatError):
        verify_bundle({**full(), "consistency": None}, KEY)


def test_round_trip_through_the_parser():
    bundle = full(since=5)
    parsed = parse_bundle(to_bytes(bundle))
    assert parsed.to_json() == bundle
    assert parse_bundle(bundle).to_json() == bundle


# --- the trust anchor and the checkpoint ---------------------------------------------------------


def test_bundle_for_another_key_or_origin_fails():
    bad = full()
    bad["log_key"] = OTHER_KEY.verifier.vkey
    with pytest.raises(SignatureError):
        verify_bundle(bad, KEY)
    bad = full()
    bad["origin"] = "other.example/log"
    with pytest.raises(SignatureError):
        verify_bundle(bad, KEY)
    with pytest.raises(SignatureError):
        verify_bundle(full(), OTHER_KEY.verifier)


def test_checkpoint_signed_by_another_key_fails():
    bad = full()
    bad["checkpoint"] = checkpoint(N, OTHER_KEY).decode()
    with pytest.raises(SignatureError):
        verify_bundle(bad, KEY)


def test_checkpoint_for_another_origin_signed_by_the_right_key_fails():
    """The log key's signature over a checkpoint that names another log proves nothing here."""
    bad = full()
    bad["checkpoint"] = checkpoint(N, g.LOG, origin="other.example/log").decode()
    assert KEY.verify(  # the signature itself is the log key's, and good
        format_checkpoint(Checkpoint("other.example/log", N, LOG.tree.root())).encode(),
        base64.b64decode(bad["checkpoint"].rsplit(" ", 1)[1])[4:],
    )
    with pytest.raises(SignatureError):
        verify_bundle(bad, KEY)


def test_checkpoint_with_a_tampered_root_fails():
    bad = full()
    lines = bad["checkpoint"].split("\n")
    lines[2] = flip(lines[2], 3)
    bad["checkpoint"] = "\n".join(lines)
    with pytest.raises(SignatureError):
        verify_bundle(bad, KEY)


def test_checkpoint_signed_over_another_root_fails_inclusion():
    bad = full()
    root = bytearray(LOG.tree.root())
    root[0] ^= 1
    bad["checkpoint"] = sign_checkpoint(Checkpoint(g.ORIGIN, N, bytes(root)), g.LOG).decode()
    with pytest.raises(ProofError):
        verify_bundle(bad, KEY)


# --- consistency with an older checkpoint (--since) ----------------------------------------------


@pytest.mark.parametrize("m", range(1, N + 1))
def test_consistency_from_every_earlier_size(m):
    since = LOG.checkpoint(m).encode()
    vb = verify_bundle(to_bytes(full(since=m)), KEY, since)
    assert vb.since is not None and vb.since.checkpoint.size == m
    if m == N:  # the same checkpoint: no proof needed
        assert verify_bundle(full(), KEY, since).since.checkpoint.size == N


@pytest.mark.parametrize("m", range(2, N))
def test_consistency_proof_for_the_wrong_size_fails(m):
    since = LOG.checkpoint(m).encode()
    with pytest.raises(ProofError):
        verify_bundle(full(since=m - 1), KEY, since)  # labelled m - 1
    relabelled = full(since=m - 1)
    relabelled["consistency"]["from_size"] = m  # the proof for m - 1, labelled m
    with pytest.raises(ProofError):
        verify_bundle(relabelled, KEY, since)


@pytest.mark.parametrize("m", [1, 3, 8, 11])
def test_consistency_proof_bit_flip_fails(m):
    since = LOG.checkpoint(m).encode()
    bundle = full(since=m)
    for j, h in enumerate(bundle["consistency"]["proof"]):
        bad = copy.deepcopy(bundle)
        bad["consistency"]["proof"][j] = flip(h, 5 * j + 1)
        with pytest.raises(ProofError):
            verify_bundle(bad, KEY, since)


def test_missing_consistency_proof_fails():
    since = LOG.checkpoint(5).encode()
    with pytest.raises(ProofError):
        verify_bundle(full(), KEY, since)


def test_since_larger_than_the_bundle_fails():
    since = LOG.checkpoint(N).encode()
    with pytest.raises(ProofError):
        verify_bundle(full(size=N - 1), KEY, since)


def test_since_from_a_forked_log_fails():
    """A checkpoint of a log that diverged at index 5 is not a prefix of this one."""
    fork = g.Log()
    for leaf in LOG.leaves[:5]:
        fork.append(leaf.entry, leaf.time)
    fork.append(g.access(LOG.leaves[4].entry, g.READER, 1, decision="deny"), T0 + 61)
    fork.append(LOG.leaves[6].entry, LOG.leaves[6].time)
    for m in (6, 7):
        since = fork.checkpoint(m).encode()
        with pytest.raises(ProofError):
            verify_bundle(full(since=m), KEY, since)
    with pytest.raises(ProofError):  # the same size, another root
        verify_bundle(full(size=6), KEY, fork.checkpoint(6).encode())
    same_prefix = fork.checkpoint(5).encode()  # before the fork: consistent
    assert verify_bundle(full(since=5), KEY, same_prefix)


def test_since_signed_by_another_key_fails():
    since = checkpoint(5, OTHER_KEY)
    with pytest.raises(SignatureError):
        verify_bundle(full(since=5), KEY, since)


def test_since_for_another_origin_fails():
    since = checkpoint(5, g.LOG, origin="other.example/log")
    with pytest.raises(SignatureError):
        verify_bundle(full(since=5), KEY, since)


def test_since_that_is_not_a_checkpoint_fails():
    for since in (b"", b"not a note", LOG.checkpoint(5).encode()[:-3]):
        with pytest.raises(FormatError):
            verify_bundle(full(since=5), KEY, since)


# --- through the command line --------------------------------------------------------------------


def _cli(tmp_path, bundle: dict[str, Any], since: bytes | None, capsys) -> tuple[int, dict]:
    path = tmp_path / "bundle.json"
    path.write_bytes(to_bytes(bundle, indent=2))
    args = [str(path), "--log-key", KEY.vkey, "--json"]
    if since is not None:
        (tmp_path / "since.txt").write_bytes(since)
        args += ["--since", str(tmp_path / "since.txt")]
    code = verify_main(args)
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("m", [1, 6, N])
def test_cli_since(tmp_path, capsys, m):
    code, out = _cli(tmp_path, full(since=m), LOG.checkpoint(m).encode(), capsys)
    assert (code, out["ok"], out["consistent_with"]) == (0, True, m)


@pytest.mark.parametrize(
    "case, check",
    [
        ("wrong size", "proof"),
        ("other key", "signature"),
        ("other origin", "signature"),
        ("flipped proof", "proof"),
    ],
)
def test_cli_failures(tmp_path, capsys, case, check):
    bundle, since = full(since=6), LOG.checkpoint(6).encode()
    if case == "wrong size":
        bundle = full(since=5)
    elif case == "other key":
        since = checkpoint(6, OTHER_KEY)
    elif case == "other origin":
        bundle["checkpoint"] = checkpoint(N, g.LOG, origin="other.example/log").decode()
    else:
        bundle["entries"][7]["inclusion"][0] = flip(bundle["entries"][7]["inclusion"][0], 0)
    code, out = _cli(tmp_path, bundle, since, capsys)
    assert (code, out["ok"], out["check"]) == (1, False, check), out
