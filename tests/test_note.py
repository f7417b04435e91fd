"""Tests of verifier/note.py: C2SP signed notes, Ed25519 keys, verifier and signer keys."""

from __future__ import annotations

import base64
import hashlib

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lineage.verifier.errors import FormatError, KeyFormatError, NoteFormatError, SignatureError
from lineage.verifier.note import (
    MAX_LINE_BYTES,
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    Note,
    Signature,
    Signer,
    VerifiedNote,
    Verifier,
    format_note,
    format_skey,
    key_id,
    open_note,
    parse_note,
    parse_skey,
    parse_vkey,
    sign_note,
)
from lineage.verifier.note_keys import _verify_ed25519
from tests.budget import examples

DASH = "\u2014"

# c2sp.org/signed-note, section "Verifier keys", its example key and signed message. The copy
# of C2SP/C2SP signed-note.md in the reference index (commit 0552876) predates that section;
# the vector is the one quoted by several independent implementations, and the test below
# shows the signature verifies under the key, which a mistyped copy would not.
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n"
    "\n"
    f"{DASH} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3"
    "mFXmRKuwHjG1Yu72IneyaQM=\n"
).encode()

# c2sp.org/signed-note, the example at the top of the spec (C2SP/C2SP signed-note.md): its
# key is not published, so it serves as a parse and round-trip vector with a blank line inside.
SPEC_POEM = (
    "Ognuno sta solo sul cuor della terra\n"
    "trafitto da un raggio di sole:\n"
    "\n"
    "ed è subito sera.\n"
    "\n"
    f"{DASH} quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKO"
    "NrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
).encode()

# golang.org/x/mod sumdb/note/note_test.go (TestNewVerifier, TestNewSigner, TestSign, TestOpen)
# and the package documentation in sumdb/note/note.go.
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    f"{DASH} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfq"
    "dngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    f"{DASH} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwn"
    "WLox33WWd1RvMc+QQ=\n"
)

# The order of the Ed25519 base point (RFC 8032 §5.1).
L = 2**252 + 27742317777372353535851937790883648493

# Encodings of points of small order (1, 2, 4, 8): the keys a lax verifier lets forge.
SMALL_ORDER_KEYS = [
    bytes([1]) + bytes(31),  # the identity
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes(32),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
]

LOG = Signer("log.example/a", hashlib.sha256(b"test log key").digest())
WITNESS = Signer("witness.example/w", hashlib.sha256(b"test witness key").digest())


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# --- spec and Go vectors -----------------------------------------------------------------


def test_spec_vkey_parses_with_its_key_id():
    v = parse_vkey(SPEC_VKEY)
    assert v.name == "example.com/foo"
    assert v.key_id == bytes.fromhex("530d903a")
    assert len(v.public_key) == 32
    assert v.vkey == SPEC_VKEY
    # The key ID formula, written out: SHA-256(name || 0x0A || 0x01 || key)[:4].
    digest = hashlib.sha256(b"example.com/foo\n\x01" + v.public_key).digest()
    assert digest[:4] == key_id(v.name, v.public_key) == v.key_id


def test_spec_note_verifies():
    opened = open_note(SPEC_NOTE, [parse_vkey(SPEC_VKEY)])
    assert opened.text == "This is an example message.\n"
    assert [(s.name, s.key_id.hex()) for s in opened.verified] == [("example.com/foo", "530d903a")]
    assert opened.unverified == ()
    assert format_note(parse_note(SPEC_NOTE)) == SPEC_NOTE


@pytest.mark.parametrize(
    "tampered",
    [
        SPEC_NOTE.replace(b"example message", b"example massage"),
        SPEC_NOTE.replace(b"This is", b"This Is"),
        SPEC_NOTE.replace(b"Uw2QOkn8", b"Uw2QOkn9"),  # a signature byte
        SPEC_NOTE.replace(b"IneyaQM=", b"IneyaQQ="),  # the last signature byte
    ],
)
def test_spec_note_tampered_fails(tampered):
    with pytest.raises(SignatureError):
        open_note(tampered, [parse_vkey(SPEC_VKEY)])


