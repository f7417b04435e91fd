"""Tests of verifier/checkpoint.py: C2SP tlog-checkpoint bodies, signed and opened."""

from __future__ import annotations

import base64
import hashlib
import pathlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lineage.verifier.checkpoint import (
    MAX_TREE_SIZE,
    Checkpoint,
    SignedCheckpoint,
    format_checkpoint,
    open_checkpoint,
    parse_checkpoint,
    sign_checkpoint,
)
from lineage.verifier.errors import CheckpointFormatError, NoteFormatError, SignatureError
from lineage.verifier.note import (
    Note,
    Signature,
    Signer,
    format_note,
    format_skey,
    parse_note,
    parse_vkey,
    sign_note,
)
from tests.budget import examples

DASH = "\u2014"
DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "CHECKPOINT.md"

# c2sp.org/tlog-checkpoint, the example at the top of the spec (C2SP/C2SP tlog-checkpoint.md).
# Its key is not published: it is a parse and round-trip vector.
SPEC_CHECKPOINT = (
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n"
    f"{DASH} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/"
    "Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
).encode()

LOG = Signer("log.example/a", hashlib.sha256(b"test log key").digest())
OTHER_LOG = Signer("log.example/b", hashlib.sha256(b"test other log key").digest())
WITNESS = Signer("witness.example/w", hashlib.sha256(b"test witness key").digest())
ROOT = hashlib.sha256(b"root").digest()
CP = Checkpoint(LOG.name, 42, ROOT)
TEXT = f"{LOG.name}\n42\n{base64.b64encode(ROOT).decode()}\n"


def test_spec_example_parses_and_round_trips():
    note = parse_note(SPEC_CHECKPOINT)
    cp = parse_checkpoint(note.text)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert cp.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.extensions == ()
    assert note.signatures[0].name == cp.origin  # the spec's key name is the origin too
    assert format_checkpoint(cp) == note.text
    assert format_note(note) == SPEC_CHECKPOINT
    with pytest.raises(SignatureError):  # not our key
        open_checkpoint(SPEC_CHECKPOINT, LOG.verifier)


def test_format_is_the_spec_layout():
    assert format_checkpoint(CP) == TEXT
    cp = Checkpoint("o", 0, bytes(32), ("ext one", "ext two"))
    assert format_checkpoint(cp) == "o\n0\n" + "A" * 43 + "=\next one\next two\n"


def test_sign_and_open():
    data = sign_checkpoint(CP, LOG)
    signed = open_checkpoint(data, LOG.verifier, origin=LOG.name)
    assert isinstance(signed, SignedCheckpoint)
    assert signed.checkpoint == CP
    assert signed.raw == data
    assert signed.note.text == TEXT
    assert [s.name for s in signed.note.verified] == [LOG.name]
    assert open_checkpoint(bytearray(data), LOG.verifier).raw == data


def test_witness_signatures_kept_unverified():
    data = sign_checkpoint(CP, LOG, [WITNESS])
    signed = open_checkpoint(data, LOG.verifier)
    assert [s.name for s in signed.note.verified] == [LOG.name]
    assert [s.name for s in signed.note.unverified] == [WITNESS.name]


def test_log_signature_required():
    with pytest.raises(SignatureError):  # signed by a witness alone
        open_checkpoint(sign_note(TEXT, [WITNESS]), LOG.verifier)
    with pytest.raises(SignatureError):  # another log's key
        open_checkpoint(sign_checkpoint(CP, LOG), OTHER_LOG.verifier)


def test_bad_log_signature_rejects_despite_witness():
    note = parse_note(sign_checkpoint(CP, LOG, [WITNESS]))
    log_sig, witness_sig = note.signatures
    wrong = Signature(LOG.name, LOG.key_id, LOG.sign(b"another text\n"))
    data = format_note(Note(note.text, (wrong, witness_sig)))
    with pytest.raises(SignatureError):
        open_checkpoint(data, LOG.verifier)
    assert open_checkpoint(format_note(Note(note.text, (witness_sig, log_sig))), LOG.verifier)


