"""Adversarial tests of the entry format (docs/FORMAT.md §2-§5, §7): parse, reject, round-trip.

Every example in ``fixtures/examples`` must parse and round-trip byte for byte; every
departure from the schema or the canonical encoding must raise a ``FormatError`` subclass
(``EntryFormatError`` naming the field where there is one), never a raw Python exception.
Tests marked ``xfail(strict=True, reason="BUG: ...")`` pin bugs found in the verifier.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures import generate as g
from lineage.verifier.entry import (
    MAX_ENTRY_SIZE,
    Entry,
    Leaf,
    entry_from_json,
    leaf_from_json,
    parse_entry,
    parse_leaf,
    sign_entry,
)
from lineage.verifier.errors import EncodingError, EntryFormatError, FormatError, SignatureError
from lineage.verifier.invocation import (
    MAX_INVOCATION_SIZE,
    parse_invocation_bytes,
    parse_signed_invocation,
    sign_invocation,
)
from lineage.verifier.jcs import canonical
from lineage.verifier.keys import ENTRY_CONTEXT, INVOCATION_CONTEXT, b64u_encode
from lineage.verifier.signed import sign_object
from tests.budget import examples

EXAMPLES = Path(__file__).resolve().parent.parent / "fixtures" / "examples"
NAMES = ["genesis", "key", "policy", "grant", "delegation", "access"]
L = 2**252 + 27742317777372353535851937790883648493  # the Ed25519 group order (RFC 8032 §5.1)


def example(name: str) -> bytes:
    """An example entry's canonical bytes (the file adds one newline for the reader)."""
    data = (EXAMPLES / f"{name}.entry.json").read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    return data[:-1]


def example_obj(name: str) -> dict[str, Any]:
    return json.loads(example(name))


def revocation_entry(**target: str) -> Entry:
    target = target or {"credential": "ab" * 32}
    return sign_entry(g.body("revocation", target=target, reason="task finished"), [g.ALICE])


def all_kinds() -> dict[str, dict[str, Any]]:
    """One valid entry object of each of the seven kinds (revocation has no example file)."""
    out = {name: example_obj(name) for name in NAMES}
    out["revocation"] = json.loads(revocation_entry().raw)
    return out


def rejects(obj: Any, field: str | None = None, error: type[Exception] = EntryFormatError):
    """Assert ``entry_from_json(obj)`` raises ``error`` naming ``field`` (when given)."""
    with pytest.raises(error) as info:
        entry_from_json(obj)
    if field is not None:
        assert info.value.field == field, str(info.value)
    return info.value


def mutated(name: str, path: tuple, value: Any) -> dict[str, Any]:
    """A deep copy of example ``name`` (or the revocation) with ``path`` set to ``value``."""
    obj = copy.deepcopy(all_kinds()[name])
    cur = obj
    for key in path[:-1]:
        cur = cur[key]
    cur[path[-1]] = value
    return obj


def without(name: str, field: str) -> dict[str, Any]:
    obj = copy.deepcopy(all_kinds()[name])
    del obj[field]
    return obj


# --- every kind parses and round-trips both ways -------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_example_parses_and_round_trips(name):
    raw = example(name)
    entry = parse_entry(raw)
    assert entry.kind == name
    assert entry.raw == raw
    assert canonical(entry.obj) == raw
    again = entry_from_json(json.loads(raw))
    assert again == entry
    assert again.raw == raw


@pytest.mark.parametrize("name", NAMES)
def test_example_id_is_sha256_of_the_bytes(name):
    raw = example(name)
    expected = (EXAMPLES / f"{name}.id").read_text().strip()
    assert parse_entry(raw).id == hashlib.sha256(raw).hexdigest() == expected


def test_every_kind_is_covered():
    kinds = {parse_entry(canonical(obj)).kind for obj in all_kinds().values()}
    assert kinds == {"genesis", "key", "policy", "grant", "delegation", "revocation", "access"}


@pytest.mark.parametrize("target", ["credential", "holder"])
def test_revocation_round_trips(target):
    value = "cd" * 32 if target == "credential" else g.READER.public.b64
    entry = revocation_entry(**{target: value})
    assert parse_entry(entry.raw) == entry
    assert parse_entry(entry.raw).raw == entry.raw
    body = entry.body
    assert (body.credential, body.holder) == (
        (value, None) if target == "credential" else (None, g.READER.public)
    )