def test_spec_note_with_changed_key_id_is_unknown_and_rejected():
    # Uw2QOg== is 530d903a: changing a key-ID character makes the signature an unknown key's.
    tampered = SPEC_NOTE.replace(b"Uw2QOkn8", b"Uw2QPkn8")
    assert parse_note(tampered).signatures[0].key_id != bytes.fromhex("530d903a")
    with pytest.raises(SignatureError, match="no signature by a known key"):
        open_note(tampered, [parse_vkey(SPEC_VKEY)])


def test_spec_poem_parses_and_round_trips():
    note = parse_note(SPEC_POEM)
    assert note.text.endswith("sole:\n\ned è subito sera.\n")  # split at the LAST blank line
    (sig,) = note.signatures
    assert sig.name == "quasimodo.example/salvatore"
    assert len(sig.signature) == 64
    assert format_note(note) == SPEC_POEM
    with pytest.raises(SignatureError):  # nobody we know signed it
        open_note(SPEC_POEM, [parse_vkey(SPEC_VKEY)])


def test_go_sign_vector():
    signer = parse_skey(PETER_SKEY)
    assert signer.verifier.vkey == PETER_VKEY
    assert format_skey(signer) == PETER_SKEY
    # Ed25519 is deterministic: the same key and text give Go's bytes exactly.
    assert sign_note(GO_TEXT, [signer]) == (GO_TEXT + "\n" + PETER_SIG).encode()


def test_go_open_vectors():
    peter, enoch = parse_vkey(PETER_VKEY), parse_vkey(ENOCH_VKEY)
    msg = (GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()
    one = open_note(msg, [peter])
    assert one.text == GO_TEXT
    assert [s.name for s in one.verified] == ["PeterNeumann"]
    assert [s.name for s in one.unverified] == ["EnochRoot"]
    both = open_note(msg, [peter, enoch])
    assert [s.name for s in both.verified] == ["PeterNeumann", "EnochRoot"]
    assert both.unverified == ()
    with pytest.raises(SignatureError):
        open_note(msg, [])
    # Repeated signatures: one verified per key; identical unknown ones dropped.
    enoch_abcd = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
    dup = (GO_TEXT + "\n" + PETER_SIG * 2 + ENOCH_SIG * 2 + enoch_abcd).encode()
    opened = open_note(dup, [peter])
    assert [s.name for s in opened.verified] == ["PeterNeumann"]
    assert [b64(s.key_id + s.signature) for s in opened.unverified] == [
        ENOCH_SIG.split()[-1],
        enoch_abcd.split()[-1],
    ]
    assert format_note(parse_note(dup)) == dup  # the parsed note keeps every line
    # A known key's signature with "ABCD" spliced in fails.
    with pytest.raises(SignatureError, match="PeterNeumann"):
        open_note((GO_TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]).encode(), [peter])


@pytest.mark.parametrize(
    "bad",
    [
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + PETER_SIG,
        GO_TEXT + "\n" + f"{DASH} Bad Name " + PETER_SIG.split()[-1],
        GO_TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        GO_TEXT + "\n" + PETER_SIG * (MAX_SIGNATURES + 1),
    ],
)
def test_go_malformed_messages(bad):
    with pytest.raises(NoteFormatError):
        open_note(bad.encode(), [parse_vkey(PETER_VKEY)])
    with pytest.raises(NoteFormatError):
        open_note(b"\xff" + bad.encode(), [parse_vkey(PETER_VKEY)])


def test_go_vkey_manglings_rejected():
    # As TestNewVerifier: every proper substring and every one-character change fails.
    for i in range(len(PETER_VKEY) + 1):
        for j in range(i + 1, len(PETER_VKEY) + 1):
            if (i, j) != (0, len(PETER_VKEY)):
                with pytest.raises(KeyFormatError):
                    parse_vkey(PETER_VKEY[i:j])
    for i in range(len(PETER_VKEY)):
        changed = PETER_VKEY[:i] + chr(ord(PETER_VKEY[i]) + 1) + PETER_VKEY[i + 1 :]
        with pytest.raises(KeyFormatError):
            parse_vkey(changed)
    for bad in [
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ]:
        with pytest.raises(KeyFormatError):
            parse_vkey(bad)


