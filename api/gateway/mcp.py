"""MCP servers behind the gateway: each ``tools/call`` decided and logged (docs/GATEWAY.md §8).

The gateway is the MCP server's protected resource (MCP authorization, RFC 9728): it
publishes protected-resource metadata naming Lineage as the authorisation server and
answers an unauthenticated request with 401 and ``WWW-Authenticate: Bearer
resource_metadata="..."``. Every message needs the agent's credential and a DPoP proof, or
the bearer token of a client that cannot sign (``lineage.api.bearer``), with which the
gateway signs the invocation itself (neither ever reaches the MCP server; the server's own
secret, if any, is attached by the gateway). Then, by JSON-RPC method:

- ``tools/call``: the agent's invocation must cover exactly this message (the tool as
  resource, its scalar arguments as attributes, its bytes' digest); the decision is logged
  before the call is forwarded. A denial is a JSON-RPC error (code -31403) whose data
  carries the reason and the access entry's receipt.
- ``tools/list``: forwarded, and the answer keeps only the tools the credential's scope
  names (a tool it cannot call is not shown).
- ``initialize``, ``ping``, ``server/discover``, notifications, and the client's answers to
  the server's requests: forwarded (the credential must be active and held by the key).
- anything else (resources, prompts, completions, ...): a JSON-RPC error; the gateway
  fronts tools only.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from starlette.datastructures import Headers

from lineage.client.gateway import APPROVAL_PENDING, MappingError, parse_json_object, tool_request
from lineage.verifier.errors import FormatError
from lineage.verifier.invocation import sign_invocation
from lineage.verifier.keys import SigningKey
from lineage.verifier.resource import Resource, matches, parse_resource
from lineage.verifier.scope import Detail

from ..bearer import read_bearer
from .config import Upstream

__all__ = [
    "DENIED",
    "METADATA",
    "handle",
    "metadata",
    "scopes_supported",
    "tool_pattern",
    "tools_scope",
]

METADATA = "/.well-known/oauth-protected-resource"
DENIED = -31403  # outside JSON-RPC's reserved -32768..-32000: a refusal, not an error
APPROVAL_REQUIRED = -31402  # step-up: held for a person; ``data.approval.url`` is their page
HELD_FOR = 4200  # seconds a held call of a client that cannot sign is kept for its retry
FORWARDED = frozenset({"initialize", "ping", "server/discover", "tools/list"})
NO_ORIGIN = frozenset({"origin"})  # checked here; an MCP server would check it against itself


def metadata(gw: Any, scope, name: str) -> dict[str, Any] | None:
    """RFC 9728 protected-resource metadata for the MCP server fronted as ``name``."""
    up = gw.cfg.upstreams.get(name)
    if up is None or up.kind != "mcp":
        return None
    base = gw._public(scope)
    found = {
        "resource": f"{base}{gw.prefix}/{name}",
        "authorization_servers": [gw.cfg.service or base],
        "bearer_methods_supported": ["header"],
        "dpop_signing_alg_values_supported": ["EdDSA", "Ed25519"],
        # a client that cannot sign gets a bearer token (CONSENT.md §6); one that can, DPoP
        "dpop_bound_access_tokens_required": False,
        "resource_name": f"{name} (MCP, through the Lineage gateway)",
    }
    if up.scopes:
        found["scopes_supported"] = scopes_supported(up)
    return found


def challenge(gw: Any, scope, name: str, error: str | None = None, *, bearer: bool = False) -> str:
    """``Bearer resource_metadata=..., scope=...`` (RFC 9728 §5.1, RFC 6750 §3) and the DPoP
    challenge; ``error`` goes with the scheme the client used."""
    url = f"{gw._public(scope)}{METADATA}{gw.prefix}/{name}"
    up = gw.cfg.upstreams.get(name)
    params = [f'resource_metadata="{url}"']
    if up is not None and up.scopes:
        params.append(f'scope="{" ".join(scopes_supported(up))}"')
    if error and bearer:
        params.append(f'error="{error}"')
    dpop = 'DPoP algs="EdDSA Ed25519"' + (f', error="{error}"' if error and not bearer else "")
    return f"Bearer {', '.join(params)}, {dpop}"


def _base(route) -> tuple[str, tuple[str, ...]]:
    """The prefix and segments a tool's name extends (``tool`` and none, by default)."""
    one = route.resource_of(("x",))
    return one.prefix, one.segments[:-1]