def test_sign_entry_signs_the_documented_bytes():
    raw = example("grant")
    entry = parse_entry(raw)
    expected = bytes.fromhex((EXAMPLES / "grant.signed-message.hex").read_text().strip())
    assert entry.signed_message() == expected
    assert expected.startswith(b"lineage.entry.v1\x00")
    assert entry.signed_by(g.ALICE.public)
    assert not entry.signed_by(g.AGENT.public)


# --- the canonical encoding ----------------------------------------------------------------------


def _swap_first_two_keys(raw: bytes) -> bytes:
    obj = json.loads(raw)
    keys = list(obj)
    order = [keys[1], keys[0], *keys[2:]]
    return json.dumps(
        {k: obj[k] for k in order}, separators=(",", ":"), ensure_ascii=False
    ).encode()


NON_CANONICAL = {
    "trailing newline": lambda raw: raw + b"\n",
    "leading space": lambda raw: b" " + raw,
    "space after colon": lambda raw: raw.replace(b'"kind":', b'"kind": ', 1),
    "space after comma": lambda raw: raw.replace(b",", b", ", 1),
    "keys out of order": _swap_first_two_keys,
    "escaped solidus": lambda raw: raw.replace(b"example/fixtures", b"example\\/fixtures", 1),
    "escaped letter": lambda raw: raw.replace(b'"v":1', b'"\\u0076":1', 1),
    "escaped letter in value": lambda raw: raw.replace(b'"log":"l', b'"log":"\\u006c', 1),
    "upper-case escape": lambda raw: raw.replace(b'"log":"l', b'"log":"\\u006C', 1),
    "integer with exponent": lambda raw: raw.replace(b'"v":1', b'"v":1e0', 1),
    "integer as float": lambda raw: raw.replace(b'"v":1', b'"v":1.0', 1),
    "leading zero": lambda raw: raw.replace(b'"v":1', b'"v":01', 1),
    "byte order mark": lambda raw: b"\xef\xbb\xbf" + raw,
    "duplicate key": lambda raw: raw.replace(b'"v":1', b'"v":1,"v":1', 1),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("how", sorted(NON_CANONICAL))
def test_non_canonical_bytes_are_rejected(name, how):
    raw = example(name)
    bad = NON_CANONICAL[how](raw)
    assert bad != raw, "the mutation did not apply"
    with pytest.raises(EncodingError):
        parse_entry(bad)


def test_escaped_letter_decodes_to_the_same_object_yet_is_rejected():
    raw = example("grant")
    bad = raw.replace(b'"kind":"grant"', b'"kind":"gr\\u0061nt"', 1)
    assert json.loads(bad) == json.loads(raw)  # the same value, a second encoding
    with pytest.raises(EncodingError):
        parse_entry(bad)


def test_non_ascii_key_and_lone_surrogate_are_rejected():
    obj = example_obj("policy")
    obj["document"] = {"r\u00e9gle": 1}
    with pytest.raises(EncodingError):
        entry_from_json(obj)
    obj["document"] = {"rule": "\ud800"}
    with pytest.raises(EncodingError):
        entry_from_json(obj)
    raw = example("policy").replace(b'"rules"', b'"r\\ud800"', 1)
    with pytest.raises(EncodingError):
        parse_entry(raw)


def test_non_utf8_bytes_are_rejected():
    raw = example("grant").replace(b"Triage", b"Tri\xffge", 1)
    with pytest.raises(EncodingError):
        parse_entry(raw)


def test_parse_entry_refuses_non_bytes():
    with pytest.raises(FormatError):
        parse_entry(example("grant").decode())  # type: ignore[arg-type]


# --- required, unknown and mistyped fields -------------------------------------------------------

HEADER = ("kind", "v", "log", "sigs")
REQUIRED = {
    "genesis": ["kind", "v", "log", "sigs", "log_key", "keys"],
    "key": ["kind", "v", "log", "sigs", "op", "key", "principal"],
    "policy": ["kind", "v", "log", "sigs", "version", "document"],
    "grant": [*HEADER, "principal", "holder", "scope", "expires_at", "max_depth", "task"],
    "delegation": [*HEADER, "parent", "holder", "scope", "expires_at", "max_depth", "task"],
    "revocation": ["kind", "v", "log", "sigs", "target", "reason"],
    "access": [*HEADER, "invocation", "context", "enforcement", "decision", "reason", "policy"],
}
OPTIONAL = {
    "key": ["roles"],  # a bind's organisational roles
    "grant": ["agent", "max_uses", "max_children"],
    "delegation": ["agent", "max_uses", "max_children"],
}


@pytest.mark.parametrize(
    "name, field", [(name, field) for name, fields in REQUIRED.items() for field in fields]
)
def test_missing_required_field_is_named(name, field):
    obj = without(name, field)
    rejects(obj, field)


@pytest.mark.parametrize(
    "name, field", [(name, field) for name, fields in OPTIONAL.items() for field in fields]
)
def test_optional_field_may_be_omitted(name, field):
    obj = without(name, field)
    entry = entry_from_json(obj)
    assert field not in entry.obj


def test_the_example_fields_are_exactly_required_plus_optional():
    for name, obj in all_kinds().items():
        present = set(obj)
        assert set(REQUIRED[name]) <= present
        assert present - set(REQUIRED[name]) <= set(OPTIONAL.get(name, ())), name


NESTED_EXTRA = [
    ("grant", ("scope", 0, "extra"), "scope[0].extra"),
    ("grant", ("scope", 0, "constraints", "received_at", "extra"), None),
    ("grant", ("task", "extra"), "task.extra"),
    ("grant", ("sigs", 0, "extra"), "sigs[0].extra"),
    ("genesis", ("keys", 0, "extra"), "keys[0].extra"),
    ("revocation", ("target", "extra"), "target.extra"),
    ("access", ("invocation", "extra"), "invocation.extra"),
    ("access", ("invocation", "sigs", 0, "extra"), "invocation.sigs[0].extra"),
]


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_unknown_top_level_field_is_named(name):
    rejects(mutated(name, ("extra",), 1), "extra")
    # a field that is legal in another kind is still unknown here
    other = "parent" if name != "delegation" else "principal"
    rejects(mutated(name, (other,), "ab" * 32), other)


@pytest.mark.parametrize("name, path, field", NESTED_EXTRA)
def test_unknown_nested_field_is_named(name, path, field):
    err = rejects(mutated(name, path, 1))
    if field is not None:
        assert err.field == field
    else:
        assert err.field and err.field.startswith("scope[0].constraints.received_at")


def test_unknown_field_in_the_request_names_it_once():
    rejects(mutated("access", ("invocation", "request", "extra"), 1), "invocation.request.extra")


WRONG_TYPES = [
    # bool must never pass as an integer (True == 1, False == 0 in Python)
    ("grant", ("v",), True, "v"),
    ("grant", ("expires_at",), True, "expires_at"),
    ("grant", ("max_depth",), True, "max_depth"),
    ("grant", ("max_depth",), False, "max_depth"),
    ("grant", ("max_uses",), True, "max_uses"),
    ("grant", ("max_children",), False, "max_children"),
    ("policy", ("version",), True, "version"),
    ("access", ("policy",), True, "policy"),
    ("access", ("policy",), False, "policy"),
    ("access", ("invocation", "iat"), True, "invocation.iat"),
    ("access", ("invocation", "request", "action"), 5, "invocation.request.action"),
    ("access", ("invocation", "request", "attributes", "sender"), True, None),
    ("grant", ("scope", 0, "constraints", "received_at", "gte"), True, None),
    # string for integer
    ("grant", ("v",), "1", "v"),
    ("grant", ("expires_at",), "1767226500", "expires_at"),
    ("grant", ("max_depth",), "2", "max_depth"),
    ("policy", ("version",), "1", "version"),
    ("access", ("policy",), "1", "policy"),
    # integer (and other types) for string
    ("grant", ("log",), 5, "log"),
    ("grant", ("kind",), 5, "kind"),
    ("grant", ("principal",), 5, "principal"),
    ("grant", ("holder",), 5, "holder"),
    ("grant", ("agent",), 5, "agent"),
    ("delegation", ("parent",), 5, "parent"),
    ("revocation", ("reason",), 5, "reason"),
    ("revocation", ("target", "credential"), 5, "target.credential"),
    ("access", ("enforcement",), 5, "enforcement"),
    ("access", ("decision",), 1, "decision"),
    ("access", ("decision",), ["allow"], "decision"),
    ("key", ("op",), 0, "op"),
    ("genesis", ("log_key",), 5, "log_key"),
    # objects and lists
    ("grant", ("scope",), {}, "scope"),
    ("grant", ("task",), [], "task"),
    ("genesis", ("keys",), {}, "keys"),
    ("policy", ("document",), [], "document"),
    ("access", ("context",), "ip", "context"),
    ("revocation", ("target",), "ab" * 32, "target"),
    ("grant", ("sigs",), {}, "sigs"),
    # null for a required field
    ("grant", ("log",), None, "log"),
    ("grant", ("expires_at",), None, "expires_at"),
    ("grant", ("max_uses",), None, "max_uses"),
]


@pytest.mark.parametrize("name, path, value, field", WRONG_TYPES)
def test_wrong_type_is_named(name, path, value, field):
    err = rejects(mutated(name, path, value))
    if field is not None:
        assert err.field == field, str(err)


OUT_OF_RANGE = [
    ("grant", ("v",), 2, "v"),
    ("grant", ("v",), 0, "v"),
    ("grant", ("expires_at",), -1, "expires_at"),
    ("grant", ("expires_at",), 0, "expires_at"),
    ("grant", ("max_depth",), -1, "max_depth"),
    ("grant", ("max_uses",), 0, "max_uses"),
    ("grant", ("max_children",), -1, "max_children"),
    ("grant", ("not_before",), 1767226500, "not_before"),  # not below expires_at
    ("grant", ("rate",), {"count": 0, "window": 60}, "rate.count"),
    ("grant", ("rate",), {"count": 1, "window": 0}, "rate.window"),
    ("grant", ("agent",), "x" * 129, "agent"),
    ("grant", ("principal",), "Alice@corp", "principal"),
    ("grant", ("log",), "", "log"),
    ("grant", ("log",), "lineage example", "log"),
    ("grant", ("log",), "lineage+example", "log"),
    ("policy", ("version",), 0, "version"),
    ("access", ("policy",), -1, "policy"),
    ("access", ("upstream_status",), 99, "upstream_status"),
    ("access", ("upstream_status",), 600, "upstream_status"),
    ("access", ("decision",), "Allow", "decision"),
    ("access", ("reason",), "x" * 513, "reason"),
    ("revocation", ("reason",), "x" * 513, "reason"),
    ("revocation", ("target", "credential"), "AB" * 32, "target.credential"),
    ("delegation", ("parent",), "ab" * 31, "parent"),
    ("key", ("op",), "rotate", "op"),
    ("genesis", ("keys", 0, "roles"), ["admin"], "keys[0].roles[0]"),
    ("genesis", ("keys", 0, "roles"), [], "keys[0].roles"),
    ("genesis", ("keys", 0, "roles"), ["operator", "decision"], "keys[0].roles"),
    ("genesis", ("keys", 0, "roles"), ["operator", "operator"], "keys[0].roles"),
    ("genesis", ("keys",), [], "keys"),
    ("grant", ("expires_at",), 2**53, None),  # outside the integer subset
]


@pytest.mark.parametrize("name, path, value, field", OUT_OF_RANGE)
def test_out_of_range_is_rejected(name, path, value, field):
    with pytest.raises(FormatError) as info:
        entry_from_json(mutated(name, path, value))
    if field is not None:
        assert isinstance(info.value, EntryFormatError)
        assert info.value.field == field, str(info.value)


def test_upstream_status_bounds_are_inclusive():
    for status in (100, 599):
        entry = entry_from_json(mutated("access", ("upstream_status",), status))
        assert entry.body.upstream_status == status


def test_genesis_needs_an_operator_and_no_key_twice():
    decision_only = mutated("genesis", ("keys", 0, "roles"), ["decision"])
    rejects(decision_only, "keys")
    obj = example_obj("genesis")
    obj["keys"].append(copy.deepcopy(obj["keys"][0]))
    rejects(obj, "keys")


def test_genesis_log_key_must_be_named_after_the_log():
    other = g.Signer("other.example/log", g.seed("log")).verifier.vkey
    rejects(mutated("genesis", ("log_key",), other), "log_key")


@pytest.mark.parametrize(
    "op, extra, field",
    [
        ("retire", {}, "principal"),  # principal only for bind
        ("retire", {"roles": ["finance"]}, "principal"),
        ("add", {}, "roles[0]"),  # add needs operator roles, not "finance"
    ],
)
def test_key_fields_depend_on_op(op, extra, field):
    obj = example_obj("key")
    obj["op"] = op
    obj.update(extra)
    rejects(obj, field)


def test_revocation_target_names_exactly_one():
    rejects(mutated("revocation", ("target",), {}), "target")
    both = {"credential": "ab" * 32, "holder": g.READER.public.b64}
    rejects(mutated("revocation", ("target",), both), "target")


@pytest.mark.parametrize(
    "kind", ["grants", "Grant", "", "checkpoint", 5, None, True], ids=lambda k: repr(k)
)
def test_unknown_kind_is_rejected(kind):
    rejects(mutated("grant", ("kind",), kind), "kind")


@pytest.mark.parametrize("kind", [[], ["grant"], {}, {"grant": 1}], ids=repr)
def test_unhashable_kind_is_rejected(kind):
    rejects(mutated("grant", ("kind",), kind), "kind")


@pytest.mark.parametrize(
    "name, path",
    [
        ("grant", ("agent",)),
        ("delegation", ("agent",)),
        ("access", ("upstream_status",)),
        ("revocation", ("target", "holder")),
    ],
)
def test_null_for_an_optional_field_is_rejected(name, path):
    rejects(mutated(name, path, None), ".".join(str(p) for p in path))


def test_entry_must_be_an_object():
    for value in ([], "grant", 1, None):
        rejects(value)
    with pytest.raises(FormatError):
        parse_entry(b"[]")


# --- size ----------------------------------------------------------------------------------------


def _policy_of_size(size: int) -> dict[str, Any]:
    """A signed policy entry whose canonical encoding is exactly ``size`` bytes."""

    def build(pad: int) -> dict[str, Any]:
        body = g.body("policy", version=1, document={"pad": "x" * pad})
        return sign_object(ENTRY_CONTEXT, body, [g.OPERATOR])

    base = len(canonical(build(0)))
    obj = build(size - base)
    assert len(canonical(obj)) == size
    return obj


def test_entry_of_the_maximum_size_parses():
    obj = _policy_of_size(MAX_ENTRY_SIZE)
    entry = parse_entry(canonical(obj))
    assert len(entry.raw) == MAX_ENTRY_SIZE
    assert entry.signed_by(g.OPERATOR.public)


def test_oversize_entry_is_rejected():
    obj = _policy_of_size(MAX_ENTRY_SIZE + 1)
    with pytest.raises(FormatError):
        parse_entry(canonical(obj))
    with pytest.raises(EntryFormatError):
        entry_from_json(obj)
    with pytest.raises(EntryFormatError):
        sign_entry(g.body("policy", version=1, document={"pad": "x" * 70000}), [g.OPERATOR])


def test_leaf_of_a_maximum_size_entry_is_too_big():
    entry = parse_entry(canonical(_policy_of_size(MAX_ENTRY_SIZE)))
    with pytest.raises(EntryFormatError):
        Leaf.build(entry, g.T0)


def test_deep_nesting_is_rejected():
    deep: Any = 1
    for _ in range(40):
        deep = {"a": deep}
    with pytest.raises(EncodingError):
        entry_from_json(mutated("policy", ("document",), deep))


# --- signatures ----------------------------------------------------------------------------------


def _two_signers() -> dict[str, Any]:
    body = g.body("policy", version=1, document={})
    return sign_object(ENTRY_CONTEXT, body, [g.OPERATOR, g.DECISION])


def test_more_than_one_signature_is_refused():
    obj = _two_signers()
    rejects(obj, "sigs")
    rejects({**obj, "sigs": []}, "sigs")
    rejects({**obj, "sigs": [obj["sigs"][0], obj["sigs"][0]]}, "sigs")
    one = sign_object(ENTRY_CONTEXT, g.body("policy", version=1, document={}), [g.OPERATOR])
    assert len(entry_from_json(one).sigs) == 1


def _sig_mutations(sig: str, kid: str) -> dict[str, dict[str, Any]]:
    raw = bytes(64)
    return {
        "not base64url": {"kid": kid, "sig": "!" + sig[1:]},
        "standard base64 alphabet": {"kid": kid, "sig": "+" + sig[1:]},
        "padded": {"kid": kid, "sig": sig + "=="},
        "non-canonical last char": {"kid": kid, "sig": sig[:-1] + "B"},
        "63 bytes": {"kid": kid, "sig": b64u_encode(raw[:63])},
        "65 bytes": {"kid": kid, "sig": b64u_encode(raw + b"\x00")},
        "empty": {"kid": kid, "sig": ""},
        "not a string": {"kid": kid, "sig": 7},
        "kid too short": {"kid": kid[:-1], "sig": sig},
        "kid with padding": {"kid": kid + "=", "sig": sig},
        "kid not a string": {"kid": None, "sig": sig},
        "missing sig": {"kid": kid},
        "missing kid": {"sig": sig},
        "not an object": [kid, sig],
    }


@pytest.mark.parametrize("how", sorted(_sig_mutations("A" * 86, "B" * 43)))
def test_malformed_signature_is_rejected(how):
    obj = example_obj("grant")
    sig = obj["sigs"][0]
    assert sig["sig"][-1] == "Q"  # 'Q' carries the two zero bits a canonical encoding needs
    obj["sigs"] = [_sig_mutations(sig["sig"], sig["kid"])[how]]
    err = rejects(obj)
    assert err.field is not None and err.field.startswith("sigs")


def test_signature_with_s_plus_l_does_not_verify():
    """A malleated signature (S + L) must not verify: otherwise one entry has two ids."""
    obj = example_obj("grant")
    sig = bytearray(__import__("base64").urlsafe_b64decode(obj["sigs"][0]["sig"] + "=="))
    s = int.from_bytes(sig[32:], "little") + L
    sig[32:] = s.to_bytes(32, "little")
    obj["sigs"][0]["sig"] = b64u_encode(bytes(sig))
    entry = entry_from_json(obj)  # well-formed ...
    assert entry.id != parse_entry(example("grant")).id
    assert not entry.signed_by(g.ALICE.public)  # ... but not a signature


def test_signature_over_other_bytes_does_not_verify():
    obj = example_obj("grant")
    obj["max_uses"] = 19
    entry = entry_from_json(obj)
    assert not entry.signed_by(g.ALICE.public)


# --- keys ----------------------------------------------------------------------------------------

SMALL_ORDER = {
    "all zero": bytes(32),
    "identity": b"\x01" + bytes(31),
    "order 2 (y = -1)": bytes.fromhex("ec" + "ff" * 30 + "7f"),
    "order 8": bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    "non-canonical y = p": bytes.fromhex("ed" + "ff" * 30 + "7f"),
}
BAD_KEYS = {
    "31 bytes": b64u_encode(g.READER.public.raw[:31]),
    "33 bytes": b64u_encode(g.READER.public.raw + b"\x00"),
    "padded": g.READER.public.b64 + "=",
    "standard base64": b64u_encode(bytes([0xFB]) + g.READER.public.raw[1:])
    .replace("-", "+")
    .replace("_", "/"),
    "non-canonical last char": g.READER.public.b64[:-1] + chr(ord(g.READER.public.b64[-1]) ^ 1),
    "empty": "",
    **{name: b64u_encode(raw) for name, raw in SMALL_ORDER.items()},
}
KEY_PLACES = [
    ("grant", ("holder",), "holder"),
    ("delegation", ("holder",), "holder"),
    ("key", ("key",), "key"),
    ("genesis", ("keys", 0, "key"), "keys[0].key"),
    ("revocation", ("target",), "target.holder"),
]


@pytest.mark.parametrize("how", sorted(BAD_KEYS))
@pytest.mark.parametrize("name, path, field", KEY_PLACES)
def test_bad_key_is_rejected(name, path, field, how):
    value = BAD_KEYS[how]
    if name == "revocation":
        value = {"holder": value}
    assert BAD_KEYS[how] != g.READER.public.b64
    rejects(mutated(name, path, value), field)


def test_bad_keys_really_are_bad():
    """The small-order inputs are 32-byte strings that only a point check refuses."""
    from lineage.verifier.errors import KeyFormatError
    from lineage.verifier.keys import PublicKey

    for raw in SMALL_ORDER.values():
        assert len(raw) == 32
        with pytest.raises(KeyFormatError):
            PublicKey(raw)
    assert PublicKey(g.READER.public.raw).b64 == g.READER.public.b64


# --- mutations never escape as raw Python errors -------------------------------------------------

ALL_RAW = [example(name) for name in NAMES] + [revocation_entry().raw]


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_byte_mutations_raise_only_format_errors(data):
    raw = bytearray(data.draw(st.sampled_from(ALL_RAW)))
    for _ in range(data.draw(st.integers(1, 4))):
        if not raw:
            break
        i = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "set", "delete", "truncate", "insert"]))
        if op == "flip":
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            raw[i] = data.draw(st.sampled_from(b'{}[]",:0123456789-.eEtfnu\\ \x00\xc3\xff'))
        elif op == "delete":
            del raw[i]
        elif op == "insert":
            raw.insert(i, data.draw(st.integers(0, 255)))
        else:
            del raw[i:]
    try:
        entry = parse_entry(bytes(raw))
    except FormatError:
        return
    # Anything accepted is canonical and round-trips.
    assert entry.raw == bytes(raw)
    assert canonical(entry.obj) == bytes(raw)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) - 2, 2**53 + 2)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.sampled_from(["grant", "ab" * 32, g.READER.public.b64, "mailbox:alice/*", "allow"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(obj: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*path, i))
    return out


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_value_mutations_raise_only_format_errors(data):
    """Structural fuzzing: replace, delete or add one value anywhere (the kind left alone)."""
    obj = copy.deepcopy(data.draw(st.sampled_from(list(all_kinds().values()))))
    paths = [p for p in _paths(obj) if p and p != ("kind",)]
    path = data.draw(st.sampled_from(paths))
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    op = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if op == "replace":
        parent[path[-1]] = data.draw(JSON_VALUES)
    elif op == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(min_size=1, max_size=12))] = data.draw(JSON_VALUES)
    else:
        parent.append(data.draw(JSON_VALUES))
    try:
        entry = entry_from_json(obj)
    except FormatError:
        return
    assert parse_entry(entry.raw) == entry