def test_go_skey_manglings_rejected():
    for i in range(len(PETER_SKEY) + 1):
        for j in range(i + 1, len(PETER_SKEY) + 1):
            if (i, j) != (0, len(PETER_SKEY)):
                with pytest.raises(KeyFormatError):
                    parse_skey(PETER_SKEY[i:j])
    for i in range(len(PETER_SKEY)):
        changed = PETER_SKEY[:i] + chr(ord(PETER_SKEY[i]) + 1) + PETER_SKEY[i + 1 :]
        with pytest.raises(KeyFormatError):
            parse_skey(changed)


# --- keys ----------------------------------------------------------------------------------


_SPEC_B64 = SPEC_VKEY.split("+", 2)[2]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "example.com/foo",
        "example.com/foo+530d903a",
        "example.com/foo+530D903A+" + _SPEC_B64,  # upper-case hex
        "example.com/foo+530d903+" + _SPEC_B64,
        "example.com/foo+0530d903a+" + _SPEC_B64,
        "example.com/foo+530d903a+" + _SPEC_B64.rstrip("k"),
        "example.com/foo+530d903a+" + _SPEC_B64 + "=",
        "example.com/foo+530d903a+" + _SPEC_B64[:-1] + "l",  # another key: wrong key ID
        "example.com/foo+530d903a+" + _SPEC_B64[:-1] + "=",
        PETER_VKEY.replace("/", "_"),  # base64url
        PETER_VKEY.replace("/", "/\n"),
        "example.com/foo+530d903a+" + _SPEC_B64 + "\n",
        " example.com/foo+530d903a+" + _SPEC_B64,
        "example.com/foo +530d903a+" + _SPEC_B64,
        "example.com/foo+530d903a+" + b64(bytes([1]) + bytes(31)),  # 31-byte key
        "example com+530d903a+" + _SPEC_B64,
        "ex\tample+530d903a+" + _SPEC_B64,
        "ex\x00ample+530d903a+" + _SPEC_B64,
        "ex\ud800ample+530d903a+" + _SPEC_B64,
        "+530d903a+" + _SPEC_B64,
        "x" * 300 + "+530d903a+" + _SPEC_B64,
    ],
)
def test_bad_vkeys_rejected(bad):
    with pytest.raises(KeyFormatError):
        parse_vkey(bad)


def test_vkey_with_other_signature_type_rejected():
    public_key = parse_vkey(SPEC_VKEY).public_key
    raw = bytes([2]) + public_key
    kid = hashlib.sha256(b"example.com/foo\n" + raw).digest()[:4]
    with pytest.raises(KeyFormatError, match="0x02"):
        parse_vkey(f"example.com/foo+{kid.hex()}+{b64(raw)}")


def test_verifier_checks_key_id():
    v = LOG.verifier
    with pytest.raises(KeyFormatError):
        Verifier(v.name, bytes(4), v.public_key)
    with pytest.raises(KeyFormatError):
        Verifier("log.example/b", v.key_id, v.public_key)
    assert Verifier(v.name, v.key_id, v.public_key) == v
    assert parse_vkey(v.vkey) == v


@pytest.mark.parametrize("name", ["log.example/a", "é/名前", "a" * 256, "x—y"])
def test_signer_and_verifier_agree(name):
    signer = Signer.generate(name)
    msg = b"hi\n"
    sig = signer.sign(msg)
    assert signer.verifier.verify(msg, sig)
    assert not signer.verifier.verify(b"hI\n", sig)
    assert not signer.verifier.verify(msg, bytes([sig[0] ^ 1]) + sig[1:])
    assert not signer.verifier.verify(msg, sig[:63])
    assert parse_skey(format_skey(signer)).verifier == signer.verifier


@pytest.mark.parametrize("name", ["", "a+b", "a b", "a\u00a0b", "a\u3000b", "a\x7fb", "a" * 257])
def test_bad_names_rejected(name):
    with pytest.raises(KeyFormatError):
        Signer(name, bytes(32))
    with pytest.raises(KeyFormatError):
        key_id(name, LOG.verifier.public_key)


def test_signer_hides_its_seed():
    seed = bytes(range(32))
    signer = Signer("log.example/a", seed)
    skey_b64 = format_skey(signer).rsplit("+", 1)[1]
    for shown in (repr(signer), str(signer), f"{signer}"):
        assert seed.hex() not in shown and skey_b64 not in shown and "PRIVATE" not in shown
        assert signer.key_id.hex() in shown


