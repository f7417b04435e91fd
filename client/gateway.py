"""Through the gateway: one HTTP request as an authorisation request (docs/GATEWAY.md).

The gateway and the agent must derive the same request from the same HTTP
request, byte for byte, or the agent's signature would cover something else.
Both use this module: the gateway (``lineage gateway``) to decide, and the
agent's transport to sign.

    import httpx
    from lineage.client import Agent
    from lineage.client.gateway import gateway_session

    agent = Agent.ephemeral()                   # holds the credential's key
    with gateway_session("http://127.0.0.1:8080", agent, credential) as mail:
        r = mail.get("https://mail.example.com/v1/messages/17")   # the real API's URL

The transport reads the gateway's routes once (``/.well-known/lineage-gateway``),
sends each request to the gateway instead of the real API, and signs it on the
way out: ``Authorization: DPoP <credential>``, a ``DPoP`` proof, and the
invocation in ``Lineage-Invocation``. The API's secret is attached by the
gateway; the agent never holds it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl, unquote

import anyio
import httpx

from lineage.verifier.errors import FormatError
from lineage.verifier.invocation import SignedInvocation, parse_invocation_bytes
from lineage.verifier.request import parse_request, request_to_json
from lineage.verifier.resource import Resource, parse_resource

from .dpop import make_proof
from .flows import Agent

__all__ = [
    "APPROVAL_HEADER",
    "APPROVAL_PENDING",
    "ATTR_BODY",
    "ATTR_METHOD",
    "ATTR_QUERY",
    "DESCRIPTION_PATH",
    "INVOCATION_HEADER",
    "TOOL_ACTION",
    "AsyncGatewayTransport",
    "Field",
    "GatewayTransport",
    "MappingError",
    "McpAuth",
    "NotBehindGateway",
    "Route",
    "async_gateway_session",
    "body_digest",
    "canonical_segments",
    "decode_invocation",
    "derive_request",
    "encode_invocation",
    "field_attributes",
    "gateway_session",
    "mcp_auth",
    "parse_json_object",
    "tool_request",
]

INVOCATION_HEADER = "Lineage-Invocation"
# Step-up (POLICY.md "Approval"): a held call is answered 403 with this error, the status
# to poll in this header, and the person's link in the body's ``approval``.
APPROVAL_HEADER = "Lineage-Approval"
APPROVAL_PENDING = "approval_pending"
HELD_FOR = 4200  # seconds a held invocation is kept for its retry (10 min + 1 h approval)
DESCRIPTION_PATH = "/.well-known/lineage-gateway"
ATTR_METHOD, ATTR_QUERY, ATTR_BODY = "http.method", "http.query", "http.body"
MAX_QUERY = 1024  # an attribute's value is at most 1,024 characters (SCOPE.md §5.1)
MAX_VALUE = 1024
MAX_INVOCATION_HEADER = 12288  # base64url characters
ROUTE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
FIELD_KINDS = ("string", "integer", "url", "path")
METHOD = re.compile(r"[A-Z]{1,16}")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
_QUERY_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/?%"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


class MappingError(ValueError):
    """This HTTP request cannot be decided as it stands: ``status`` is the HTTP answer
    (400, 405, 413, 414 or 415) and ``field`` names what is wrong."""

    def __init__(self, message: str, status: int = 400, field: str | None = None):
        super().__init__(message)
        self.status, self.field = status, field


@dataclass(frozen=True)
class Field:
    """One attribute read from the request: ``source`` is ``query`` or ``body`` (a top-level
    member of a JSON object), ``key`` the parameter or member, ``kind`` how it is read."""

    attribute: str
    source: str
    key: str
    kind: str = "string"

    def to_json(self) -> dict[str, str]:
        return {
            "attribute": self.attribute,
            "from": self.source,
            "key": self.key,
            "type": self.kind,
        }


@dataclass(frozen=True)
class Route:
    """An upstream as agents see it: what the gateway publishes, never where it forwards
    nor how it authenticates there."""

    name: str
    type: str
    location: str  # the canonical location (SCOPE.md §2 rule 8) requests name
    resource: str  # "url": location + path; else a namespace or name the path extends
    actions: Mapping[str, str] = field(default_factory=dict)  # METHOD -> action
    fields: tuple[Field, ...] = ()
    body_limit: int = 1 << 20  # bytes read before deciding when a field needs the body
    kind: str = "http"  # http | mcp (an MCP server's streamable HTTP endpoint, §8)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "type": self.type,
            "location": self.location,
            "resource_base": self.resource,
            "actions": dict(sorted(self.actions.items())),
            "fields": [f.to_json() for f in self.fields],
            "body_limit": self.body_limit,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Route:
        try:
            fields_ = tuple(
                Field(f["attribute"], f["from"], f["key"], f["type"]) for f in obj["fields"]
            )
            return cls(
                obj["name"],
                obj["type"],
                obj["location"],
                obj["resource_base"],
                dict(obj["actions"]),
                fields_,
                int(obj["body_limit"]),
                str(obj.get("kind", "http")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MappingError(f"the gateway's route description is malformed: {exc}") from None

    @property
    def needs_body(self) -> bool:
        return any(f.source == "body" for f in self.fields)

    def action(self, method: str) -> str:
        if not self.actions:
            return method.lower()
        found = self.actions.get(method)
        if found is None:
            allowed = ", ".join(sorted(self.actions))
            raise MappingError(f"{method} is not mapped for {self.name}: use {allowed}", 405)
        return found

    def resource_of(self, segments: tuple[str, ...]) -> Resource:
        """The request's resource: the path's segments under the route's base."""
        try:
            if self._base is None:  # a bare namespace: the path's segments are the name's
                return Resource(self.resource, segments)
            return Resource(self._base.prefix, self._base.segments + segments)
        except FormatError as exc:
            raise MappingError(f"path: {exc}", 400, "path") from None

    @cached_property
    def _base(self) -> Resource | None:
        """The resource the path extends, parsed once: the location, or a name."""
        try:
            if self.resource == "url":
                return parse_resource(self.location, allow_wildcard=False, url_only=True)
            if ":" in self.resource:
                return parse_resource(self.resource, allow_wildcard=False)
        except FormatError as exc:
            raise MappingError(f"path: {exc}", 400, "path") from None
        return None