# --- signature domain separation -----------------------------------------------------------------


def test_entry_signature_is_not_an_invocation_signature():
    """An object signed as an entry does not verify as an invocation, and vice versa."""
    inv = sign_invocation(g.READER, "ab" * 32, {"type": "email", "action": "read"}, g.T0)
    body = {k: v for k, v in inv.obj.items() if k != "sigs"}
    as_entry = sign_object(ENTRY_CONTEXT, body, [g.READER])
    forged = parse_signed_invocation(as_entry)  # well-formed, the same fields ...
    assert forged.obj == {**inv.obj, "sigs": as_entry["sigs"]}
    with pytest.raises(SignatureError):
        forged.verify(g.READER.public)  # ... but signed for another purpose
    inv.verify(g.READER.public)


def test_invocation_signature_is_not_an_entry_signature():
    body = g.body("policy", version=1, document={})
    as_invocation = sign_object(INVOCATION_CONTEXT, body, [g.OPERATOR])
    entry = entry_from_json(as_invocation)
    assert not entry.signed_by(g.OPERATOR.public)
    assert entry_from_json(sign_object(ENTRY_CONTEXT, body, [g.OPERATOR])).signed_by(
        g.OPERATOR.public
    )


def test_contexts_are_distinct_and_nul_terminated():
    assert ENTRY_CONTEXT != INVOCATION_CONTEXT
    assert ENTRY_CONTEXT.endswith(b"\x00") and INVOCATION_CONTEXT.endswith(b"\x00")
    assert not INVOCATION_CONTEXT.startswith(ENTRY_CONTEXT)
    assert not ENTRY_CONTEXT.startswith(INVOCATION_CONTEXT)