def test_tampered_checkpoint_rejected():
    data = sign_checkpoint(CP, LOG)
    for tampered in (data.replace(b"\n42\n", b"\n43\n"), data.replace(b"a\n42", b"b\n42")):
        with pytest.raises(SignatureError):
            open_checkpoint(tampered, LOG.verifier)


def test_origin_mismatch_rejected():
    # The log key signed a body naming another origin: not a checkpoint of this log.
    foreign = f"{OTHER_LOG.name}\n42\n{base64.b64encode(ROOT).decode()}\n"
    with pytest.raises(SignatureError, match="origin"):
        open_checkpoint(sign_note(foreign, [LOG]), LOG.verifier)
    # The caller expects another origin than the key's.
    with pytest.raises(SignatureError, match="origin"):
        open_checkpoint(sign_checkpoint(CP, LOG), LOG.verifier, origin=OTHER_LOG.name)


def test_sign_checkpoint_requires_key_name_equal_origin():
    with pytest.raises(CheckpointFormatError):
        sign_checkpoint(Checkpoint(OTHER_LOG.name, 1, ROOT), LOG)
    with pytest.raises(NoteFormatError):  # the log signs once
        sign_checkpoint(CP, LOG, [LOG])


def test_signed_body_that_is_not_a_checkpoint_rejected():
    for body in ("just text\n", f"{LOG.name}\n042\n{base64.b64encode(ROOT).decode()}\n"):
        with pytest.raises(CheckpointFormatError):
            open_checkpoint(sign_note(body, [LOG]), LOG.verifier)


def test_signed_checkpoint_is_made_only_by_open_checkpoint():
    signed = open_checkpoint(sign_checkpoint(CP, LOG), LOG.verifier)
    with pytest.raises(TypeError):
        SignedCheckpoint(CP, signed.note, signed.raw)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"origin": ""},
        {"origin": "a\nb"},
        {"origin": "a\tb"},
        {"origin": "a\ud800"},
        {"origin": "o" * 9000},
        {"size": -1},
        {"size": MAX_TREE_SIZE + 1},
        {"size": True},
        {"size": 1.0},
        {"size": "1"},
        {"root_hash": bytes(31)},
        {"root_hash": bytes(33)},
        {"root_hash": "A" * 32},
        {"extensions": ("",)},
        {"extensions": ("a\nb",)},
        {"extensions": "abc"},
    ],
)
def test_checkpoint_preconditions(kwargs):
    fields = {"origin": "o", "size": 1, "root_hash": ROOT, **kwargs}
    with pytest.raises(CheckpointFormatError):
        Checkpoint(**fields)


ROOT_B64 = base64.b64encode(ROOT).decode()


def _body(origin="o", size="42", root=ROOT_B64, *ext) -> str:
    return "".join(f"{line}\n" for line in (origin, size, root, *ext))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "\n",
        "o\n42\n",
        "o\n42\n" + ROOT_B64,  # no final newline
        _body() + "\n",  # an empty extension line (duplicate blank line)
        _body("", "42"),
        _body(size="0042"),
        _body(size="00"),
        _body(size="+42"),
        _body(size="-42"),
        _body(size="-0"),
        _body(size="4_2"),
        _body(size=" 42"),
        _body(size="42 "),
        _body(size="4 2"),
        _body(size=""),
        _body(size="0x2a"),
        _body(size="42.0"),
        _body(size="1e3"),
        _body(size="\u0664\u0662"),  # Arabic-Indic digits, which int() accepts
        _body(size="\uff14\uff12"),  # full-width digits
        _body(size="\u00b2"),
        _body(size=str(2**63)),
        _body(size="9" * 5000),
        _body(root=base64.b64encode(bytes(31)).decode()),
        _body(root=base64.b64encode(bytes(33)).decode()),
        _body(root=ROOT_B64.rstrip("=")),
        _body(root=ROOT_B64 + "="),
        _body(root=ROOT_B64[:-2] + chr(ord(ROOT_B64[-2]) ^ 1) + "="),  # non-canonical bits
        _body(root=base64.urlsafe_b64encode(b"\xff" * 32).decode()),
        _body(root=" " + ROOT_B64),
        _body(root=ROOT_B64 + " "),
        _body(origin="o\r"),
        _body("o", "42", ROOT_B64, "ext\t"),
        _body().replace("\n", "\r\n"),
        "o\n42\n" + ROOT_B64 + "\n\next\n",
    ],
)
def test_malformed_checkpoints_rejected(bad):
    with pytest.raises(CheckpointFormatError):
        parse_checkpoint(bad)


