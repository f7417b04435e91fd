"""Canonical resource names and patterns (docs/SCOPE.md §2): tables, round trips, matching."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lineage.verifier.errors import FormatError, ResourceError
from lineage.verifier.fields import NOT_IN_TEXT
from lineage.verifier.resource import (
    MAX_LENGTH,
    MAX_SEGMENTS,
    NOT_FETCHED,
    RESERVED_NAMESPACES,
    Resource,
    matches,
    parse_resource,
    pattern_within,
)
from tests.budget import examples

ACCEPTED = [
    "https://mail.corp:443",
    "https://mail.corp:443/inbox/msg-17",
    "https://mail.corp:443/inbox/*",
    "https://mail.corp:443/*",
    "http://10.0.0.1:8080/a",
    "http://255.255.255.255:1/a",
    "https://a-b.c9.example:65535/x",
    "coap+tcp://h:5683/x",
    "mailbox:alice/inbox/msg-17",
    "mailbox:alice/*",
    "mailbox:*",
    "urn:ietf:params:oauth",  # ":" is a segment character
    "drive:Folder/Report.PDF",  # paths are case-sensitive: upper case is fine there
    "ns:a%2Ab",  # a literal "*" is written %2A
    "ns:%25",  # a literal "%"
    "ns:%C3%A9t%C3%A9",  # UTF-8 is percent-encoded, upper-case hex
    "ns:~user/!$&'()+,;=:@",
    "ns:...",  # three dots is an ordinary segment
    "ns:a.b/.c/d.",
    # Next to the forms that servers reinterpret (§2.1 rules 9-10), and still valid:
    "ns:a;b/c;x=1",  # ";" after a proper segment
    "ns:...;x/..a;/.a;b",  # the part before ";" is not "." or ".."
    "ns:a%3B",  # an encoded ";" after a proper segment
    "ns:%25x/%25G0/%255/a%25",  # "%25" (a literal "%") not followed by two hex digits
    "ns:%E2%82%AC/%F0%9F%98%80",  # UTF-8: the euro sign, an emoji
    "ns:%5B%5D%7C%20",  # other escaped ASCII: [ ] | space
    "httpx:a",  # namespaces that merely look like reserved schemes
    "web+https:a",
    "https.old:a",
    "ws2:a",
    "http://h:80/a",  # the URL form of a reserved scheme is the URL it is
]

REJECTED = [
    ("HTTPS://mail.corp:443", "scheme must be lower-case"),
    ("Mailbox:alice", "namespace must be lower-case"),
    ("https://Mail.corp:443", "host must be lower-case"),
    ("https://mail.corp", "port must be explicit"),
    ("https://mail.corp:", "port must be explicit"),
    ("https://mail.corp:0443", "leading zero"),
    ("https://mail.corp:0", "out of range"),
    ("https://mail.corp:65536", "out of range"),
    ("https://mail.corp:99999999999", "out of range"),
    ("https://mail.corp:+443", "not decimal"),
    ("https://mail.corp:443/.", "dot-segment"),
    ("https://mail.corp:443/a/..", "dot-segment"),
    ("ns:./a", "dot-segment"),
    ("ns:a//b", "empty segment"),
    ("ns:/a", "empty segment"),
    ("https://mail.corp:443//a", "empty segment"),
    ("https://mail.corp:443/", "trailing '/'"),
    ("ns:a/", "trailing '/'"),
    ("ns:a%2Fb", "percent-encoded '/'"),
    ("ns:a%2fb", "lower-case hex"),
    ("ns:%2a", "lower-case hex"),
    ("ns:%c3%a9", "lower-case hex"),
    ("ns:%41", "unreserved character 'A'"),
    ("ns:%7E", "unreserved character '~'"),
    ("ns:%2E%2E", "unreserved character '.'"),
    ("ns:%", "malformed percent-escape"),
    ("ns:%4", "malformed percent-escape"),
    ("ns:%GG", "malformed percent-escape"),
    ("ns:ab*", "partial wildcard"),
    ("ns:*x", "partial wildcard"),
    ("ns:a/**", "partial wildcard"),
    ("ns:a/*/b", "only allowed as the final segment"),
    ("https://h:1/*/b", "only allowed as the final segment"),
    ("https://h:1/a?x=1", "query"),
    ("https://h:1/a#top", "fragment"),
    ("https://user@h:1/a", "userinfo"),
    ("https://user:pw@h:1/a", "userinfo"),
    ("ns:a b", "whitespace"),
    (" ns:a", "whitespace"),
    ("ns:a\n", "whitespace"),
    ("ns:a\tb", "whitespace"),
    ("ns:caf\u00e9", "non-ASCII"),
    ("https://b\u00fccher.de:443", "non-ASCII"),
    ("https://[::1]:443/a", "IPv6"),
    ("https://01.2.3.4:1", "dotted-quad"),
    ("https://1.2.3:1", "dotted-quad"),
    ("https://256.1.1.1:1", "dotted-quad"),
    ("https://0x7f.1:1", "dotted-quad"),
    ("https://mail.corp.:443", "DNS name"),
    ("https://-a.corp:443", "DNS name"),
    ("https://a_b.corp:443", "DNS name"),
    ("https://:443", "empty host"),
    ("ns:", "at least one segment"),
    ("ns", "expected scheme"),
    (":a", "expected scheme"),
    ("1ns:a", "is not [a-z]"),
    ("ns:a\\b", "not allowed in a segment"),
    ("ns:a<b", "not allowed in a segment"),
    ("ns:" + "/".join(["a"] * (MAX_SEGMENTS + 1)), "segments"),
    ("ns:" + "a" * MAX_LENGTH, "longer than"),
    # §2.1 rule 9: forms that some servers decode or cut into another path
    ("https://h:443/public/..;/admin", "dot-segment '..' to servers that drop ';'"),
    ("ns:a/..;jsessionid=1/b", "dot-segment '..' to servers that drop ';'"),
    ("ns:a/.;/b", "dot-segment '.' to servers that drop ';'"),
    ("ns:..;", "dot-segment '..'"),
    ("ns:a/..%3B/b", "dot-segment '..'"),
    ("ns:a/;x", "an empty segment to servers that drop ';'"),
    ("ns:a/%3Bx", "an empty segment"),
    ("ns:a/;", "an empty segment"),
    ("ns:a%5Cb", "percent-encoded '\\' (%5C)"),
    ("https://h:443/a/..%5C..%5Cadmin", "(%5C)"),
    ("ns:a%5cb", "lower-case hex"),  # refused already: lower-case hex
    ("ns:a%00", "control character (%00)"),
    ("ns:a%00.pdf", "control character (%00)"),
    ("ns:a%0Ab", "control character (%0A)"),
    ("ns:a%0D%0Ab", "control character (%0D)"),
    ("ns:a%1F", "control character (%1F)"),
    ("ns:a%7F", "control character (%7F)"),
    ("ns:%252E%252E", "double percent-encoding %252E"),
    ("https://h:443/a/%252E%252E/admin", "double percent-encoding"),
    ("ns:a%252Fb", "double percent-encoding %252F"),
    ("ns:a%255Cb", "double percent-encoding"),
    ("ns:a%2500", "double percent-encoding"),
    ("ns:%2525", "double percent-encoding"),
    ("ns:a%252e", "double percent-encoding"),  # lower-case hex after %25: decodes to %2e
    ("ns:%C0%AE%C0%AE", "not UTF-8"),  # the overlong encoding of ".."
    ("ns:%C0%AF", "not UTF-8"),  # an overlong "/"
    ("ns:%FF", "not UTF-8"),
    ("ns:caf%E9", "not UTF-8"),  # Latin-1
    ("ns:%C3", "not UTF-8"),  # truncated
    ("ns:%ED%A0%80", "not UTF-8"),  # a UTF-16 surrogate
    # §2.1 rule 10: URL schemes are not namespaces
    ("https:api.example.com/v1/x", "reserved URL scheme"),
    ("http:h/a", "reserved URL scheme"),
    ("https:*", "reserved URL scheme"),
    ("ws:h/a", "reserved URL scheme"),
    ("wss:h/a", "reserved URL scheme"),
    ("ftp:h/a", "reserved URL scheme"),
    ("file:etc/passwd", "reserved URL scheme"),
    ("data:text,hello", "reserved URL scheme"),
    ("javascript:alert(1)", "reserved URL scheme"),
    ("vbscript:x", "reserved URL scheme"),
    ("blob:h/a", "reserved URL scheme"),
    ("about:blank", "reserved URL scheme"),
    ("filesystem:h/a", "reserved URL scheme"),
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_canonical_names_are_accepted_and_round_trip(text: str) -> None:
    r = parse_resource(text)
    assert str(r) == text
    assert parse_resource(str(r)) == r
    assert Resource(r.prefix, r.segments, r.wildcard) == r


@pytest.mark.parametrize(("text", "why"), REJECTED)
def test_non_canonical_names_are_rejected_saying_why(text: str, why: str) -> None:
    with pytest.raises(ResourceError) as info:
        parse_resource(text)
    assert why in str(info.value)
    assert isinstance(info.value, FormatError)


@pytest.mark.parametrize("value", [None, 17, b"ns:a", ["ns:a"]])
def test_non_strings_are_a_resource_error(value: object) -> None:
    with pytest.raises(ResourceError, match="must be a string"):
        parse_resource(value)  # type: ignore[arg-type]


def test_parts_of_the_parsed_value() -> None:
    assert parse_resource("https://mail.corp:443/inbox/*") == Resource(
        "https://mail.corp:443", ("inbox",), True
    )
    assert parse_resource("mailbox:alice/inbox") == Resource("mailbox", ("alice", "inbox"))
    assert parse_resource("https://h:1").is_url
    assert not parse_resource("ns:a").is_url


def test_flags_restrict_the_accepted_forms() -> None:
    with pytest.raises(ResourceError, match="wildcard is not allowed"):
        parse_resource("ns:a/*", allow_wildcard=False)
    with pytest.raises(ResourceError, match="wildcard is not allowed"):
        parse_resource("https://h:1/*", allow_wildcard=False, url_only=True)
    with pytest.raises(ResourceError, match="expected a URL"):
        parse_resource("ns:a", url_only=True)
    assert parse_resource("https://h:1/a", allow_wildcard=False, url_only=True).segments == ("a",)


@pytest.mark.parametrize(
    ("prefix", "segments", "wildcard"),
    [
        ("HTTPS://h:1", (), False),
        ("https://h", (), False),
        ("ns", (), False),  # a name needs a segment
        ("ns", ("*",), False),  # the wildcard is a flag, not a segment
        ("ns", ("a/b",), False),
        ("ns", ("",), False),
        ("ns", ("..",), False),
        ("ns:x", ("a",), False),
        ("https://h:1", ("a",), 1),
        ("ns", ["a"], False),
        ("ns", (1,), False),
    ],
)
def test_the_constructor_refuses_non_canonical_parts(
    prefix: str, segments: tuple, wildcard: bool
) -> None:
    with pytest.raises(ResourceError):
        Resource(prefix, segments, wildcard)


# --- generated canonical names ---

_PCHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()+,;=:@"
_ESCAPES = [  # escaped ASCII that stays valid: not unreserved, "/", "\\" or a control
    f"%{b:02X}"
    for b in range(0x20, 0x7F)
    if chr(b) not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/\\"
]
_UTF8 = (
    st.characters(min_codepoint=0x80, exclude_categories=("Cs",))
    .filter(lambda ch: NOT_IN_TEXT.search(ch) is None)
    .map(lambda ch: "".join(f"%{b:02X}" for b in ch.encode("utf-8")))
)


def _servers_agree(seg: str) -> bool:
    """Not refused by §2.1 rule 9: no dot-segment before a ";", no "%25" then hex."""
    head = re.split(r";|%3B", seg, maxsplit=1)[0]
    return head not in ("", ".", "..") and not re.search("%25[0-9A-Fa-f]{2}", seg)


segments = (
    st.lists(
        st.one_of(st.sampled_from(_PCHARS), st.sampled_from(_ESCAPES), _UTF8),
        min_size=1,
        max_size=6,
    )
    .map("".join)
    .filter(lambda s: s not in (".", "..") and _servers_agree(s))
)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
dns_hosts = (
    st.lists(labels, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda h: not h.split(".")[-1].isdigit() and not h.split(".")[-1].startswith("0x"))
)
ipv4_hosts = st.lists(st.integers(0, 255), min_size=4, max_size=4).map(
    lambda xs: ".".join(map(str, xs))
)
schemes = st.from_regex(r"[a-z][a-z0-9+.-]{0,7}", fullmatch=True)
namespaces = st.one_of(
    schemes, st.sampled_from(sorted(RESERVED_NAMESPACES)).map(lambda x: x + "x")
).filter(lambda x: x not in RESERVED_NAMESPACES)
url_prefixes = st.builds(
    lambda s, h, p: f"{s}://{h}:{p}",
    schemes.filter(lambda s: s not in NOT_FETCHED),
    st.one_of(dns_hosts, ipv4_hosts),
    st.integers(1, 65535),
)


@st.composite
def resources(draw: st.DrawFn) -> Resource:
    prefix = draw(st.one_of(url_prefixes, namespaces))
    wildcard = draw(st.booleans())
    low = 0 if "://" in prefix or wildcard else 1
    segs = draw(st.lists(segments, min_size=low, max_size=5))
    return Resource(prefix, tuple(segs), wildcard)


def _text(prefix: str, segs: list[str], wildcard: bool) -> str:
    parts = [*segs, "*"] if wildcard else segs
    if "://" in prefix:
        return prefix + "".join("/" + p for p in parts)
    return prefix + ":" + "/".join(parts)


@settings(max_examples=examples(300))
@given(resources())
def test_parse_of_str_is_identity(r: Resource) -> None:
    assert parse_resource(str(r)) == r


@settings(max_examples=examples(300))
@given(
    st.one_of(url_prefixes, namespaces),
    st.lists(segments, max_size=5),
    st.booleans(),
)
def test_str_of_parse_is_identity(prefix: str, segs: list[str], wildcard: bool) -> None:
    if "://" not in prefix and not segs and not wildcard:
        segs = ["x"]
    text = _text(prefix, segs, wildcard)
    r = parse_resource(text)
    assert str(r) == text
    assert r.wildcard is wildcard and list(r.segments) == segs


@settings(max_examples=examples(300))
@given(resources(), st.sampled_from(["upper", "slash", "dot", "star"]))
def test_a_single_corruption_is_rejected(r: Resource, how: str) -> None:
    text = str(r)
    if how == "upper":  # scheme or namespace in upper case
        bad = text[0].upper() + text[1:]
    elif how == "slash":  # a trailing "/" (an empty final segment)
        bad = text + "/"
    elif how == "dot":  # a dot-segment
        bad = text.rstrip("*").rstrip("/").rstrip(":") + (
            "/.." if r.is_url or r.segments else ":.."
        )
    else:  # a partial wildcard
        bad = text + "x*" if not r.wildcard else text + "x"
    with pytest.raises(ResourceError):
        parse_resource(bad)


# --- forms that servers reinterpret (§2.1 rules 9 and 10), wherever they appear ---

INSIDE = ["%5C", "%00", "%0A", "%1F", "%7F", "%252E", "%252F", "%2541", "%C0%AE", "%FF", "%E2%82"]
HEADS = ["..;", ".;", ";", "..%3B", ".%3B", "%3B"]


@settings(max_examples=examples(300))
@given(resources(), st.data())
def test_a_form_that_servers_reinterpret_is_refused_anywhere(r: Resource, data) -> None:
    """Inside any segment, at its start or end: an escape of rule 9 is refused; a segment
    that is a dot-segment or empty up to its first ";" is refused; so is a reserved scheme
    as the namespace of any name or pattern."""
    segs = list(r.segments) or ["x"]
    k = data.draw(st.integers(0, len(segs) - 1))
    if data.draw(st.booleans()):
        form = data.draw(st.sampled_from(INSIDE))
        segs[k] = data.draw(st.sampled_from([form + segs[k], segs[k] + form]))
    else:
        segs[k] = data.draw(st.sampled_from(HEADS)) + data.draw(st.sampled_from(["", "x=1"]))
    with pytest.raises(ResourceError):
        parse_resource(_text(r.prefix, segs, r.wildcard))
    with pytest.raises(ResourceError):
        Resource(r.prefix, tuple(segs), r.wildcard)
    reserved = data.draw(st.sampled_from(sorted(RESERVED_NAMESPACES)))
    with pytest.raises(ResourceError, match="reserved URL scheme"):
        parse_resource(_text(reserved, list(r.segments) or ["x"], r.wildcard))


def _refused(text: str, why: str) -> None:
    with pytest.raises(ResourceError, match=re.escape(why)):
        parse_resource(text)


def test_a_dot_segment_behind_a_semicolon_is_refused() -> None:
    """Tomcat and Spring read "..;" as "..": "public/..;/admin" would leave "public/*"."""
    for seg in ("..;", ".;", "..;jsessionid=1", ".;x", "..%3B", ".%3Bx"):
        _refused(f"https://h:443/public/{seg}/admin", "to servers that drop ';' parameters")
    for seg in (";", ";x=1", "%3B", "%3Bx"):  # "public/;" would be read as "public/"
        _refused(f"https://h:443/public/{seg}", "is an empty segment to servers")
    from lineage.verifier.errors import EntryFormatError
    from lineage.verifier.scope import parse_scope

    with pytest.raises(EntryFormatError) as info:  # so no delegation can name it
        parse_scope([{"type": "t", "actions": ["a"], "resources": ["https://h:443/a/..;/b"]}])
    assert info.value.field == "scope[0].resources[0]"


def test_an_encoded_backslash_is_refused() -> None:
    """Windows servers read "%5C" as a separator: "a/..%5C..%5Cadmin" climbs out of "a"."""
    _refused("https://h:443/a/..%5C..%5Cadmin", "percent-encoded '\\' (%5C)")
    _refused("ns:a%5C", "(%5C)")
    _refused("ns:a%5c", "lower-case hex")


def test_an_encoded_nul_or_control_character_is_refused() -> None:
    """ "a%00.pdf" is "a" to C-string servers; encoded CR LF split lines."""
    for b in [*range(0x20), 0x7F]:
        _refused(f"ns:a%{b:02X}.pdf", f"percent-encoded control character (%{b:02X})")


def test_double_percent_encoding_is_refused() -> None:
    """ "%252E%252E" is ".." to a server that decodes twice."""
    for hex2 in ("2E", "2F", "5C", "00", "41", "2e", "25", "3B"):
        _refused(f"ns:a/%25{hex2}/b", "double percent-encoding")
    for fine in ("ns:%25", "ns:%25x", "ns:a%25/b", "ns:%255", "ns:%25G1", "ns:%25%20"):
        assert str(parse_resource(fine)) == fine  # a literal "%" is still written "%25"


def test_percent_encoded_octets_must_be_utf8() -> None:
    """ "%C0%AE" is an overlong "." that some decoders accept: one character, one spelling."""
    for bad in (
        "%C0%AE%C0%AE",
        "%C0%AF",
        "%E0%80%AE",
        "%FF",
        "%E9",
        "%C3",
        "%ED%A0%80",
        "%F4%90%80%80",
    ):
        _refused(f"ns:a/{bad}/b", "are not UTF-8")
    assert parse_resource("ns:caf%C3%A9/%F4%8F%BF%BF").segments == ("caf%C3%A9", "%F4%8F%BF%BF")


def test_a_url_scheme_is_not_a_namespace() -> None:
    """WHATWG URL reads "https:api.example.com/v1/x" as "https://api.example.com/v1/x"."""
    for scheme in sorted(RESERVED_NAMESPACES):
        _refused(f"{scheme}:api.example.com/v1/x", "reserved URL scheme")
        _refused(f"{scheme}:*", "reserved URL scheme")
        with pytest.raises(ResourceError, match="reserved URL scheme"):
            Resource(scheme, ("x",))
    assert parse_resource("https://api.example.com:443/v1/x").is_url  # the one spelling
    assert {"http", "https", "ws", "wss", "ftp", "file", "data"} <= RESERVED_NAMESPACES
    assert {"javascript", "blob"} <= RESERVED_NAMESPACES


def test_the_examples_of_scope_md_section_2_1_are_decided_as_written() -> None:
    """docs/SCOPE.md lists refused names, then names that are still valid: check both."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "SCOPE.md").read_text()
    refused = doc.split("Refused, with the reason:")[1].split("Still valid:")[0]
    valid = doc.split("Still valid:")[1].split("\n\n")[0]
    names = [
        [x for x in re.findall(r"`([^`]+)`", part) if ":" in x and not x.startswith("%")]
        for part in (refused, valid)
    ]
    assert len(names[0]) > 30 and len(names[1]) >= 7
    for text in names[0]:
        with pytest.raises(ResourceError):
            parse_resource(text)
    for text in names[1]:
        assert str(parse_resource(text)) == text