# --- leaves --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_leaf_round_trips_and_hashes(name):
    raw = (EXAMPLES / f"{name}.leaf.json").read_bytes()[:-1]
    leaf = parse_leaf(raw)
    assert leaf.raw == raw
    assert leaf.entry == parse_entry(example(name))
    assert leaf_from_json(json.loads(raw)) == leaf
    assert Leaf.build(leaf.entry, leaf.time) == leaf
    expected = (EXAMPLES / f"{name}.leaf-hash").read_text().strip()
    assert leaf.hash == hashlib.sha256(b"\x00" + raw).digest()
    assert leaf.hash.hex() == expected
    assert leaf.hash != hashlib.sha256(raw).digest()


def test_parsed_entry_is_immune_to_later_mutation_of_its_input():
    obj = example_obj("grant")
    entry = entry_from_json(obj)
    leaf = Leaf.build(entry, g.T0)
    before = (leaf.raw, leaf.hash, entry.signed_message())
    obj["max_uses"] = 1000
    assert entry.body.credential.limits.max_uses == 20
    assert (leaf.raw, leaf.hash, entry.signed_message()) == before
    assert entry.raw in leaf.raw


def test_leaf_rejects_bad_time_and_extra_fields():
    raw = (EXAMPLES / "grant.leaf.json").read_bytes()[:-1]
    obj = json.loads(raw)
    for time in (-1, True, "1", None, 2**53):
        with pytest.raises(FormatError):
            leaf_from_json({**obj, "time": time})
    with pytest.raises(EntryFormatError) as info:
        leaf_from_json({**obj, "extra": 1})
    assert info.value.field == "extra"
    with pytest.raises(EntryFormatError) as info:
        leaf_from_json({"time": obj["time"]})
    assert info.value.field == "entry"
    bad_entry = copy.deepcopy(obj)
    bad_entry["entry"]["extra"] = 1
    with pytest.raises(EntryFormatError) as info:
        leaf_from_json(bad_entry)
    assert info.value.field == "entry.extra"
    with pytest.raises(EncodingError):
        parse_leaf(raw + b" ")