def test_seed_must_be_32_bytes():
    for seed in (bytes(31), bytes(33), "0" * 32):
        with pytest.raises(KeyFormatError):
            Signer("a", seed)


# --- strict Ed25519 -------------------------------------------------------------------------


def test_non_canonical_signature_rejected():
    msg = b"checkpoint\n"
    sig = LOG.sign(msg)
    s = int.from_bytes(sig[32:], "little")
    assert s < L
    malleated = sig[:32] + (s + L).to_bytes(32, "little")
    assert (int.from_bytes(malleated[32:], "little") - L) == s  # same S modulo L
    assert LOG.verifier.verify(msg, sig)
    assert not LOG.verifier.verify(msg, malleated)
    note = Note(msg.decode(), (Signature(LOG.name, LOG.key_id, malleated),))
    with pytest.raises(SignatureError):
        open_note(format_note(note), [LOG.verifier])


@pytest.mark.parametrize("point", SMALL_ORDER_KEYS)
def test_small_order_keys_rejected(point):
    with pytest.raises(KeyFormatError):
        Verifier("a", key_id("a", point), point)
    with pytest.raises(KeyFormatError):
        parse_vkey(f"a+{key_id('a', point).hex()}+{b64(bytes([1]) + point)}")


def test_small_order_forgery_refused_by_libsodium():
    # With A and R the identity and S = 0, [S]B = R + [k]A holds for every message:
    # a verifier that accepts small-order keys accepts this "signature" of anything.
    identity = SMALL_ORDER_KEYS[0]
    forged = identity + bytes(32)
    assert not _verify_ed25519(identity, b"anything\n", forged)


def test_mixed_order_key_rejected():
    order8 = SMALL_ORDER_KEYS[3]
    mixed = nacl.bindings.crypto_core_ed25519_add(LOG.verifier.public_key, order8)
    with pytest.raises(KeyFormatError):
        Verifier("a", key_id("a", mixed), mixed)


# --- verified versus unverified --------------------------------------------------------------


def test_unknown_signatures_kept_apart():
    data = sign_note("hello\n", [LOG, WITNESS])
    opened = open_note(data, [LOG.verifier])
    assert [s.name for s in opened.verified] == [LOG.name]
    assert [s.name for s in opened.unverified] == [WITNESS.name]
    opened = open_note(data, [WITNESS.verifier, LOG.verifier])
    assert [s.name for s in opened.verified] == [LOG.name, WITNESS.name]


def test_known_key_bad_signature_rejects_despite_other_good_one():
    good = sign_note("hello\n", [LOG])
    bad_witness = Signature(WITNESS.name, WITNESS.key_id, WITNESS.sign(b"other\n"))
    note = parse_note(good)
    data = format_note(Note(note.text, (*note.signatures, bad_witness)))
    assert open_note(data, [LOG.verifier]).unverified == (bad_witness,)
    with pytest.raises(SignatureError, match=WITNESS.name):
        open_note(data, [LOG.verifier, WITNESS.verifier])


def test_only_unknown_signatures_rejects():
    with pytest.raises(SignatureError):
        open_note(sign_note("hello\n", [WITNESS]), [LOG.verifier])


def test_same_name_or_same_id_is_another_key():
    # signed-note §Signatures: ignore signatures sharing a name or an ID (but not both).
    impostor = Signer(LOG.name, hashlib.sha256(b"impostor").digest())
    data = sign_note("hello\n", [impostor])
    with pytest.raises(SignatureError, match="no signature by a known key"):
        open_note(data, [LOG.verifier])
    sig = parse_note(sign_note("hello\n", [LOG])).signatures[0]
    renamed = Note("hello\n", (Signature("log.example/b", sig.key_id, sig.signature),))
    with pytest.raises(SignatureError, match="no signature by a known key"):
        open_note(format_note(renamed), [LOG.verifier])