def test_fixtures_and_docs_use_no_refused_name() -> None:
    """The names of the fixtures and of the docs' examples all still parse."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    texts = [p.read_text() for p in (root / "docs").glob("*.md")]
    texts += [p.read_text() for p in (root / "fixtures").rglob("*") if p.suffix in (".py", ".json")]
    found = set()
    for text in texts:
        for _key, value in re.findall(r'"(resources?|locations?)": ?(\[[^\]]*\]|"[^"]*")', text):
            found.update(re.findall(r'"([^"]+)"', value))
    assert "mailbox:alice/*" in found
    for name in found:
        if "{" not in name:  # f-string templates in the generators
            parse_resource(name)


# --- matching: checked against a naive reference written on the text ---


def naive_matches(pattern: str, name: str) -> bool:
    """docs/SCOPE.md §2.3 read literally on the canonical text."""
    if not pattern.endswith("*"):
        return name == pattern
    base = pattern[:-1]  # keeps the "/" or ":" before the "*"
    return name.startswith(base) and len(name) > len(base)


small_segments = st.sampled_from(["a", "b", "c"])
small_prefixes = st.sampled_from(["ns", "nt", "https://h:443", "https://h:4430"])


@st.composite
def small_resources(draw: st.DrawFn, wildcard: bool | None = None) -> Resource:
    prefix = draw(small_prefixes)
    w = draw(st.booleans()) if wildcard is None else wildcard
    low = 0 if "://" in prefix or w else 1
    segs = draw(st.lists(small_segments, min_size=low, max_size=4))
    return Resource(prefix, tuple(segs), w)


@settings(max_examples=examples(500))
@given(small_resources(), small_resources(wildcard=False))
def test_matches_agrees_with_the_naive_reference(pattern: Resource, name: Resource) -> None:
    assert matches(pattern, name) == naive_matches(str(pattern), str(name))


@settings(max_examples=examples(300))
@given(small_resources(), small_resources(), st.lists(small_resources(wildcard=False), max_size=20))
def test_pattern_within_is_sound(child: Resource, parent: Resource, names: list[Resource]) -> None:
    if pattern_within(child, parent):
        for n in [*names, *_names_under(child)]:
            if matches(child, n):
                assert matches(parent, n), (str(child), str(parent), str(n))


def _names_under(p: Resource) -> list[Resource]:
    """Names that ``p`` matches or nearly matches, to aim the soundness check."""
    base = [Resource(p.prefix, p.segments)] if p.segments or p.is_url else []
    return base + [Resource(p.prefix, (*p.segments, *tail)) for tail in (("a",), ("z", "b"))]


def _universe() -> list[Resource]:
    out = []
    for prefix in ("ns", "https://h:443"):
        for n in range(0 if prefix != "ns" else 1, 6):
            out += [Resource(prefix, segs) for segs in itertools.product("abz", repeat=n)]
    return out


def test_pattern_within_is_exact_on_a_small_universe() -> None:
    universe = _universe()
    patterns = [
        Resource(prefix, segs, w)
        for prefix in ("ns", "https://h:443")
        for n in range(4)
        for segs in itertools.product("ab", repeat=n)
        for w in (False, True)
        if w or n or prefix != "ns"
    ]
    matched = {p: frozenset(n for n in universe if matches(p, n)) for p in patterns}
    for child, parent in itertools.product(patterns, repeat=2):
        assert pattern_within(child, parent) == (matched[child] <= matched[parent]), (
            str(child),
            str(parent),
        )


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("mailbox:alice/*", "mailbox:alice/inbox", True),
        ("mailbox:alice/*", "mailbox:alice/inbox/msg-17", True),
        ("mailbox:alice/*", "mailbox:alice", False),  # "*" is one or more segments
        ("mailbox:alice/*", "mailbox:alicex/inbox", False),  # segment by segment
        ("mailbox:a/b/*", "mailbox:a/bc/d", False),
        ("mailbox:*", "mailbox:alice", True),
        ("mailbox:*", "mailboxes:alice", False),
        ("https://h:443/*", "https://h:443/a", True),
        ("https://h:443/*", "https://h:443", False),
        ("https://h:443/*", "https://h:4430/a", False),
        ("https://h:443/a", "https://h:443/a", True),
        ("https://h:443/a", "https://h:443/a/b", False),
        ("ns:a%2Ab", "ns:a%2Ab", True),
    ],
)
def test_matching_examples(pattern: str, name: str, expected: bool) -> None:
    assert matches(parse_resource(pattern), parse_resource(name, allow_wildcard=False)) is expected


def test_matches_needs_a_name_not_a_pattern() -> None:
    with pytest.raises(ResourceError, match="needs a name"):
        matches(parse_resource("ns:*"), parse_resource("ns:a/*"))
    with pytest.raises(TypeError):
        matches("ns:*", parse_resource("ns:a"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pattern_within(parse_resource("ns:a"), "ns:*")  # type: ignore[arg-type]


# Found from outside after D40/D41: the URL form let the schemes D41 names through, and
# an encoded C1 control or bidi override passed the octet rules.


@pytest.mark.parametrize(
    "text",
    [
        "javascript://h:443/%E2%80%A8alert",
        "data://h:443/x",
        "vbscript://h:443/x",
        "file://h:443/etc/passwd",
        "about://h:443/blank",
        "blob://h:443/x",
        "filesystem://h:443/x",
    ],
)
def test_a_scheme_that_is_run_or_shown_is_refused_in_the_url_form_too(text):
    with pytest.raises(ResourceError):
        parse_resource(text)


@pytest.mark.parametrize("text", ["https://h:443/x", "wss://h:443/x", "ftp://h:21/x"])
def test_fetched_schemes_stay_valid_in_the_url_form(text):
    assert str(parse_resource(text)) == text


@pytest.mark.parametrize(
    "text", ["files:a/%C2%85", "files:a/%E2%80%AE", "files:a/%E2%80%A8", "files:a/%F3%A0%81%81"]
)
def test_an_encoded_c1_control_bidi_override_or_tag_is_refused(text):
    with pytest.raises(ResourceError):
        parse_resource(text)


def test_encoded_text_in_any_script_stays_valid():
    for text in ("files:a/%C3%A9t%C3%A9", "files:%E6%96%87%E4%BB%B6/x"):
        assert str(parse_resource(text)) == text