# --- invocations ---------------------------------------------------------------------------------

INVOCATION = (EXAMPLES / "invocation.json").read_bytes()[:-1]
REQUEST = {"type": "email", "action": "read", "resource": "mailbox:alice/inbox/msg-17"}


def test_invocation_example_round_trips_and_verifies():
    inv = parse_invocation_bytes(INVOCATION)
    assert inv.to_bytes() == INVOCATION
    assert parse_signed_invocation(json.loads(INVOCATION)) == inv
    inv.verify(g.READER.public)
    access = parse_entry(example("access"))
    assert access.body.invocation == inv


def test_signed_invocation_round_trips():
    inv = sign_invocation(g.READER, "ab" * 32, REQUEST, g.T0, nonce=b64u_encode(bytes(16)))
    assert parse_invocation_bytes(inv.to_bytes()) == inv
    assert parse_invocation_bytes(inv.to_bytes()).to_bytes() == inv.to_bytes()
    inv.verify(g.READER.public)


@pytest.mark.parametrize(
    "path, value",
    [
        (("request", "action"), "send"),
        (("request", "resource"), "mailbox:alice/inbox/msg-18"),
        (("request", "attributes", "sender"), "boss@corp.example"),
        (("credential",), "cd" * 32),
        (("iat",), 1767225661),
        (("nonce",), "A" * 22),
    ],
)
def test_tampered_invocation_fails_verify(path, value):
    obj = json.loads(INVOCATION)
    cur = obj
    for key in path[:-1]:
        cur = cur[key]
    assert cur[path[-1]] != value
    cur[path[-1]] = value
    inv = parse_signed_invocation(obj)
    with pytest.raises(SignatureError):
        inv.verify(g.READER.public)