def _normal_segment(raw: str) -> str:
    """RFC 3986 §6.2.2.1 and §6.2.2.2 on one segment: percent-escapes upper-case, escaped
    unreserved characters decoded. Nothing else is rewritten; what is still not canonical
    is refused by the resource grammar (SCOPE.md §2)."""
    out, i = [], 0
    while i < len(raw):
        c = raw[i]
        if c == "%" and i + 2 < len(raw) and set(raw[i + 1 : i + 3]) <= _HEX:
            octet = chr(int(raw[i + 1 : i + 3], 16))
            out.append(octet if octet in _UNRESERVED else "%" + raw[i + 1 : i + 3].upper())
            i += 3
            continue
        out.append(c)
        i += 1
    return "".join(out)


def canonical_segments(raw_path: str) -> tuple[str, ...]:
    """The segments of a raw (still percent-encoded) path, canonical, or MappingError.

    ``/`` and the empty path have none. Dot-segments, empty segments (``a//b``, a
    trailing ``/``), ``%2F``, double encoding and the rest of SCOPE.md §2 rules 1 and 9
    are refused, never resolved: the gateway decides on, and forwards, one spelling.
    """
    if not raw_path.isascii() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in raw_path):
        raise MappingError("path: only printable ASCII (percent-encode the rest)", 400, "path")
    if raw_path in ("", "/"):
        return ()
    if not raw_path.startswith("/"):
        raise MappingError("path: must start with '/'", 400, "path")
    segments = tuple(_normal_segment(s) for s in raw_path[1:].split("/"))
    try:
        Resource("path", segments)  # every segment rule of SCOPE.md §2
    except FormatError as exc:
        raise MappingError(f"path: {exc}", 400, "path") from None
    for seg in segments:
        if "%" in seg:
            text = unquote(seg, errors="strict")
            if unicodedata.normalize("NFKC", text) != text:
                # A server that normalises (NFKC) would read another name: fullwidth
                # "．．" becomes "..". One spelling, one reading: refused.
                raise MappingError(
                    f"path: segment {seg!r} changes under Unicode NFKC normalisation",
                    400,
                    "path",
                )
    return segments


