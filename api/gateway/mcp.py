"""MCP servers behind the gateway: each ``tools/call`` decided and logged (docs/GATEWAY.md §8).

The gateway is the MCP server's protected resource (MCP authorization, RFC 9728): it
publishes protected-resource metadata naming Lineage as the authorisation server and
answers an unauthenticated request with 401 and ``WWW-Authenticate: Bearer
resource_metadata="..."``. Every message needs the agent's credential and a DPoP proof
(the credential never reaches the MCP server; the server's own secret, if any, is
attached by the gateway). Then, by JSON-RPC method:

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
from typing import Any

from starlette.datastructures import Headers

from lineage.client.gateway import MappingError, parse_json_object, tool_request
from lineage.verifier.resource import matches
from lineage.verifier.scope import Detail

from .config import Upstream

__all__ = ["DENIED", "METADATA", "handle", "metadata"]

METADATA = "/.well-known/oauth-protected-resource"
DENIED = -31403  # outside JSON-RPC's reserved -32768..-32000: a refusal, not an error
FORWARDED = frozenset({"initialize", "ping", "server/discover", "tools/list"})
NO_ORIGIN = frozenset({"origin"})  # checked here; an MCP server would check it against itself


def metadata(gw: Any, scope, name: str) -> dict[str, Any] | None:
    """RFC 9728 protected-resource metadata for the MCP server fronted as ``name``."""
    up = gw.cfg.upstreams.get(name)
    if up is None or up.kind != "mcp":
        return None
    base = gw._public(scope)
    return {
        "resource": f"{base}{gw.prefix}/{name}",
        "authorization_servers": [gw.cfg.service or base],
        "bearer_methods_supported": ["header"],
        "dpop_signing_alg_values_supported": ["EdDSA", "Ed25519"],
        "dpop_bound_access_tokens_required": True,
        "resource_name": f"{name} (MCP, through the Lineage gateway)",
    }


def challenge(gw: Any, scope, name: str, error: str | None = None) -> str:
    url = f"{gw._public(scope)}{METADATA}{gw.prefix}/{name}"
    dpop = 'DPoP algs="EdDSA Ed25519"' + (f', error="{error}"' if error else "")
    return f'Bearer resource_metadata="{url}", {dpop}'


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

    if ctype.split(";")[0].strip().lower() == "text/event-stream":
        out = []
        for line in data.decode("utf-8").split("\n"):
            if line.startswith("data:"):
                payload = line[5:].strip()
                with contextlib.suppress(ValueError):  # not JSON: passed on as it is
                    line = "data: " + json.dumps(keep(json.loads(payload)))
            out.append(line)
        return "\n".join(out).encode()
    return json.dumps(keep(json.loads(data))).encode()


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
    try:
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
        try:
            inv = gw._invocation(headers, handle_, proof_key)
            gw._covers(inv, tool_request(up.route, message, body))
        except MappingError as exc:
            return await gw._json(send, 400, _rpc_error(ident, -32602, str(exc)))
        except _Refusal as r:
            if r.status == 401:
                r.headers["WWW-Authenticate"] = challenge(gw, scope, name, "invalid_token")
            raise
        secret = await gw._secret(up)
        verdict = await gw._decide(up, inv, scope, {})
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
            drop_also=NO_ORIGIN,
        )

    holding = await _holding(gw, up, handle_)
    if holding is None or holding.jkt != proof_key:
        raise _Refusal(
            401,
            "invalid_token",
            "the credential is not active, or not held by the DPoP key",
            {"WWW-Authenticate": challenge(gw, scope, name, "invalid_token")},
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