def test_invocation_by_the_wrong_holder_fails():
    inv = parse_invocation_bytes(INVOCATION)
    for key in (g.AGENT, g.MALLORY, g.ALICE):
        with pytest.raises(SignatureError):
            inv.verify(key.public)
    # a signature by another key, relabelled with the holder's kid, fails too
    forged = sign_invocation(g.MALLORY, inv.credential, inv.obj["request"], inv.iat, inv.nonce)
    obj = {**forged.obj, "sigs": [{"kid": g.READER.kid, "sig": forged.obj["sigs"][0]["sig"]}]}
    with pytest.raises(SignatureError):
        parse_signed_invocation(obj).verify(g.READER.public)


@pytest.mark.parametrize(
    "nonce, ok",
    [
        (b64u_encode(bytes(15)), False),  # 20 characters
        ("A" * 21, False),
        (b64u_encode(bytes(16)), True),  # 22 characters
        (b64u_encode(bytes(64)), True),  # 86 characters
        ("A" * 87, False),
        (b64u_encode(bytes(65)), False),
        ("A" * 21 + "=", False),
        ("A" * 21 + "+", False),
        ("", False),
    ],
)
def test_nonce_length_bounds(nonce, ok):
    obj = json.loads(INVOCATION)
    obj["nonce"] = nonce
    if ok:
        assert parse_signed_invocation(obj).nonce == nonce
    else:
        with pytest.raises(EntryFormatError) as info:
            parse_signed_invocation(obj)
        assert info.value.field == "nonce"