def check_query(query: str) -> str:
    """The raw query as sent (no ``?``): printable ASCII, at most 1,024 characters."""
    if len(query) > MAX_QUERY:
        raise MappingError(f"query: longer than {MAX_QUERY} characters", 414, "query")
    if not set(query) <= _QUERY_CHARS:
        raise MappingError("query: only URL characters (percent-encode the rest)", 400, "query")
    return query


def body_digest(body: bytes) -> str:
    return "sha-256:" + hashlib.sha256(body).hexdigest()


def _url_origin(value: str, at: str) -> str:
    """A URL as a fetcher reads it: ``scheme://host:port``, or MappingError for anything
    two parsers could read differently (userinfo, ``\\``, ``%`` in the host, IP literals,
    numeric hosts that are not a dotted quad, whitespace, controls, non-ASCII)."""
    bad = MappingError(f"{at}: not a URL this gateway reads unambiguously", 400, at)
    if not value.isascii() or any(ord(c) <= 0x20 or ord(c) == 0x7F or c == "\\" for c in value):
        raise bad
    scheme, sep, rest = value.partition("://")
    if not sep or not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        raise bad
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority or "%" in authority or authority.startswith("["):
        raise bad
    host, colon, port = authority.rpartition(":")
    if not colon:
        host, port = authority, str(_DEFAULT_PORTS.get(scheme, ""))
    if not port:
        raise MappingError(f"{at}: the URL must name its port", 400, at)
    try:
        return str(Resource(f"{scheme}://{host.lower()}:{port}", ()))
    except FormatError:
        raise bad from None


def _path_value(value: str, at: str) -> str:
    if not value.startswith("/"):
        raise MappingError(f"{at}: a path must start with '/'", 400, at)
    segments = canonical_segments(value) if value != "/" else ()
    shown = "/" + "/".join(segments)
    if shown != value:
        raise MappingError(f"{at}: not a canonical path (reads as {shown!r})", 400, at)
    return shown