def test_non_str_rejected():
    for bad in (TEXT.encode(), None, 42):
        with pytest.raises(CheckpointFormatError):
            parse_checkpoint(bad)


def test_size_bounds():
    assert parse_checkpoint(_body(size=str(MAX_TREE_SIZE))).size == 2**63 - 1
    assert parse_checkpoint(_body(size="0")).size == 0


# --- round trips and fuzzing --------------------------------------------------------------

line_chars = st.characters(exclude_categories=("Cc", "Cs"))
line_text = st.text(line_chars, min_size=1, max_size=30)
sizes = st.integers(0, MAX_TREE_SIZE)
checkpoints = st.builds(
    Checkpoint,
    line_text,
    sizes,
    st.binary(min_size=32, max_size=32),
    st.lists(line_text, max_size=3),
)


@st.composite
def checkpoint_texts(draw) -> str:
    """Valid checkpoint text, written out by hand rather than by format_checkpoint."""
    origin, size = draw(line_text), draw(sizes)
    root = base64.b64encode(draw(st.binary(min_size=32, max_size=32))).decode()
    ext = draw(st.lists(line_text, max_size=3))
    return "\n".join([origin, f"{size:d}", root, *ext]) + "\n"


@given(checkpoints)
def test_parse_format_round_trip(cp):
    assert parse_checkpoint(format_checkpoint(cp)) == cp


@given(checkpoint_texts())
def test_format_parse_round_trip(text):
    assert format_checkpoint(parse_checkpoint(text)) == text


key_names = st.text(
    st.characters(exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), exclude_characters="+"),
    min_size=1,
    max_size=30,
).filter(lambda n: not any(c.isspace() for c in n))
signable = st.builds(
    Checkpoint,
    key_names,
    sizes,
    st.binary(min_size=32, max_size=32),
    st.lists(line_text, max_size=3),
)


@given(signable)
@settings(max_examples=examples(50))
def test_sign_open_round_trip(cp):
    signer = Signer(cp.origin, hashlib.sha256(cp.origin.encode()).digest())
    data = sign_checkpoint(cp, signer)
    assert open_checkpoint(data, signer.verifier).checkpoint == cp


@st.composite
def bad_sizes(draw) -> str:
    """A non-canonical rendering of a tree size."""
    digits = str(draw(sizes))
    how = draw(st.sampled_from(["zero", "plus", "minus", "underscore", "space", "unicode", "big"]))
    if how == "zero":
        return "0" * draw(st.integers(1, 3)) + digits
    if how == "plus":
        return "+" + digits
    if how == "minus":
        return "-" + digits
    if how == "underscore":
        i = draw(st.integers(0, len(digits)))
        return digits[:i] + "_" + digits[i:]
    if how == "space":
        ws = draw(st.sampled_from([" ", "\u00a0", "\u2003", "\u3000"]))
        return draw(st.sampled_from([ws + digits, digits + ws]))
    if how == "unicode":  # the same digits from another script
        zero = draw(st.sampled_from([0x0660, 0x06F0, 0x0966, 0xFF10, 0x1D7CE]))
        return "".join(chr(zero + int(d)) for d in digits)
    return str(draw(st.integers(MAX_TREE_SIZE + 1, 2**70)))


@given(bad_sizes())
def test_non_canonical_sizes_rejected(size):
    with pytest.raises(CheckpointFormatError):
        parse_checkpoint(_body(size=size))