@pytest.mark.parametrize("nonce", ["A" * 25, "A" * 29, "A" * 21 + "B"], ids=["25", "29", "bits"])
def test_nonce_must_be_canonical_base64url(nonce):
    obj = json.loads(INVOCATION)
    obj["nonce"] = nonce
    with pytest.raises(EntryFormatError):
        parse_signed_invocation(obj)


def test_invocation_shape_is_strict():
    obj = json.loads(INVOCATION)
    for field in ("credential", "request", "nonce", "iat", "sigs"):
        with pytest.raises(EntryFormatError) as info:
            parse_signed_invocation({k: v for k, v in obj.items() if k != field})
        assert info.value.field == field
    with pytest.raises(EntryFormatError):
        parse_signed_invocation({**obj, "sigs": obj["sigs"] * 2})  # exactly one signature
    for iat in (0, -1, True, "1767225660"):
        with pytest.raises(EntryFormatError):
            parse_signed_invocation({**obj, "iat": iat})
    with pytest.raises(EncodingError):
        parse_invocation_bytes(INVOCATION + b"\n")


def test_oversize_invocation_is_rejected():
    big = {**REQUEST, "attributes": {f"a{i}": "x" * 1000 for i in range(17)}}
    with pytest.raises(FormatError):
        inv = sign_invocation(g.READER, "ab" * 32, big, g.T0)
        parse_invocation_bytes(inv.to_bytes())
    obj = json.loads(INVOCATION)
    obj["request"]["attributes"]["pad"] = "x" * MAX_INVOCATION_SIZE
    with pytest.raises(FormatError):
        parse_invocation_bytes(canonical(obj))