def _read(f: Field, value: Any) -> str | int:
    at = f"{f.source}.{f.key}"
    if f.kind == "integer":
        if isinstance(value, str) and f.source == "query":
            if not re.fullmatch(r"-?(0|[1-9][0-9]{0,15})", value):
                raise MappingError(f"{at}: not a decimal integer", 400, at)
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**53 - 1:
            raise MappingError(f"{at}: must be an integer within ±(2^53 − 1)", 400, at)
        return value
    if not isinstance(value, str):
        raise MappingError(f"{at}: must be a string", 400, at)
    if f.kind == "url":
        return _url_origin(value, at)
    if f.kind == "path":
        return _path_value(value, at)
    if len(value) > MAX_VALUE:
        raise MappingError(f"{at}: longer than {MAX_VALUE} characters", 400, at)
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise MappingError(f"body: member {k!r} appears twice", 400, f"body.{k}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise MappingError(f"body: {name} is not JSON", 400, "body")


def field_attributes(
    route: Route, query: str, body: bytes | None, content_type: str | None
) -> dict[str, str | int]:
    """The attributes ``route.fields`` read from the query and the body, as the upstream
    would read them; a field the request does not carry is absent (constraints on it then
    deny). ``body`` is None only when the route needs none."""
    out: dict[str, str | int] = {}
    wanted_q = [f for f in route.fields if f.source == "query"]
    if wanted_q:
        if ";" in query:  # some servers split on ';' too: one reading only
            raise MappingError("query: ';' is not accepted where fields are read", 400, "query")
        try:
            pairs = parse_qsl(
                query,
                keep_blank_values=True,
                strict_parsing=bool(query),
                encoding="utf-8",
                errors="strict",
            )
        except (ValueError, UnicodeDecodeError):
            raise MappingError(
                "query: not application/x-www-form-urlencoded", 400, "query"
            ) from None
        seen: dict[str, str] = {}
        keys = {f.key.casefold() for f in wanted_q}
        folded: set[str] = set()
        for k, v in pairs:
            # Some servers read names without case (ASP.NET Core): a parameter a field reads
            # appears once, in one spelling, or the request is refused.
            if k.casefold() in keys and k.casefold() in folded:
                raise MappingError(f"query: parameter {k!r} appears twice", 400, f"query.{k}")
            folded.add(k.casefold())
            seen[k] = v
        for f in wanted_q:
            other = [k for k in seen if k.casefold() == f.key.casefold() and k != f.key]
            if other:
                at = f"query.{other[0]}"
                raise MappingError(f"query: {other[0]!r} is {f.key!r} to some servers", 400, at)
        for f in wanted_q:
            if f.key in seen:
                out[f.attribute] = _read(f, seen[f.key])
    wanted_b = [f for f in route.fields if f.source == "body"]
    if wanted_b:
        assert body is not None
        if body:
            media, *params = [p.strip().lower() for p in (content_type or "").split(";")]
            if media != "application/json" and not media.endswith("+json"):
                raise MappingError("body: fields are read from JSON bodies only", 415, "body")
            charsets = [p.partition("=")[2].strip('"') for p in params if p.startswith("charset")]
            if charsets and (len(charsets) > 1 or charsets[0] != "utf-8"):
                raise MappingError("body: JSON is read as UTF-8 only (RFC 8259)", 415, "body")
            doc = parse_json_object(body)
            for f in wanted_b:
                other = [k for k in doc if k.casefold() == f.key.casefold() and k != f.key]
                if other:
                    at = f"body.{other[0]}"
                    raise MappingError(f"body: {other[0]!r} is {f.key!r} to some servers", 400, at)
            for f in wanted_b:
                if f.key in doc:
                    if doc[f.key] is None:
                        raise MappingError(f"body.{f.key}: null", 400, f"body.{f.key}")
                    out[f.attribute] = _read(f, doc[f.key])
    return out


def derive_request(
    route: Route,
    method: str,
    segments: tuple[str, ...],
    query: str,
    body: bytes,
    fields: Mapping[str, str | int],
) -> dict[str, Any]:
    """The authorisation request (SCOPE.md §5.1) one HTTP request is decided as."""
    if not METHOD.fullmatch(method):
        raise MappingError(f"method {method!r} is not supported", 405, "method")
    attributes: dict[str, str | int] = {
        **fields,
        ATTR_METHOD: method,
        ATTR_QUERY: query,
        ATTR_BODY: body_digest(body),
    }
    request = {
        "type": route.type,
        "action": route.action(method),
        "location": route.location,
        "resource": str(route.resource_of(segments)),
        "attributes": attributes,
    }
    try:
        return request_to_json(parse_request(request))
    except FormatError as exc:
        raise MappingError(f"the request does not parse: {exc}", 400) from None


def encode_invocation(inv: SignedInvocation) -> str:
    return base64.urlsafe_b64encode(inv.to_bytes()).rstrip(b"=").decode("ascii")


def decode_invocation(value: str) -> SignedInvocation:
    """Parse a ``Lineage-Invocation`` header (base64url of the canonical JSON); FormatError."""
    if len(value) > MAX_INVOCATION_HEADER or not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        raise FormatError(
            f"{INVOCATION_HEADER} must be base64url, at most {MAX_INVOCATION_HEADER} characters"
        )
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        raise FormatError(f"{INVOCATION_HEADER} is not base64url") from None
    return parse_invocation_bytes(data)


def _routes(response: httpx.Response) -> dict[str, Route]:
    """The routes a gateway publishes at ``/.well-known/lineage-gateway``, by name."""
    if response.status_code != 200:
        raise MappingError(f"{response.request.url}: {response.status_code}")
    try:
        routes = response.json().get("routes")
    except (ValueError, AttributeError):
        routes = None
    if not isinstance(routes, list):
        raise MappingError("the gateway's description has no routes")
    return {r.name: r for r in map(Route.from_json, routes)}


# --- MCP: a tools/call as an authorisation request (docs/GATEWAY.md §8) -------------------

TOOL_ACTION = "call"


def parse_json_object(body: bytes, what: str = "body") -> dict[str, Any]:
    """A JSON object as every reader reads it: UTF-8, no repeated member, no NaN."""
    try:
        doc = json.loads(
            body.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant
        )
    except MappingError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MappingError(f"{what}: not JSON", 400, what) from None
    if not isinstance(doc, dict):
        raise MappingError(f"{what}: must be a JSON object (no batches)", 400, what)
    return doc


def tool_request(route: Route, message: Mapping[str, Any], body: bytes) -> dict[str, Any]:
    """The request a JSON-RPC ``tools/call`` is decided as: action ``call``, the tool's name
    as the last segment of the resource, and each argument whose name is an attribute name
    and whose value a string (at most 1,024 characters) or an integer as an attribute. Other
    arguments are not attributes, so a constraint on one denies (missing)."""
    params = message.get("params")
    if not isinstance(params, Mapping):
        raise MappingError("params: must be an object", 400, "params")
    name = params.get("name")
    if not isinstance(name, str) or not name:
        raise MappingError("params.name: the tool's name", 400, "params.name")
    arguments = params.get("arguments", {})
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, Mapping):
        raise MappingError("params.arguments: must be an object", 400, "params.arguments")
    attributes: dict[str, str | int] = {}
    for key, value in arguments.items():
        if not re.fullmatch(r"[a-z0-9_.:-]{1,64}", key) or key.startswith("http."):
            continue
        text = isinstance(value, str) and len(value) <= MAX_VALUE
        number = isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53
        if text or number:
            attributes[key] = value
    attributes.update({ATTR_METHOD: "POST", ATTR_QUERY: "", ATTR_BODY: body_digest(body)})
    try:
        resource = str(route.resource_of((name,)))
    except MappingError:
        raise MappingError(f"params.name: {name!r} is not a resource segment", 400) from None
    request = {
        "type": route.type,
        "action": TOOL_ACTION,
        "location": route.location,
        "resource": resource,
        "attributes": attributes,
    }
    try:
        return request_to_json(parse_request(request))
    except FormatError as exc:
        raise MappingError(f"the request does not parse: {exc}", 400) from None