@st.composite
def bad_roots(draw) -> str:
    """A root-hash line that is not the canonical base64 of 32 bytes."""
    n = draw(st.integers(0, 64).filter(lambda n: n != 32))
    root = base64.b64encode(draw(st.binary(min_size=n, max_size=n))).decode()
    good = base64.b64encode(draw(st.binary(min_size=32, max_size=32))).decode()
    return draw(
        st.sampled_from(
            [
                root,
                good.rstrip("="),
                good[:-2] + draw(st.sampled_from("BCDFGHJKLNOPRSTVWXZ")) + "=",  # low bits set
                good + "=",
                good.replace("+", "-").replace("/", "_") + "!",
            ]
        )
    )


@given(bad_roots())
def test_bad_roots_rejected(root):
    with pytest.raises(CheckpointFormatError):
        parse_checkpoint(_body(root=root))


def _parse_or_format_error(text: str) -> None:
    try:
        cp = parse_checkpoint(text)
    except CheckpointFormatError:
        return
    assert format_checkpoint(cp) == text


@given(st.text(max_size=200))
def test_random_text(text):
    _parse_or_format_error(text)


@given(checkpoint_texts(), st.data())
def test_mutated_texts(text, data):
    i = data.draw(st.integers(0, len(text)))
    insert = data.draw(st.sampled_from(["\n", "\r", "\t", " ", "0", "+", "_", "=", "\x00"]))
    op = data.draw(st.sampled_from(["insert", "delete", "double-newline"]))
    if op == "insert":
        mutated = text[:i] + insert + text[i:]
    elif op == "delete":
        mutated = text[:i] + text[i + 1 :]
    else:
        mutated = text.replace("\n", "\n\n", 1)
    _parse_or_format_error(mutated)


SIGNED = sign_checkpoint(Checkpoint(LOG.name, 7, ROOT, ("ext",)), LOG, [WITNESS])


@settings(max_examples=examples(300))
@given(st.data())
def test_mutated_signed_checkpoints(data):
    i = data.draw(st.integers(0, len(SIGNED) - 1))
    op = data.draw(st.sampled_from(["flip", "delete", "insert", "crlf"]))
    if op == "flip":
        mutated = SIGNED[:i] + bytes([SIGNED[i] ^ data.draw(st.integers(1, 255))]) + SIGNED[i + 1 :]
    elif op == "delete":
        mutated = SIGNED[:i] + SIGNED[i + 1 :]
    elif op == "insert":
        mutated = SIGNED[:i] + data.draw(st.binary(min_size=1, max_size=3)) + SIGNED[i:]
    else:
        mutated = SIGNED.replace(b"\n", b"\r\n")
    try:
        opened = open_checkpoint(mutated, LOG.verifier)
    except (NoteFormatError, CheckpointFormatError, SignatureError):
        return
    assert opened.checkpoint == open_checkpoint(SIGNED, LOG.verifier).checkpoint


# --- the worked example in docs/CHECKPOINT.md ------------------------------------------------


def test_doc_example_is_reproduced():
    """docs/CHECKPOINT.md's example: regenerated from the RFC 8032 TEST 1 key, byte for byte."""
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    signer = Signer("lineage.example/log", seed)
    assert signer.verifier.public_key.hex() == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )

    def leaf(x: bytes) -> bytes:
        return hashlib.sha256(b"\x00" + x).digest()

    def node(a: bytes, b: bytes) -> bytes:
        return hashlib.sha256(b"\x01" + a + b).digest()

    root = node(node(leaf(b"a"), leaf(b"b")), leaf(b"c"))  # RFC 9162 §2.1.1, three leaves
    signed = sign_checkpoint(Checkpoint(signer.name, 3, root), signer).decode()

    doc = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```\n(.*?)```", doc, flags=re.S)
    assert blocks[0] == signed
    assert blocks[1].strip() == signer.verifier.vkey
    assert signer.key_id.hex() in doc
    assert open_checkpoint(blocks[0].encode(), parse_vkey(blocks[1].strip())).checkpoint.size == 3
    assert format_skey(signer).split("+")[-1] not in doc  # the doc names the key, not its seed