def test_ambiguous_verifiers_rejected():
    other = Verifier.__new__(Verifier)  # same name and ID, another key: bypass __post_init__
    object.__setattr__(other, "name", LOG.name)
    object.__setattr__(other, "key_id", LOG.key_id)
    object.__setattr__(other, "public_key", WITNESS.verifier.public_key)
    with pytest.raises(KeyFormatError):
        open_note(sign_note("x\n", [LOG]), [LOG.verifier, other])
    assert open_note(sign_note("x\n", [LOG]), [LOG.verifier, LOG.verifier]).verified


def test_verified_note_is_made_only_by_open_note():
    with pytest.raises(TypeError):
        VerifiedNote("x\n", (), ())


# --- sign_note and Note preconditions ---------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["", "\n", "no newline", "two blank lines\n\n", "tab\there\n", "cr\r\n", "a\ud800\n"]
)
def test_sign_note_rejects_bad_text(text):
    with pytest.raises(NoteFormatError):
        sign_note(text, [LOG])


def test_sign_note_signer_rules():
    with pytest.raises(NoteFormatError):
        sign_note("x\n", [])
    with pytest.raises(NoteFormatError):
        sign_note("x\n", [LOG, LOG])
    with pytest.raises(TypeError):
        sign_note("x\n", [LOG.verifier])


def test_text_may_hold_signature_lookalikes_and_blank_lines():
    text = f"a\n\n{DASH} {LOG.name} {b64(bytes(68))}\n\nb\n"
    opened = open_note(sign_note(text, [LOG]), [LOG.verifier])
    assert opened.text == text


def test_signature_bounds():
    text = "x\n"
    sig = parse_note(sign_note(text, [LOG])).signatures[0]
    at_limit = (GO_TEXT + "\n" + PETER_SIG * MAX_SIGNATURES).encode()
    assert len(parse_note(at_limit).signatures) == MAX_SIGNATURES
    assert len(open_note(at_limit, [parse_vkey(PETER_VKEY)]).verified) == 1
    with pytest.raises(NoteFormatError):
        Note(text, (sig,) * (MAX_SIGNATURES + 1))
    with pytest.raises(NoteFormatError):
        Note(text, ())
    with pytest.raises(NoteFormatError):
        Signature(LOG.name, LOG.key_id, bytes(MAX_LINE_BYTES))
    with pytest.raises(NoteFormatError):
        Signature(LOG.name, bytes(3), sig.signature)


def test_size_bounds():
    long_line = "a" * (MAX_LINE_BYTES + 1) + "\n"
    with pytest.raises(NoteFormatError):
        sign_note(long_line, [LOG])
    with pytest.raises(NoteFormatError):
        parse_note((long_line + "\n" + PETER_SIG).encode())
    ok_line = "a" * MAX_LINE_BYTES + "\n"
    assert open_note(sign_note(ok_line, [LOG]), [LOG.verifier]).text == ok_line
    big = ok_line * (MAX_NOTE_BYTES // len(ok_line) + 1)
    with pytest.raises(NoteFormatError):
        parse_note((big + "\n" + PETER_SIG).encode())
    with pytest.raises(NoteFormatError):
        sign_note(big, [LOG])


SIG_B64 = PETER_SIG.split()[-1]


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\n",
        b"\n\n",
        ("\n\n" + PETER_SIG).encode(),  # empty text
        ("\n" + PETER_SIG).encode(),
        ("x\n\n\n" + PETER_SIG).encode(),  # duplicate blank line
        ("x\r\n\r\n" + PETER_SIG).encode(),  # CRLF
        ("x\n\n" + PETER_SIG.replace("\n", "\r\n")).encode(),
        ("x\ty\n\n" + PETER_SIG).encode(),
        ("x\x7f\n\n" + PETER_SIG).encode(),
        ("x\x85\n\n" + PETER_SIG).encode(),
        ("x\x00\n\n" + PETER_SIG).encode(),
        b"x\xc0\x80\n\n" + PETER_SIG.encode(),  # overlong UTF-8
        b"x\xed\xa0\x80\n\n" + PETER_SIG.encode(),  # an encoded surrogate
        ("x\n\n" + PETER_SIG + "\n").encode(),  # a trailing blank line
        ("x\n\n" + PETER_SIG.rstrip("\n")).encode(),  # no final newline
        ("x\n\n" + PETER_SIG.replace(DASH, "\u2013")).encode(),  # en dash
        ("x\n\n" + PETER_SIG.replace(DASH, "--")).encode(),
        ("x\n\n" + PETER_SIG.replace(DASH + " ", DASH)).encode(),
        ("x\n\n" + PETER_SIG.replace(" PeterNeumann ", "  PeterNeumann ")).encode(),
        ("x\n\n" + PETER_SIG.replace(" PeterNeumann ", " PeterNeumann  ")).encode(),
        ("x\n\n" + PETER_SIG.replace("PeterNeumann", "Peter+Neumann")).encode(),
        ("x\n\n" + PETER_SIG.replace("PeterNeumann", "Peter\u00a0Neumann")).encode(),
        ("x\n\n" + PETER_SIG.replace("PeterNeumann ", "")).encode(),
        ("x\n\n" + PETER_SIG.replace(SIG_B64, SIG_B64.rstrip("="))).encode(),
        ("x\n\n" + PETER_SIG.replace(SIG_B64, SIG_B64[:-2] + "N=")).encode(),  # non-canonical
        ("x\n\n" + PETER_SIG.replace(SIG_B64, SIG_B64.replace("/", "_"))).encode(),
        ("x\n\n" + PETER_SIG.replace(SIG_B64, b64(bytes(4)))).encode(),  # key ID only
        ("x\n\n" + PETER_SIG.replace(SIG_B64, "")).encode(),
        ("x\n\n" + PETER_SIG + " \n").encode(),
    ],
)
def test_malformed_notes_rejected(bad):
    with pytest.raises(NoteFormatError):
        parse_note(bad)
    with pytest.raises(NoteFormatError):
        open_note(bad, [parse_vkey(PETER_VKEY)])