def tool_pattern(route, tool: str) -> str:
    """The resource pattern of a tool (``*``: every tool), which is also the OAuth scope
    naming it: ``tool:send_email``, ``tool:*``."""
    if tool == "*":
        prefix, segments = _base(route)
        return str(Resource(prefix, segments, True))
    return str(route.resource_of((tool,)))


def scopes_supported(up: Upstream) -> list[str]:
    """The scopes a stock OAuth client asks for: the configured tools (``scopes``)."""
    return [tool_pattern(up.route, t) for t in up.scopes]


def tools_scope(up: Upstream, scope: str | None) -> list[dict[str, Any]]:
    """The authorisation details an OAuth ``scope`` asks for at this MCP server: ``call``,
    at its location, the tools it names (``tool:NAME`` or ``tool:*``); with none, the
    advertised ``scopes_supported``, or every tool. FormatError for anything else."""
    tokens = scope.split() if scope else []
    if not tokens:
        tokens = scopes_supported(up) or [tool_pattern(up.route, "*")]
    prefix, segments = _base(up.route)
    patterns = set()
    for token in tokens:
        try:
            r = parse_resource(token, allow_wildcard=True)
        except FormatError:
            r = None
        depth = len(segments) + (0 if r is None or r.wildcard else 1)
        if (
            r is None
            or r.prefix != prefix
            or r.segments[: len(segments)] != segments
            or len(r.segments) != depth
        ):
            example = tool_pattern(up.route, "*")
            raise FormatError(
                f"scope: {token[:80]!r} is not a tool of this MCP server ({example} or one "
                "tool's name in its place)"
            )
        patterns.add(str(r))
    return [
        {
            "type": up.route.type,
            "actions": ["call"],
            "locations": [up.route.location],
            "resources": sorted(patterns),
        }
    ]


def visible(up: Upstream, details: tuple[Detail, ...], tool: str) -> bool:
    """Whether some detail of the scope could allow calling ``tool`` (its constraints
    aside: they are judged per call)."""
    try:
        resource = up.route.resource_of((tool,))
    except MappingError:
        return False
    location = up.route.location
    for d in details:
        if d.type != up.route.type or "call" not in d.actions:
            continue
        if location not in {str(x) for x in d.locations}:  # none: no located request
            continue
        if any(matches(p, resource) for p in d.resources):
            return True
    return False


def _held_key(credential: str, message: dict[str, Any]) -> str:
    """A held call of a client that cannot sign, whatever JSON-RPC id its retry carries."""
    rest = {k: v for k, v in message.items() if k != "id"}
    return credential + "\n" + json.dumps(rest, sort_keys=True, separators=(",", ":"))


UPSTREAM_ERROR = -32000  # what an MCP server's error in the gateway's own codes becomes


def _upstream_answer(message: Any, ident: Any = None) -> Any:
    """An MCP server's answer as the gateway passes it on: an error in one of the codes the
    gateway speaks with (-31403, -31402) becomes -32000, its message marked as the
    server's, its data dropped; with ``ident``, the answer's id is set to it."""
    if not isinstance(message, dict):
        return message
    error = message.get("error")
    if isinstance(error, dict) and error.get("code") in (DENIED, APPROVAL_REQUIRED):
        message["error"] = {
            "code": UPSTREAM_ERROR,
            "message": f"the MCP server answered: {str(error.get('message', ''))[:1024]}",
        }
    if ident is not None and "id" in message:
        message["id"] = ident
    return message


def _each_message(data: bytes, ctype: str, change) -> bytes:
    """``change`` applied to each JSON-RPC message of an answer (JSON, or an SSE stream)."""
    if ctype.split(";")[0].strip().lower() == "text/event-stream":
        out = []
        for line in data.decode("utf-8").split("\n"):
            if line.startswith("data:"):
                payload = line[5:].strip()
                with contextlib.suppress(ValueError):  # not JSON: passed on as it is
                    line = "data: " + json.dumps(change(json.loads(payload)))
            out.append(line)
        return "\n".join(out).encode()
    return json.dumps(change(json.loads(data))).encode()