try:  # the mcp SDK 2.x sends with httpx2; an Auth for both works with either SDK
    import httpx2 as _httpx2

    _AUTH_BASES: tuple[type, ...] = (_httpx2.Auth, httpx.Auth)
except ImportError:  # pragma: no cover - httpx2 comes with mcp 2.x only
    _AUTH_BASES = (httpx.Auth,)


class McpAuth(*_AUTH_BASES):  # type: ignore[misc]
    """Signs an MCP client's requests to an MCP server behind the gateway: each one carries
    the credential and a DPoP proof, and each ``tools/call`` an invocation over its exact
    bytes. Give it to the SDK's HTTP client: ``httpx2.AsyncClient(auth=mcp_auth(...))``."""

    requires_request_body = True

    def __init__(self, agent: Agent, credential: str, route: Route):
        if route.kind != "mcp":
            raise MappingError(f"{route.name} is not an MCP server")
        self.agent, self.credential, self.route = agent, credential, route

    def auth_flow(self, request):  # type: ignore[override]
        url = str(request.url).split("?")[0]
        request.headers["Authorization"] = f"DPoP {self.credential}"
        request.headers["DPoP"] = make_proof(
            self.agent.key.seed, request.method, url, access_token=self.credential
        )
        body = request.content
        if request.method == "POST" and body:
            try:
                message = parse_json_object(body)
            except MappingError:
                message = {}
            if message.get("method") == "tools/call":
                asked = tool_request(self.route, message, body)
                inv = self.agent.invoke(self.credential, asked)
                request.headers[INVOCATION_HEADER] = encode_invocation(inv)
        yield request