def test_non_bytes_rejected():
    for bad in (SPEC_NOTE.decode(), None, 42):
        with pytest.raises(NoteFormatError):
            parse_note(bad)
    assert parse_note(bytearray(SPEC_NOTE)) == parse_note(SPEC_NOTE)


# --- round trips and fuzzing --------------------------------------------------------------------

text_chars = st.characters(exclude_categories=("Cc", "Cs"))
lines = st.text(text_chars, max_size=20)
texts = st.builds(
    lambda body, last: "".join(line + "\n" for line in [*body, last]),
    st.lists(lines, max_size=4),
    st.text(text_chars, min_size=1, max_size=20),
)
names = st.text(
    st.characters(exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), exclude_characters="+"),
    min_size=1,
    max_size=16,
).filter(lambda n: not any(c.isspace() for c in n))
signatures = st.builds(
    Signature, names, st.binary(min_size=4, max_size=4), st.binary(min_size=1, max_size=80)
)
notes = st.builds(Note, texts, st.lists(signatures, min_size=1, max_size=5).map(tuple))


@st.composite
def note_bytes(draw) -> bytes:
    """Valid signed-note bytes, written out by hand rather than by format_note."""
    text = draw(texts)
    sig_lines = draw(
        st.lists(
            st.tuples(names, st.binary(min_size=5, max_size=80)),
            min_size=1,
            max_size=5,
        )
    )
    out = text.encode() + b"\n"
    for name, raw in sig_lines:
        out += DASH.encode() + b" " + name.encode() + b" " + b64(raw).encode() + b"\n"
    return out


@given(notes)
def test_parse_format_round_trip(note):
    assert parse_note(format_note(note)) == note


@given(note_bytes())
def test_format_parse_round_trip(data):
    assert format_note(parse_note(data)) == data


def _parse_or_format_error(data: bytes) -> None:
    """parse_note(data) either raises NoteFormatError or round-trips exactly."""
    try:
        note = parse_note(data)
    except NoteFormatError:
        return
    assert format_note(note) == data


@given(st.binary(max_size=300))
def test_random_bytes(data):
    _parse_or_format_error(data)


