"""Canonical resource names and patterns (docs/SCOPE.md §2).

A resource is written in one of two forms, and only ever in its canonical spelling:

    url  = scheme "://" host ":" port *( "/" segment )      https://mail.corp:443/inbox
    name = namespace ":" segment *( "/" segment )            mailbox:alice/inbox/msg-17

A pattern may end in the whole segment ``*``, which matches one or more further segments.
The parser never normalises: anything that RFC 3986 §6.2.2 would rewrite (upper-case
scheme or host, lower-case percent-escape hex, a percent-encoded unreserved character,
dot-segments, an elided default port) is rejected with a :class:`ResourceError` that
says what is wrong, so that two spellings of one resource can never both be valid. So is
what common servers and URL parsers read as another path or URL (SCOPE.md §2.1 rules 9
and 10): ``..;``, ``%5C``, escaped control characters, double encoding, escaped octets
that are not UTF-8, and URL schemes such as ``https`` used as a namespace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lineage.verifier.errors import ResourceError
from lineage.verifier.fields import NOT_IN_TEXT

__all__ = [
    "MAX_LENGTH",
    "MAX_SEGMENTS",
    "NOT_FETCHED",
    "RESERVED_NAMESPACES",
    "Resource",
    "matches",
    "parse_resource",
    "pattern_within",
]

MAX_LENGTH = 2048  # characters of canonical text
MAX_SEGMENTS = 64  # path segments, the final wildcard included

# RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), lower-case only here.
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
# RFC 1123 §2.1 host labels, lower-case only, no trailing dot; at most 63 octets a label.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
# WHATWG URL "ends in a number": such a host is an IPv4 address to a browser.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
# RFC 3986 §3.3 pchar minus "%": unreserved / sub-delims / ":" / "@", except "*" (wildcard).
_PCHAR = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()+,;=:@")
# RFC 3986 §2.3: unreserved characters are never percent-encoded in canonical form.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_UPPER_HEX = frozenset("0123456789ABCDEF")
_ANY_HEX = frozenset("0123456789abcdefABCDEF")
# URL schemes a URL parser or a browser reads specially, so never a namespace: WHATWG URL
# reads "https:h/x" as "https://h/x" (the special schemes ftp, file, http, https, ws, wss),
# and the others are run or shown by browsers rather than fetched (SCOPE.md §2.1 rule 10).
RESERVED_NAMESPACES = frozenset(
    {"about", "blob", "data", "file", "filesystem", "ftp", "http", "https", "javascript"}
    | {"vbscript", "ws", "wss"}
)
# The reserved schemes a browser runs or shows rather than fetches: not in the URL form either.
NOT_FETCHED = frozenset({"about", "blob", "data", "file", "filesystem", "javascript", "vbscript"})
# Servers that drop ";" path parameters (Tomcat, Spring) read a segment only up to its first
# ";", and some decode "%3B" to ";" first: what is left must still be a proper segment.
_PARAMETERS = re.compile(r";|%3B")


def _fail(text: str, why: str) -> ResourceError:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return ResourceError(f"non-canonical resource {shown!r}: {why}")


def _check_scheme(text: str, scheme: str, what: str) -> None:
    if _SCHEME.fullmatch(scheme):
        return
    if _SCHEME.fullmatch(scheme.lower()):
        raise _fail(text, f"{what} must be lower-case")
    raise _fail(text, f"{what} {scheme!r} is not [a-z][a-z0-9+.-]*")


def _check_host(text: str, host: str) -> None:
    """RFC 3986 §3.2.2 reg-name restricted to lower-case DNS names, or a dotted-quad IPv4."""
    if not host:
        raise _fail(text, "empty host")
    if host != host.lower():
        raise _fail(text, "host must be lower-case")
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # WHATWG URL parses a host whose last label is numeric as IPv4, so require the
        # one spelling that every parser agrees on: four decimal octets, no leading zeros.
        if len(labels) != 4 or not all(_DECIMAL.fullmatch(x) and int(x) <= 255 for x in labels):
            raise _fail(text, "numeric host must be a dotted-quad IPv4 without leading zeros")
        return
    if len(host) > 253 or not all(_LABEL.fullmatch(x) for x in labels):
        raise _fail(text, f"host {host!r} is not a lower-case DNS name")


def _check_port(text: str, port: str) -> None:
    if not port:
        raise _fail(text, "port must be explicit")
    if not port.isascii() or not port.isdigit():
        raise _fail(text, f"port {port!r} is not decimal")
    if port[0] == "0" and port != "0":
        raise _fail(text, "port has a leading zero")
    if len(port) > 5 or not 1 <= int(port) <= 65535:
        raise _fail(text, "port out of range 1..65535")


def _check_segment(text: str, seg: str) -> None:
    """RFC 3986 §3.3 segment-nz, canonical per §6.2.2.1 and §6.2.2.2, no dot-segments, and
    nothing that common servers decode or cut into something else (SCOPE.md §2.1)."""
    if not seg:
        raise _fail(text, "empty segment")
    if seg in (".", ".."):
        raise _fail(text, f"dot-segment {seg!r}")
    if "*" in seg:
        if seg == "*":
            raise _fail(text, "wildcard '*' is only allowed as the final segment of a pattern")
        raise _fail(text, f"partial wildcard in segment {seg!r}")
    octets = bytearray()  # the segment, percent-decoded once
    i = 0
    while i < len(seg):
        c = seg[i]
        if c == "%":
            esc = seg[i + 1 : i + 3]
            if len(esc) != 2 or not set(esc) <= _ANY_HEX:
                raise _fail(text, f"malformed percent-escape {seg[i : i + 3]!r}")
            if not set(esc) <= _UPPER_HEX:
                raise _fail(text, f"lower-case hex in percent-escape %{esc} (write %{esc.upper()})")
            octet = int(esc, 16)
            ch = chr(octet)
            if ch == "/":
                raise _fail(text, "percent-encoded '/' (%2F)")
            if ch in _UNRESERVED:
                raise _fail(text, f"percent-encoded unreserved character {ch!r} (%{esc})")
            if ch == "\\":
                raise _fail(text, "percent-encoded '\\' (%5C), a path separator to some servers")
            if octet < 0x20 or octet == 0x7F:
                raise _fail(text, f"percent-encoded control character (%{esc})")
            after = seg[i + 3 : i + 5]
            if octet == 0x25 and len(after) == 2 and set(after) <= _ANY_HEX:
                raise _fail(text, f"double percent-encoding %25{after} (decodes to %{after})")
            octets.append(octet)
            i += 3
            continue
        if c not in _PCHAR:
            raise _fail(text, f"character {c!r} not allowed in a segment")
        octets.append(ord(c))
        i += 1
    try:
        decoded = octets.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(text, f"percent-encoded octets of {seg!r} are not UTF-8") from None
    bad = NOT_IN_TEXT.search(decoded)
    if bad is not None:
        raise _fail(
            text,
            f"segment {seg!r} encodes U+{ord(bad.group()):04X}, a control, separator or "
            "invisible character (FORMAT.md §1)",
        )
    head = _PARAMETERS.split(seg, maxsplit=1)[0]
    if head in ("", ".", ".."):
        shown = "an empty segment" if not head else f"dot-segment {head!r}"
        raise _fail(text, f"segment {seg!r} is {shown} to servers that drop ';' parameters")


@dataclass(frozen=True, slots=True)
class Resource:
    """A canonical resource name (``wildcard`` false) or pattern.

    ``prefix`` is ``scheme://host:port`` for the URL form, or the bare namespace for the
    name form; ``segments`` are the path segments, without the final ``*`` of a pattern.
    Construction checks every part, so a ``Resource`` is always canonical.
    """

    prefix: str
    segments: tuple[str, ...]
    wildcard: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str) or not isinstance(self.segments, tuple):
            raise ResourceError("Resource needs a str prefix and a tuple of segments")
        if not isinstance(self.wildcard, bool):
            raise ResourceError("Resource.wildcard must be a bool")
        if not all(isinstance(seg, str) for seg in self.segments):
            raise ResourceError("Resource segments must be strings")
        text = self._text()
        if not text.isascii():
            raise _fail(text, "non-ASCII characters (percent-encode their UTF-8 octets)")
        scheme, sep, authority = self.prefix.partition("://")
        _check_scheme(text, scheme, "scheme" if sep else "namespace")
        if sep:
            if "@" in authority:
                raise _fail(text, "userinfo is not allowed")
            if authority.startswith("["):
                raise _fail(text, "IP-literal (IPv6) hosts are not supported")
            host, colon, port = authority.rpartition(":")
            if not colon:
                raise _fail(text, "port must be explicit")
            _check_host(text, host)
            _check_port(text, port)
            if scheme in NOT_FETCHED:
                raise _fail(text, f"scheme {scheme!r} names nothing fetched over a network")
        elif scheme in RESERVED_NAMESPACES:
            raise _fail(text, f"namespace {scheme!r} is a reserved URL scheme (write {scheme}://)")
        elif not self.segments and not self.wildcard:
            raise _fail(text, "a name needs at least one segment after the namespace")
        for seg in self.segments:
            _check_segment(text, seg)
        if len(self.segments) + self.wildcard > MAX_SEGMENTS:
            raise _fail(text, f"more than {MAX_SEGMENTS} segments")
        if len(text) > MAX_LENGTH:
            raise _fail(text, f"longer than {MAX_LENGTH} characters")

    @property
    def is_url(self) -> bool:
        return "://" in self.prefix

    def _text(self) -> str:
        parts = [*self.segments, "*"] if self.wildcard else list(self.segments)
        if "://" in self.prefix:
            return self.prefix + "".join("/" + p for p in parts)
        return self.prefix + ":" + "/".join(parts)

    def __str__(self) -> str:
        return self._text()


def parse_resource(text: str, *, allow_wildcard: bool = True, url_only: bool = False) -> Resource:
    """Parse canonical resource text; raise :class:`ResourceError` saying what is not canonical.

    ``allow_wildcard=False`` accepts names only (a request's resource, a location);
    ``url_only=True`` accepts the URL form only (locations, RFC 8707 audiences).
    """
    if not isinstance(text, str):
        raise ResourceError(f"a resource must be a string, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise _fail(text, f"longer than {MAX_LENGTH} characters")
    if not text.isascii():
        raise _fail(text, "non-ASCII characters (percent-encode their UTF-8 octets)")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise _fail(text, "whitespace or control characters")
    if "#" in text:
        raise _fail(text, "a fragment ('#') is not allowed")
    if "?" in text:
        raise _fail(text, "a query ('?') is not allowed")
    scheme, colon, rest = text.partition(":")
    if not colon or not scheme:
        raise _fail(text, "expected scheme://host:port/... or namespace:segment/...")
    _check_scheme(text, scheme, "scheme" if rest.startswith("//") else "namespace")
    if rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        prefix = f"{scheme}://{authority}"
        if slash and not path:
            raise _fail(text, "trailing '/' (empty final segment)")
        parts = path.split("/") if slash else []
    else:
        if url_only:
            raise _fail(text, "expected a URL (scheme://host:port)")
        prefix, parts = scheme, rest.split("/")
        if parts == [""]:
            raise _fail(text, "a name needs at least one segment after the namespace")
    if parts and parts[-1] == "" and len(parts) > 1:
        raise _fail(text, "trailing '/' (empty final segment)")
    wildcard = bool(parts) and parts[-1] == "*"
    if wildcard:
        if not allow_wildcard:
            raise _fail(text, "a wildcard is not allowed here (a name, not a pattern)")
        parts = parts[:-1]
    resource = Resource(prefix, tuple(parts), wildcard)
    if str(resource) != text:  # compute, then compare: the parse must round-trip exactly
        raise _fail(text, f"does not round-trip (reads back as {str(resource)!r})")
    return resource


def matches(pattern: Resource, name: Resource) -> bool:
    """Whether ``pattern`` matches the resource name ``name``, segment by segment (§2.3)."""
    if not isinstance(pattern, Resource) or not isinstance(name, Resource):
        raise TypeError("matches() takes two Resource values")
    if name.wildcard:
        raise ResourceError(f"matches() needs a name, not the pattern {str(name)!r}")
    if pattern.prefix != name.prefix:
        return False
    k = len(pattern.segments)
    if not pattern.wildcard:
        return name.segments == pattern.segments
    return len(name.segments) > k and name.segments[:k] == pattern.segments


def pattern_within(child: Resource, parent: Resource) -> bool:
    """Whether every name that ``child`` matches is matched by ``parent`` (§2.4)."""
    if not isinstance(child, Resource) or not isinstance(parent, Resource):
        raise TypeError("pattern_within() takes two Resource values")
    if not child.wildcard:
        return matches(parent, child)
    k = len(parent.segments)
    return (
        parent.wildcard
        and parent.prefix == child.prefix
        and k <= len(child.segments)
        and child.segments[:k] == parent.segments
    )