def mcp_auth(gateway: str, name: str, agent: Agent, credential: str) -> McpAuth:
    """An ``McpAuth`` for the MCP server the gateway fronts as ``name`` (its endpoint is
    ``gateway + "/" + name``), reading the route from the gateway's description."""
    routes = _routes(httpx.get(gateway.rstrip("/") + DESCRIPTION_PATH, timeout=10))
    if name not in routes:
        raise MappingError(f"the gateway fronts no {name!r}")
    return McpAuth(agent, credential, routes[name])


# --- the agent's side: a transport that signs every request on its way out ----------------


class NotBehindGateway(httpx.RequestError):
    """The request's URL is neither the gateway's nor a location the gateway fronts."""


@dataclass
class _Signer:
    gateway: str
    agent: Agent
    credential: str
    routes: dict[str, Route] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # step-up: the request (as decided) -> (its invocation header, kept until), for calls a
    # person must approve: the approval answers that invocation, so the retry resends it
    held: dict[str, tuple[str, float]] = field(default_factory=dict)

    def description(self) -> httpx.Request:
        return httpx.Request("GET", self.gateway.rstrip("/") + DESCRIPTION_PATH)

    def load(self, response: httpx.Response) -> None:
        """The routes from the gateway's answer to ``description()`` (read already)."""
        self.routes = _routes(response)

    def _place(self, url: httpx.URL) -> tuple[Route, str]:
        """(route, raw path under it) for a URL to the gateway or to a fronted location."""
        assert self.routes is not None
        gw = httpx.URL(self.gateway)
        raw = url.raw_path.decode("ascii").partition("?")[0]
        base = gw.raw_path.decode("ascii").rstrip("/")
        if (url.scheme, url.host, url.port) == (gw.scheme, gw.host, gw.port) and raw.startswith(
            base + "/"
        ):
            name, _, rest = raw[len(base) + 1 :].partition("/")
            if name in self.routes:
                return self.routes[name], "/" + rest if rest else ""
        port = url.port or _DEFAULT_PORTS.get(url.scheme)
        origin = f"{url.scheme}://{url.host}:{port}"
        for route in self.routes.values():
            loc = httpx.URL(route.location)
            loc_origin = f"{loc.scheme}://{loc.host}:{loc.port or _DEFAULT_PORTS.get(loc.scheme)}"
            loc_path = loc.raw_path.decode("ascii").rstrip("/")
            if origin == loc_origin and (raw == loc_path or raw.startswith(loc_path + "/")):
                return route, raw[len(loc_path) :]
        raise NotBehindGateway(f"{url} is not behind the gateway {self.gateway}")

    def sign(self, request: httpx.Request, body: bytes) -> httpx.Request:
        route, rest = self._place(request.url)
        query = check_query(request.url.query.decode("ascii"))
        segments = canonical_segments(rest)
        ctype = request.headers.get("content-type")
        fields = field_attributes(route, query, body if route.needs_body else None, ctype)
        asked = derive_request(route, request.method, segments, query, body, fields)
        key = json.dumps(asked, sort_keys=True)
        with self._lock:
            kept = self.held.get(key)
        if kept is not None and kept[1] > time.monotonic():
            invocation = kept[0]  # the call a person was asked about: the same invocation
        else:
            invocation = encode_invocation(self.agent.invoke(self.credential, asked))
        path = self.gateway.rstrip("/") + "/" + route.name + "".join("/" + s for s in segments)
        target = httpx.URL(path + ("?" + query if query else ""))
        headers = httpx.Headers(request.headers)
        for name in ("host", "authorization", "dpop", INVOCATION_HEADER.lower()):
            headers.pop(name, None)
        headers["Authorization"] = f"DPoP {self.credential}"
        headers[INVOCATION_HEADER] = invocation
        signed = httpx.Request(
            request.method, target, headers=headers, content=body, extensions=request.extensions
        )
        signed.extensions = {**request.extensions, "lineage_request": key}
        return self.proved(signed)

    def proved(self, signed: httpx.Request) -> httpx.Request:
        """``signed`` with a fresh DPoP proof (a proof is good once; the invocation stays)."""
        path = str(signed.url.copy_with(query=None))
        signed.headers["DPoP"] = make_proof(
            self.agent.key.seed, signed.method, path, access_token=self.credential
        )
        return signed

    def note(self, signed: httpx.Request, response: httpx.Response) -> str | None:
        """Remember the invocation of a call held for approval (and forget it once the call
        is answered otherwise); the status URL to poll when it is held."""
        key = signed.extensions.get("lineage_request")
        poll = response.headers.get(APPROVAL_HEADER) if response.status_code == 403 else None
        with self._lock:
            now = time.monotonic()
            for stale in [k for k, (_, until) in self.held.items() if until <= now]:
                del self.held[stale]
            if poll:
                self.held[key] = (signed.headers[INVOCATION_HEADER], now + HELD_FOR)
            else:
                self.held.pop(key, None)
        return poll

    def exchange(self, signed: httpx.Request, wait: float):
        """One request through the gateway, step-up included, without I/O of its own: it
        yields the requests to send (and gets their responses back: a poll's and a held
        answer's read, any other as it streams), ``_Show`` for
        the person's link, and seconds to sleep; it returns the final response. Held and
        ``wait`` > 0: poll until the person answers, then send the same invocation again."""
        response = yield signed
        poll = self.note(signed, response)
        if poll is None or wait <= 0:
            return response
        response.read()
        yield _Show(_held_approval(response))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            asked = httpx.Request("GET", poll, extensions={POLL: True})
            status, pause = _pending_status((yield asked))
            if status != "pending":
                break
            yield min(pause, max(0.0, deadline - time.monotonic()))
        else:
            return response
        if status not in ("approved", "refused"):
            return response
        again = self.proved(signed)
        final = yield again
        self.note(again, final)
        return final