@given(st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_random_text(data):
    _parse_or_format_error(data)


INSERTS = [b"\r", b"\t", b"\n", b"\n\n", b" ", b"\x00", b"+", b"=", b"\xff", b"\x7f", b"A"]
INSERTS += [DASH.encode() + b" ", "\u00a0".encode(), b"\xe2\x80"]


@st.composite
def mutations(draw, data: bytes) -> bytes:
    """One mutation of data: flip, delete, insert or duplicate bytes, or a CRLF or a cut."""
    op = draw(st.sampled_from(["flip", "delete", "insert", "duplicate", "crlf", "cut"]))
    i = draw(st.integers(0, len(data) - 1))
    if op == "flip":
        return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    if op == "delete":
        return data[:i] + data[i + draw(st.integers(1, 4)) :]
    if op == "insert":
        return data[:i] + draw(st.sampled_from(INSERTS) | st.binary(min_size=1)) + data[i:]
    if op == "duplicate":
        j = draw(st.integers(i, min(len(data), i + 80)))
        return data[:j] + data[i:j] + data[j:]
    if op == "crlf":
        return data.replace(b"\n", b"\r\n")
    return data[:i]


SIGNED = sign_note("lineage.example/log\n42\nsome text\n", [LOG, WITNESS])


@settings(max_examples=examples(300))
@given(st.data())
def test_mutated_notes_never_open_as_something_else(data):
    mutated = data.draw(mutations(SIGNED))
    _parse_or_format_error(mutated)
    try:
        opened = open_note(mutated, [LOG.verifier])
    except (NoteFormatError, SignatureError):
        return
    original = open_note(SIGNED, [LOG.verifier])
    assert opened.text == original.text
    assert opened.verified == original.verified


@given(notes, st.data())
def test_mutated_random_notes(note, data):
    _parse_or_format_error(data.draw(mutations(format_note(note))))


@given(st.lists(signatures, min_size=MAX_SIGNATURES + 1, max_size=MAX_SIGNATURES + 3))
@settings(max_examples=examples(10))
def test_too_many_signatures(sigs):
    data = b"x\n\n" + "".join(s._line() for s in sigs).encode()
    with pytest.raises(NoteFormatError):
        parse_note(data)


def test_errors_are_the_package_errors():
    assert issubclass(NoteFormatError, FormatError)
    assert issubclass(KeyFormatError, FormatError)


def _seed_whose_vkey_has(plus: int) -> tuple[Signer, str]:
    """A signer whose verifier key's base64 holds at least ``plus`` '+' characters."""
    for i in range(10000):
        signer = Signer("lineage.example/plus", hashlib.sha256(b"plus %d" % i).digest())
        b64 = signer.verifier.vkey.split("+", 2)[2]
        if b64.count("+") >= plus:
            return signer, b64
    raise AssertionError("no such key")


@pytest.mark.parametrize("plus", [1, 3])
def test_a_verifier_key_splits_at_its_first_two_plus_signs(plus):
    """CHECKPOINT.md: the name holds no '+', the key ID is hex, and the base64 may hold '+'."""
    signer, b64 = _seed_whose_vkey_has(plus)
    vkey = signer.verifier.vkey
    assert vkey.count("+") == 2 + b64.count("+")
    parsed = parse_vkey(vkey)
    assert (parsed.name, parsed.vkey) == ("lineage.example/plus", vkey)
    assert parsed.public_key == signer.verifier.public_key
    assert base64.b64decode(b64) == b"\x01" + parsed.public_key
    note = sign_note("hello\n", [signer])
    assert open_note(note, [parsed]).text == "hello\n"
    name, key_id, rest = vkey.split("+", 2)
    assert vkey.rsplit("+", 2)[0] != name  # a reader splitting at the last two would err
    with pytest.raises(KeyFormatError):  # a '+' in the name is read as the end of the name
        parse_vkey(name.replace("/", "+") + "+" + key_id + "+" + rest)


def test_the_documented_log_key_with_plus_in_its_base64_parses():
    """CHECKPOINT.md quotes fixtures/log.vkey as a key whose base64 holds two '+'."""
    from pathlib import Path

    vkey = (Path(__file__).resolve().parent.parent / "fixtures" / "log.vkey").read_text().strip()
    assert vkey.split("+", 2)[2].count("+") == 2
    assert vkey in (Path(__file__).resolve().parent.parent / "docs" / "CHECKPOINT.md").read_text()
    parsed = parse_vkey(vkey)
    assert (parsed.name, parsed.key_id.hex()) == ("lineage.example/fixtures", "e75ba62b")
