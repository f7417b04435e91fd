"""How the gateway reads a request's fields and path (docs/GATEWAY.md §3): each field kind
as the upstream would read it, and the path's one canonical spelling."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lineage.client.gateway import (
    Field,
    MappingError,
    Route,
    canonical_segments,
    field_attributes,
)

from .budget import examples

UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def route(*fields: Field) -> Route:
    return Route("api", "web", "https://api.example.com:443", "url", {}, fields)


def body_field(kind: str, value) -> dict:
    r = route(Field("x", "body", "x", kind))
    return field_attributes(r, "", json.dumps({"x": value}).encode(), "application/json")


@pytest.mark.parametrize(
    ("value", "origin"),
    [
        ("https://hooks.example.com/cb", "https://hooks.example.com:443"),
        ("http://hooks.example.com:8080/a?b#c", "http://hooks.example.com:8080"),
        ("https://HOOKS.example.com/", "https://hooks.example.com:443"),
        ("wss://stream.example.com:9443", "wss://stream.example.com:9443"),
        ("https://10.0.0.1/x", "https://10.0.0.1:443"),
    ],
)
def test_a_url_field_is_where_a_fetcher_connects(value, origin):
    assert body_field("url", value) == {"x": origin}


@pytest.mark.parametrize(
    "value",
    [
        "https://trusted.example.com@evil.example/x",  # userinfo: the host is evil
        "https://evil.example\\@trusted.example.com/",  # a backslash: WHATWG reads a path
        "https://%65vil.example/",  # a percent in the host: decoded by some
        "https://[::1]/",  # IP literal
        "https://0x7f.1/",  # numeric host a browser reads as 127.0.0.1
        "https://2130706433/",
        "https://evil.example /x",  # whitespace
        "https://evil\u2024example/",  # non-ASCII look-alike
        "ftp://files.example.com/x",  # no default port for the scheme
        "//evil.example/x",  # no scheme
        "HTTPS://evil.example/",  # upper-case scheme
        "javascript://x:1/",  # a scheme browsers run
        42,
    ],
)
def test_a_url_field_two_readers_could_read_differently_is_refused(value):
    with pytest.raises(MappingError) as info:
        body_field("url", value)
    assert info.value.status == 400 and info.value.field == "body.x"


@pytest.mark.parametrize("value", ["/", "/reports/q3", "/a/b%3Bc"])
def test_a_path_field_is_its_segments(value):
    assert body_field("path", value) == {"x": value}


@pytest.mark.parametrize(
    "value", ["reports", "/reports/../secrets", "/a//b", "/a/", "/a/%2e%2e", "/a/%2F", "/a/%7e"]
)
def test_a_path_field_not_in_its_one_spelling_is_refused(value):
    with pytest.raises(MappingError):
        body_field("path", value)


@pytest.mark.parametrize("value", [True, 1.0, 1.5, 2**53, "7", None])
def test_an_integer_field_is_a_json_integer(value):
    with pytest.raises(MappingError):
        body_field("integer", value)


def test_integer_fields_from_the_query_are_decimal():
    r = route(Field("n", "query", "n", "integer"))
    assert field_attributes(r, "n=-12", None, None) == {"n": -12}
    for bad in ("n=012", "n=1e3", "n=+1", "n=0x10", "n=", "n=12345678901234567"):
        with pytest.raises(MappingError):
            field_attributes(r, bad, None, None)


def test_a_string_field_is_at_most_1024_characters():
    assert body_field("string", "a" * 1024) == {"x": "a" * 1024}
    with pytest.raises(MappingError):
        body_field("string", "a" * 1025)


segment_chars = st.sampled_from([*"abcXYZ09-._~!$&'()*+,;=:@", "%41", "%7e", "%3b", "%20"])


@settings(max_examples=examples(300))
@given(st.lists(st.lists(segment_chars, min_size=1, max_size=5).map("".join), max_size=6))
def test_the_canonical_spelling_is_a_fixed_point(parts):
    """Whatever path is accepted, its canonical spelling is accepted and reads the same:
    what the gateway decides on is what it forwards, and deciding again changes nothing."""
    raw = "/" + "/".join(parts) if parts else "/"
    try:
        segments = canonical_segments(raw)
    except MappingError:
        return
    again = canonical_segments("/" + "/".join(segments) if segments else "/")
    assert again == segments
    for escape in re.findall(r"%(..)", "/".join(segments)):
        assert escape == escape.upper()  # upper-case hex (RFC 3986 §6.2.2.1)
        assert chr(int(escape, 16)) not in UNRESERVED  # escaped unreserved: decoded (§6.2.2.2)