POLL = "lineage_poll"  # the extension that marks a request for a held call's status


def _small(request: httpx.Request, response: httpx.Response) -> bool:
    """A poll's answer, or a held call's: the exchange reads them whole; others stream."""
    return bool(request.extensions.get(POLL)) or (
        response.status_code == 403 and APPROVAL_HEADER in response.headers
    )


@dataclass(frozen=True)
class _Show:
    """A step of ``_Signer.exchange``: show the person's link (``on_approval``)."""

    approval: dict[str, Any]


def _pending_status(answer: httpx.Response) -> tuple[str, int]:
    """(status, seconds to wait) from ``GET /v1/approvals/{id}``; ``expired`` if unreadable."""
    try:
        data = answer.json()
        return str(data["status"]), max(1, int(data.get("interval", 2)))
    except (ValueError, KeyError, TypeError):
        return "expired", 2


def _held_approval(response: httpx.Response) -> dict[str, Any]:
    try:
        found = response.json().get("approval")
    except (ValueError, AttributeError):
        found = None
    return found if isinstance(found, dict) else {}


OnApproval = Callable[[dict[str, Any]], Any]


class GatewayTransport(httpx.BaseTransport):
    """Sends every request through the gateway, signed by ``agent`` for ``credential``.

    Step-up: a call a policy rule holds for its principal is answered 403
    ``approval_pending`` with the person's link (``approval.url``). The same request made
    again is sent with the same invocation, which is what the person approves. With
    ``approval_wait`` (seconds), the transport itself waits: it calls ``on_approval`` with
    the held call (to show the person the link), polls until they answer, and sends the
    request again; the caller sees only the final answer (or the 403 if no answer came).
    """

    def __init__(
        self,
        gateway: str,
        agent: Agent,
        credential: str,
        *,
        transport: httpx.BaseTransport | None = None,
        approval_wait: float = 0,
        on_approval: OnApproval | None = None,
    ):
        self._signer = _Signer(gateway, agent, credential)
        self._inner = transport or httpx.HTTPTransport()
        self.approval_wait, self.on_approval = approval_wait, on_approval

    def _routes(self) -> None:
        with self._signer._lock:
            if self._signer.routes is None:
                response = self._inner.handle_request(self._signer.description())
                response.read()
                self._signer.load(response)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._routes()
        steps = self._signer.exchange(
            self._signer.sign(request, request.read()), self.approval_wait
        )
        step = next(steps)
        try:
            while True:
                if isinstance(step, httpx.Request):
                    answer = self._inner.handle_request(step)
                    if _small(step, answer):
                        answer.read()
                elif isinstance(step, _Show):
                    answer = self.on_approval(step.approval) if self.on_approval else None
                else:
                    answer = time.sleep(step)
                step = steps.send(answer)
        except StopIteration as done:
            return done.value

    def close(self) -> None:
        self._inner.close()


class AsyncGatewayTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`GatewayTransport`."""

    def __init__(
        self,
        gateway: str,
        agent: Agent,
        credential: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        approval_wait: float = 0,
        on_approval: OnApproval | None = None,
    ):
        self._signer = _Signer(gateway, agent, credential)
        self._inner = transport or httpx.AsyncHTTPTransport()
        self.approval_wait, self.on_approval = approval_wait, on_approval

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._signer.routes is None:
            response = await self._inner.handle_async_request(self._signer.description())
            await response.aread()
            self._signer.load(response)
        body = await request.aread()
        steps = self._signer.exchange(self._signer.sign(request, body), self.approval_wait)
        step = next(steps)
        try:
            while True:
                if isinstance(step, httpx.Request):
                    answer = await self._inner.handle_async_request(step)
                    if _small(step, answer):
                        await answer.aread()
                elif isinstance(step, _Show):
                    answer = self.on_approval(step.approval) if self.on_approval else None
                    if hasattr(answer, "__await__"):
                        answer = await answer
                else:
                    answer = await anyio.sleep(step)
                step = steps.send(answer)
        except StopIteration as done:
            return done.value

    async def aclose(self) -> None:
        await self._inner.aclose()


def gateway_session(
    gateway: str,
    agent: Agent,
    credential: str,
    *,
    approval_wait: float = 0,
    on_approval: OnApproval | None = None,
    **kw: Any,
) -> httpx.Client:
    """An ``httpx.Client`` whose every request goes through the gateway, signed (step-up:
    ``approval_wait`` and ``on_approval``, see :class:`GatewayTransport`)."""
    transport = GatewayTransport(
        gateway, agent, credential, approval_wait=approval_wait, on_approval=on_approval
    )
    return httpx.Client(transport=transport, **kw)


def async_gateway_session(
    gateway: str,
    agent: Agent,
    credential: str,
    *,
    approval_wait: float = 0,
    on_approval: OnApproval | None = None,
    **kw: Any,
) -> httpx.AsyncClient:
    transport = AsyncGatewayTransport(
        gateway, agent, credential, approval_wait=approval_wait, on_approval=on_approval
    )
    return httpx.AsyncClient(transport=transport, **kw)
