"""The gateway's configuration: the ``[gateway]`` table of ``lineage.toml`` (docs/GATEWAY.md §2).

    [gateway]
    name = "gateway-1"                      # the enforcement point the log names
    service = "http://127.0.0.1:8000"       # the decision point (omit when mounted)
    token = {from = "env", name = "LINEAGE_GATEWAY_TOKEN"}   # its enforcement token
    mount = "/gateway"                      # `lineage serve` serves it there too

    [gateway.upstreams.mail]
    url = "http://127.0.0.1:9001"           # where requests go (never shown to agents)
    type = "email"
    location = "https://mail.example.com:443"
    resource = "mailbox"                    # or "url" (the default)
    actions = {GET = "read", POST = "send"}
    fields = {to = "body", folder = "query"}
    secret = {from = "command", command = ["op", "read", "op://infra/mail/key"]}
    attach = "header:X-Api-Key"             # bearer | header:NAME | query:NAME | basic:USER

Every error names the setting (``gateway.upstreams.mail.attach``); nothing is guessed.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lineage.client.gateway import FIELD_KINDS, ROUTE_NAME, Field, MappingError, Route
from lineage.ledger.errors import ConfigError
from lineage.verifier.errors import FormatError
from lineage.verifier.resource import Resource, parse_resource
from lineage.verifier.scope import _TOKEN

from .secrets import SecretSpec, parse_secret_spec

__all__ = ["Attach", "GatewayConfig", "Upstream", "load_gateway_config", "parse_gateway"]

RESERVED = frozenset({"healthz", "metrics"})
ATTACH = re.compile(r"bearer|(header|query|basic):([!#$%&'*+.^_`|~0-9A-Za-z-]{1,64})")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
NEVER_ATTACH = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "dpop", "lineage-invocation"}
)


@dataclass(frozen=True)
class Attach:
    """How the secret goes on the forwarded request."""

    how: str  # bearer | header | query | basic
    name: str = ""  # the header, the query parameter, or the basic-auth user


@dataclass(frozen=True)
class Upstream:
    route: Route
    url: httpx.URL  # where requests are forwarded: scheme, host, port and a base path
    secret: SecretSpec | None = None
    attach: Attach | None = None
    asserts: tuple[str, ...] = ()
    kind: str = "http"  # http | mcp
    timeout: float = 30.0
    connect_timeout: float = 5.0
    max_body: int = 64 << 20  # bytes streamed to the upstream at most
    scopes: tuple[str, ...] = ()  # MCP: the tools ("*": all) a stock OAuth client asks for


@dataclass(frozen=True)
class GatewayConfig:
    name: str = "gateway"
    service: str = ""
    token: SecretSpec | None = None
    log_key: str = ""
    public_url: str = ""
    mount: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    max_connections: int = 100
    max_requests: int = 1000
    upstreams: Mapping[str, Upstream] = field(default_factory=dict)


class _Table:
    """Typed reads from one TOML table; unknown keys are errors."""

    def __init__(self, data: Any, where: str):
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: must be a table")
        self.data, self.where, self.used = data, where, set()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise ConfigError(f"{self.where}.{key}: missing")
            return default
        value = self.data[key]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise ConfigError(f"{self.where}.{key}: must be a number")
        if not isinstance(value, kind):
            raise ConfigError(f"{self.where}.{key}: must be a {_name(kind)}")
        return value

    def positive(self, key: str, default: float, kind: type = int) -> Any:
        value = self.get(key, (int, float) if kind is float else int, default)
        if value <= 0:
            raise ConfigError(f"{self.where}.{key}: must be positive")
        return kind(value)

    def done(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise ConfigError(f"{self.where}.{extra[0]}: unknown setting")


_REQUIRED = object()


def _name(kind: Any) -> str:
    names = {str: "string", int: "integer", float: "number", list: "list", dict: "table"}
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def _secret(value: Any, where: str) -> SecretSpec:
    try:
        return parse_secret_spec(value, where)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _fields(value: Any, where: str) -> tuple[Field, ...]:
    """``{to = "body"}``, ``{amount = "body:integer"}``, ``{hook = {from = "body",
    key = "callback_url", type = "url"}}``: attribute name -> where it is read."""
    out = []
    table = _Table(value, where)
    for attribute in sorted(table.data):
        at = f"{where}.{attribute}"
        if not _TOKEN.fullmatch(attribute) or len(attribute) > 64 or attribute.startswith("http."):
            raise ConfigError(f"{at}: an attribute name ([a-z0-9_.:-], not http.*)")
        spec = table.get(attribute, (str, dict))
        if isinstance(spec, str):
            source, _, kind = spec.partition(":")
            key = attribute
        else:
            t = _Table(spec, at)
            source = t.get("from", str, _REQUIRED)
            key = t.get("key", str, attribute)
            kind = t.get("type", str, "string")
            t.done()
        kind = kind or "string"
        if source not in ("query", "body"):
            raise ConfigError(f"{at}: read from 'query' or 'body', not {source!r}")
        if kind not in FIELD_KINDS:
            raise ConfigError(f"{at}: type must be one of {', '.join(FIELD_KINDS)}")
        if not key or len(key) > 256:
            raise ConfigError(f"{at}.key: 1 to 256 characters")
        out.append(Field(attribute, source, key, kind))
    table.done()
    return tuple(out)


def _location(value: str, where: str) -> str:
    try:
        return str(parse_resource(value, allow_wildcard=False, url_only=True))
    except FormatError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _upstream(name: str, data: Any, where: str) -> Upstream:
    if not ROUTE_NAME.fullmatch(name) or name in RESERVED:
        raise ConfigError(f"{where}: an upstream's name is [a-z0-9-], not healthz or metrics")
    t = _Table(data, where)
    url = t.get("url", str, _REQUIRED)
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"{where}.url: {exc}") from None
    if target.scheme not in ("http", "https") or not target.host or target.query:
        raise ConfigError(f"{where}.url: an http(s) URL with a host and no query")
    if target.userinfo:
        raise ConfigError(f"{where}.url: no credentials in the URL (use secret and attach)")
    port = target.port or (443 if target.scheme == "https" else 80)
    default_location = f"{target.scheme}://{target.host}:{port}"
    location = _location(t.get("location", str, default_location), f"{where}.location")
    kind = t.get("kind", str, "http")
    if kind not in ("http", "mcp"):
        raise ConfigError(f"{where}.kind: http or mcp")
    rtype = t.get("type", str, "mcp" if kind == "mcp" else _REQUIRED)
    if not _TOKEN.fullmatch(rtype) or len(rtype) > 128:
        raise ConfigError(f"{where}.type: a token of [a-z0-9_.:-]")
    resource = t.get("resource", str, "tool" if kind == "mcp" else "url")
    try:
        if resource != "url":
            base = (
                parse_resource(resource, allow_wildcard=False)
                if ":" in resource
                else Resource(resource, (), True)
            )
            if base.is_url:
                raise ConfigError(f"{where}.resource: 'url', a namespace, or a name")
    except FormatError as exc:
        raise ConfigError(f"{where}.resource: {exc}") from None
    actions = t.get("actions", dict, {})
    for method, action in actions.items():
        if not re.fullmatch(r"[A-Z]{1,16}", method):
            raise ConfigError(f"{where}.actions.{method}: methods are upper-case")
        if not isinstance(action, str) or not _TOKEN.fullmatch(action) or len(action) > 64:
            raise ConfigError(f"{where}.actions.{method}: an action token")
    fields_ = _fields(t.get("fields", dict, {}), f"{where}.fields")
    asserts = t.get("asserts", list, [])
    known = {f.attribute for f in fields_}
    for a in asserts:
        if a not in known:
            raise ConfigError(f"{where}.asserts: {a!r} is not one of the fields")
    secret = t.get("secret", dict)
    attach_text = t.get("attach", str)
    attach = None
    if (secret is None) != (attach_text is None):
        raise ConfigError(f"{where}: secret and attach go together")
    if attach_text is not None:
        m = ATTACH.fullmatch(attach_text)
        if not m:
            raise ConfigError(f"{where}.attach: bearer, header:NAME, query:NAME or basic:USER")
        attach = Attach(m.group(1) or "bearer", m.group(2) or "")
        if attach.how == "header" and attach.name.lower() in NEVER_ATTACH | {"authorization"}:
            raise ConfigError(f"{where}.attach: not that header (use bearer for Authorization)")
    body_limit = t.positive("body_limit", 1 << 20)
    if kind == "mcp" and (actions or fields_):
        raise ConfigError(f"{where}: an MCP server's action is call and its fields its arguments")
    route = Route(name, rtype, location, resource, dict(actions), fields_, body_limit, kind)
    scopes = t.get("scopes", list, [])
    if scopes and kind != "mcp":
        raise ConfigError(f"{where}.scopes: only an MCP server's tools are OAuth scopes")
    for tool in scopes:
        try:
            if not isinstance(tool, str) or (tool != "*" and not route.resource_of((tool,))):
                raise MappingError("not a tool name")
        except MappingError:
            raise ConfigError(f"{where}.scopes: {tool!r} is not a tool's name, nor *") from None
    up = Upstream(
        route=route,
        url=target,
        secret=_secret(secret, f"{where}.secret") if secret is not None else None,
        attach=attach,
        asserts=tuple(asserts),
        kind=kind,
        timeout=t.positive("timeout", 30.0, float),
        connect_timeout=t.positive("connect_timeout", 5.0, float),
        max_body=t.positive("max_body", 64 << 20),
        scopes=tuple(dict.fromkeys(scopes)),
    )
    t.done()
    if up.max_body < body_limit:
        raise ConfigError(f"{where}.max_body: at least body_limit")
    return up


def parse_gateway(data: Any, where: str = "gateway") -> GatewayConfig:
    t = _Table(data, where)
    name = t.get("name", str, "gateway")
    if not 1 <= len(name) <= 128:
        raise ConfigError(f"{where}.name: 1 to 128 characters")
    service = t.get("service", str, "").rstrip("/")
    token = t.get("token", dict)
    mount = t.get("mount", str, "")
    if mount and not re.fullmatch(r"(/[a-z0-9-]+)+", mount):
        raise ConfigError(f"{where}.mount: a path such as /gateway")
    if mount in ("/v1", "/oauth", "/.well-known", "/metrics", "/healthz", "/docs"):
        raise ConfigError(f"{where}.mount: {mount} is the service's own")
    public_url = t.get("public_url", str, "").rstrip("/")
    upstreams = {
        n: _upstream(n, d, f"{where}.upstreams.{n}")
        for n, d in _Table(t.get("upstreams", dict, {}), where).data.items()
    }
    cfg = GatewayConfig(
        name=name,
        service=service,
        token=_secret(token, f"{where}.token") if token is not None else None,
        log_key=t.get("log_key", str, ""),
        public_url=public_url,
        mount=mount,
        host=t.get("host", str, "127.0.0.1"),
        port=t.positive("port", 8080),
        max_connections=t.positive("max_connections", 100),
        max_requests=t.positive("max_requests", 1000),
        upstreams=upstreams,
    )
    t.done()
    if service and token is None:
        raise ConfigError(f"{where}.token: the gateway needs its enforcement token for {service}")
    return cfg


def load_gateway_config(
    path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> GatewayConfig | None:
    """The ``[gateway]`` table of the settings file (the same one ``load_settings`` reads),
    or None when there is none."""
    env = os.environ if env is None else env
    path = path or env.get("LINEAGE_CONFIG")
    if path is None and Path("lineage.toml").exists():
        path = "lineage.toml"
    if path is None:
        return None
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    if "gateway" not in data:
        return None
    return parse_gateway(data["gateway"])
