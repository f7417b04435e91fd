"""The canonical JSON subset: byte-for-byte RFC 8785 (checked against the rfc8785 package)."""

import contextlib
import json

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from lineage.verifier.errors import EncodingError, FormatError
from lineage.verifier.jcs import MAX_SAFE_INTEGER, canonical, parse, parse_canonical

ascii_keys = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=8)
strings = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
ints = st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
values = st.recursive(
    st.none() | st.booleans() | ints | strings,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(ascii_keys, inner, max_size=5),
    max_leaves=30,
)


@given(values)
def test_canonical_matches_rfc8785(value):
    assert canonical(value) == rfc8785.dumps(value)


@given(values)
def test_round_trip_both_ways(value):
    data = canonical(value)
    assert parse_canonical(data) == value
    assert canonical(parse_canonical(data)) == data


@given(values)
def test_any_whitespace_parses_but_only_canonical_is_canonical(value):
    pretty = json.dumps(value, indent=2, ensure_ascii=True).encode()
    assert parse(pretty) == value
    if pretty != canonical(value):
        with pytest.raises(EncodingError):
            parse_canonical(pretty)


@pytest.mark.parametrize(
    "data, why",
    [
        (b'{"a":1.5}', "float"),
        (b'{"a":1e3}', "exponent"),
        (b'{"a":1.0}', "float that is an integer"),
        (b'{"a":9007199254740992}', "integer above 2**53-1"),
        (b'{"a":-9007199254740992}', "integer below -(2**53-1)"),
        (b'{"a":1,"a":2}', "duplicate key"),
        ('{"\u00e9":1}'.encode(), "non-ASCII key"),
        (b'{"a":NaN}', "NaN"),
        (b'{"a":Infinity}', "Infinity"),
        (b'{"a":"\\ud800"}', "lone surrogate"),
        (b"\xff", "not UTF-8"),
        (b"\xef\xbb\xbf{}", "byte order mark"),
        (b"[" * 40 + b"]" * 40, "too deep"),
        (b"[" * 100000 + b"]" * 100000, "far too deep"),
        (b'{"a":1', "truncated"),
        (b"{} {}", "trailing data"),
        (b"1" * 5000, "huge integer literal"),
    ],
)
def test_outside_the_subset_is_rejected(data, why):
    with pytest.raises(EncodingError):
        parse(data)


@pytest.mark.parametrize(
    "value", [1.5, {1: "a"}, {"\u00e9": 1}, 2**53, float("nan"), b"bytes", {"a": object()}]
)
def test_encoder_refuses_what_is_outside_the_subset(value):
    with pytest.raises(EncodingError):
        canonical(value)


def test_size_limit():
    with pytest.raises(EncodingError):
        parse(b'"' + b"a" * 100 + b'"', max_size=50)


@given(st.binary(max_size=64))
def test_random_bytes_raise_only_format_errors(data):
    with contextlib.suppress(FormatError):
        parse(data)


def test_known_vector():
    # RFC 8785 §3.2.3 sorts by UTF-16 code units; on ASCII keys that is byte order.
    value = {"b": [1, "\n\u2028\x7f\x1f"], "a": {"z": True, "A": None}, "\u0000": -0}
    expected = b'{"\\u0000":0,"a":{"A":null,"z":true},"b":[1,"\\n\xe2\x80\xa8\x7f\\u001f"]}'
    assert canonical(value) == expected