def _filter(up: Upstream, details: tuple[Detail, ...], data: bytes, ctype: str) -> bytes:
    """Drop from a ``tools/list`` answer (JSON, or an SSE stream of JSON-RPC messages) the
    tools the credential cannot call."""

    def keep(message: Any) -> Any:
        if isinstance(message, dict) and isinstance(message.get("result"), dict):
            tools = message["result"].get("tools")
            if isinstance(tools, list):
                message["result"]["tools"] = [
                    t
                    for t in tools
                    if isinstance(t, dict) and visible(up, details, str(t.get("name", "")))
                ]
        return message

    return _each_message(data, ctype, keep)


def _rpc_error(ident: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": ident, "error": error}


async def handle(gw: Any, up: Upstream, path: str, rest: str, scope, receive, send) -> None:
    from .app import _Refusal

    name = up.route.name
    method = scope["method"]
    headers = Headers(scope=scope)
    if rest not in ("", "/"):
        raise _Refusal(404, "not_found", f"{name} is an MCP endpoint: POST to it")
    origin = headers.get("origin")
    if origin is not None and origin.rstrip("/") != gw._public(scope):
        raise _Refusal(403, "invalid_request", "requests from that Origin are not accepted")
    if method not in ("POST", "DELETE"):
        raise _Refusal(
            405, "invalid_request", "POST messages; no server stream", {"Allow": "POST, DELETE"}
        )
    signer = _bearer(gw, scope, name, headers)  # a client that cannot sign: its key
    try:
        if signer is not None:
            handle_, signer = signer
            proof_key = signer.kid
        else:
            handle_, proof_key = gw._authenticate(scope, headers, path, method)
    except _Refusal as r:
        if r.status == 401:
            error = (
                None if r.error == "invalid_token" and not headers.get("authorization") else r.error
            )
            r.headers["WWW-Authenticate"] = challenge(gw, scope, name, error)
        raise
    body, more = await gw._read(up, headers, receive)
    if more:
        raise _Refusal(413, "request_too_large", f"messages are limited to {up.route.body_limit}")
    message: dict[str, Any] = {}
    if method == "POST":
        try:
            message = parse_json_object(body, "message")
        except MappingError as exc:
            return await gw._json(send, 400, _rpc_error(None, -32600, str(exc)))
    rpc = message.get("method")
    ident = message.get("id")
    for header, value in (("mcp-method", rpc), ("mcp-name", _tool(message))):
        given = headers.getlist(header)
        if len(given) > 1 or (given and given[0] != value):  # one message, one reading
            return await gw._json(
                send, 400, _rpc_error(ident, -32600, f"the {header} header is not the message's")
            )

    if rpc == "tools/call":
        held_key, kept = None, None
        try:
            if signer is not None:  # the gateway signs for the key the bearer token carries
                held_key = _held_key(handle_, message)
                kept = gw.held_calls.get(held_key)
                if kept is not None and kept[3] > time.monotonic():
                    # the call its person was asked about, asked again (a client's retry has
                    # a new JSON-RPC id): the same invocation, over the same message
                    inv, body = kept[0], kept[1]
                else:
                    kept = None
                    inv = sign_invocation(
                        signer, handle_, tool_request(up.route, message, body), int(time.time())
                    )
            else:
                inv = gw._invocation(headers, handle_, proof_key)
                gw._covers(inv, tool_request(up.route, message, body))
        except (MappingError, FormatError) as exc:
            return await gw._json(send, 400, _rpc_error(ident, -32602, str(exc)))
        except _Refusal as r:
            if r.status == 401:
                r.headers["WWW-Authenticate"] = challenge(gw, scope, name, "invalid_token")
            raise
        secret = await gw._secret(up)
        try:
            # the log says the gateway signed this invocation, for the bearer token's key
            extra = {"authentication": "bearer"} if signer is not None else None
            verdict = await gw._decide(up, inv, scope, {}, extra)
        except _Refusal as r:
            if r.status == 401:  # unknown credential, or not its holder key: no proof
                r.headers["WWW-Authenticate"] = challenge(
                    gw, scope, name, "invalid_token", bearer=signer is not None
                )
            if r.error == APPROVAL_PENDING:  # step-up: a person must approve this call
                if held_key is not None:
                    first = kept[2] if kept is not None else ident
                    gw.held_calls.put(held_key, (inv, body, first, time.monotonic() + HELD_FOR))
                data = {"reason": r.args[0], **(r.extra or {})}
                held = _rpc_error(ident, APPROVAL_REQUIRED, f"approval required: {r.args[0]}", data)
                return await gw._json(send, 200, held, r.headers)
            raise
        if held_key is not None:
            gw.held_calls.pop(held_key)
        answer_id = ident if kept is not None and kept[2] != ident else None

        def transform(data: bytes, ctype: str) -> bytes:
            # the server's own errors never wear the gateway's codes (a server answering
            # -31403 or -31402 would pass off its words as Lineage's denial or approval
            # link); and a held call's retry is answered under its own id
            return _each_message(data, ctype, lambda m: _upstream_answer(m, answer_id))

        if not verdict.allowed:
            data = {
                "reason": verdict.reason,
                "id": verdict.id,
                "index": verdict.index,
                "receipt": verdict.receipt,
            }
            denial = _rpc_error(ident, DENIED, f"access denied: {verdict.reason}", data)
            return await gw._json(send, 200, denial)
        return await gw._forward(
            up,
            scope,
            receive,
            send,
            access=verdict.id,
            body=body,
            secret=secret,
            transform=transform,
            drop_also=NO_ORIGIN,
        )

    holding = await _holding(gw, up, handle_)
    if holding is None or holding.jkt != proof_key:
        raise _Refusal(
            401,
            "invalid_token",
            "the credential is not active, or not held by the DPoP key",
            {
                "WWW-Authenticate": challenge(
                    gw, scope, name, "invalid_token", bearer=signer is not None
                )
            },
        )
    is_answer = rpc is None and "id" in message and ("result" in message or "error" in message)
    passes = method == "DELETE" or is_answer or rpc in FORWARDED
    passes = passes or (isinstance(rpc, str) and rpc.startswith("notifications/"))
    if not passes:
        refusal = _rpc_error(ident, DENIED, f"{rpc!s:.64} is not available through the gateway")
        return await gw._json(send, 200, refusal)
    transform = None
    if rpc == "tools/list":

        def transform(data: bytes, ctype: str) -> bytes:
            return _filter(up, holding.details, data, ctype)

    secret = await gw._secret(up)
    await gw._forward(
        up,
        scope,
        receive,
        send,
        access=None,
        body=body,
        secret=secret,
        transform=transform,
        drop_also=NO_ORIGIN,
    )


def _bearer(gw: Any, scope, name: str, headers: Headers) -> tuple[str, SigningKey] | None:
    """The credential and holder key of ``Authorization: Bearer lnb_...``; None when the
    request authenticates otherwise (DPoP, or nothing: ``_authenticate`` answers); a 401 for
    a Bearer token that is not one. The token is never echoed, logged or forwarded."""
    from .app import _Refusal

    given = headers.getlist("authorization")
    if len(given) != 1:
        return None
    scheme, _, value = given[0].partition(" ")
    if scheme.lower() != "bearer":
        return None
    found = read_bearer(value.strip())
    if found is None:
        raise _Refusal(
            401,
            "invalid_token",
            "not a Lineage bearer token (lnb_...)",
            {"WWW-Authenticate": challenge(gw, scope, name, "invalid_token", bearer=True)},
        )
    return found


async def _holding(gw: Any, up: Upstream, credential: str):
    from .app import _Refusal
    from .decider import Unavailable

    try:
        return await gw.decider.holding(credential)
    except Unavailable:
        gw.metrics.requests.labels(up.route.name, "unavailable").inc()
        raise _Refusal(
            503, "temporarily_unavailable", "the decision point cannot be reached"
        ) from None


def _tool(message: dict[str, Any]) -> Any:
    params = message.get("params")
    return params.get("name") if isinstance(params, dict) else None
