"""MCP clients through the gateway (docs/INTEGRATIONS.md): the ``mcp`` SDK's own client,
every message signed for a :class:`~lineage.client.toolkit.Toolkit`'s credential.

    async with mcp_session(kit, "tools") as mcp:          # the server the gateway fronts
        result = await call_tool(mcp, "send_email", {"to": "bob@corp.example"})
        # a denial is a result: result.is_error, its text the reason and the field
    reader = await delegate_tools(kit, "tools", task="triage/read", tools=["read_inbox"])
    async with mcp_session(reader, "tools") as mcp:       # the sub-agent: a fresh key
        tools = await mcp_tools(mcp)                      # only what its credential names

The gateway decides and logs each ``tools/call`` and attaches the MCP server's secret; the
session carries only the credential, a DPoP proof and the signed invocation. MCP has no
model of its own: whatever drives the agent (a framework, a loop over a model's tool
calls) calls :func:`call_tool` or the :class:`McpTool` callables.

Importing this module imports the ``mcp`` SDK (and ``httpx2``, its HTTP client); nothing
else in ``lineage.client`` does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, TextContent, Tool

from lineage.verifier.resource import matches, parse_resource

from .gateway import TOOL_ACTION, MappingError, canonical_segments, mcp_auth
from .toolkit import Denied, Held, Refused, Toolkit

__all__ = [
    "APPROVAL_REQUIRED",
    "DENIED",
    "McpTool",
    "call_tool",
    "delegate_tools",
    "mcp_session",
    "mcp_tools",
    "refusal",
    "text_of",
]

DENIED = -31403  # the gateway's JSON-RPC refusal (docs/GATEWAY.md §8)
APPROVAL_REQUIRED = -31402  # held for a person's approval (step-up)


@asynccontextmanager
async def mcp_session(
    kit: Toolkit, server: str, *, mode: str = "auto", timeout: float = 30, **options: Any
) -> AsyncIterator[Client]:
    """An SDK ``Client`` for the MCP server the gateway fronts as ``server``, every message
    signed for ``kit``'s credential by its key. ``options`` go to ``Client`` (its response
    cache is off by default: what ``tools/list`` shows depends on the credential)."""
    auth = await anyio.to_thread.run_sync(mcp_auth, kit.gateway, server, kit.agent, kit.credential)
    options.setdefault("cache", None)
    url = kit.gateway.rstrip("/") + "/" + server
    async with httpx2.AsyncClient(auth=auth, timeout=timeout) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode, **options) as client:
            yield client


def refusal(error: MCPError) -> Denied | Held | None:
    """The gateway's refusal in ``error`` (``Denied``: reason, field, receipt; ``Held``:
    the person's page), or None for any other error."""
    data = error.data if isinstance(error.data, Mapping) else {}
    if error.code == DENIED:
        return Denied(str(data.get("reason") or error.message), data.get("receipt"))
    if error.code == APPROVAL_REQUIRED:
        return Held(str(data.get("reason") or error.message), data.get("approval") or {})
    return None


def _refused(refused: Denied | Held) -> CallToolResult:
    if isinstance(refused, Denied):
        about = {"refusal": "denied", "check": refused.check, "field": refused.field}
    else:
        about = {"refusal": "held", "approval_url": refused.approval.get("url")}
    return CallToolResult(
        content=[TextContent(type="text", text=str(refused))],
        structured_content={**about, "reason": refused.reason},
        is_error=True,
    )


async def call_tool(
    client: Client, name: str, arguments: Mapping[str, Any] | None = None, **options: Any
) -> CallToolResult:
    """``client.call_tool``; the gateway's refusal becomes a tool error the model reads
    (``is_error``, the text "Lineage denied this call (field F): REASON", and
    ``structured_content`` with ``reason``, ``field``, ``check``), not an exception. The
    call never reached the server. Other errors are raised as the SDK raises them."""
    unsendable = _unsendable(name, arguments)
    if unsendable is not None:  # refused here: sent, it would end the session, not the call
        return CallToolResult(
            content=[TextContent(type="text", text=str(Refused(unsendable)))],
            structured_content={"refusal": "unsendable", "reason": unsendable},
            is_error=True,
        )
    try:
        return await client.call_tool(name, dict(arguments or {}), **options)
    except MCPError as error:
        refused = refusal(error)
        if refused is None:
            raise
        return _refused(refused)


MAX_MESSAGE = 1 << 20  # the gateway's default body_limit (GATEWAY.md §2)


def _unsendable(name: Any, arguments: Mapping[str, Any] | None) -> str | None:
    """Why the gateway could not decide this call (a tool name that is not one resource
    segment, a message over its limit), or None."""
    if not isinstance(name, str) or not name or len(name) > 256 or name == "*":
        return f"{str(name)[:64]!r} is not a tool name"
    try:
        segments = canonical_segments("/" + name)
    except MappingError as exc:
        return f"{name[:64]!r} is not a tool name: {exc}"
    if tuple(segments) != (name,):
        return f"{name[:64]!r} is not a tool name: one path segment, spelled once"
    try:
        size = len(json.dumps(dict(arguments or {})))
    except (TypeError, ValueError) as exc:
        return f"the arguments are not JSON: {exc}"
    if size > MAX_MESSAGE:
        return f"the arguments are {size} bytes, more than the gateway takes"
    return None


def text_of(result: CallToolResult) -> str:
    """A result as the text a model reads: its text blocks, else its structured content."""
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    if texts:
        return "\n".join(texts)
    return json.dumps(result.structured_content) if result.structured_content else ""


@dataclass
class McpTool:
    """One tool the credential may call, as a plain async callable for any framework:
    ``await tool(**arguments)`` is its answer's text (a refusal's text when refused)."""

    client: Client
    tool: Tool

    @property
    def name(self) -> str:
        return self.tool.name

    @property
    def description(self) -> str:
        return self.tool.description or ""

    @property
    def input_schema(self) -> dict[str, Any]:
        return dict(self.tool.input_schema)

    async def __call__(self, **arguments: Any) -> str:
        return text_of(await call_tool(self.client, self.tool.name, arguments))


async def mcp_tools(client: Client) -> list[McpTool]:
    """The server's tools that the credential names (the gateway filters ``tools/list``)."""
    found, cursor = [], None
    while True:
        page = await client.list_tools(cursor=cursor)
        found += [McpTool(client, tool) for tool in page.tools]
        cursor = page.next_cursor
        if cursor is None:
            return found


def _tools_scope(kit: Toolkit, server: str, tools: Sequence[str]) -> list[dict[str, Any]]:
    """Each detail of ``kit``'s scope for ``server``'s tools, keeping only ``tools``."""
    route = mcp_auth(kit.gateway, server, kit.agent, kit.credential).route
    names = {tool: parse_resource(str(route.resource_of((tool,)))) for tool in tools}
    scope, covered = [], set()
    for detail in kit.scope():
        if (
            detail.get("type") != route.type
            or TOOL_ACTION not in detail.get("actions", [])
            or route.location not in detail.get("locations", [])
        ):
            continue
        patterns = [parse_resource(p) for p in detail.get("resources", [])]
        kept = {t for t, name in names.items() if any(matches(p, name) for p in patterns)}
        if kept:
            covered |= kept
            resources = sorted(str(names[t]) for t in kept)
            scope.append(
                {
                    **detail,
                    "actions": [TOOL_ACTION],
                    "locations": [route.location],
                    "resources": resources,
                }
            )
    missing = sorted(set(tools) - covered)
    if missing:
        raise ValueError(f"this credential may not call {', '.join(missing)} on {server}")
    return scope


async def delegate_tools(
    kit: Toolkit,
    server: str,
    *,
    task: str,
    tools: Sequence[str],
    ttl: int = 300,
    description: str = "",
    **limits: Any,
) -> Toolkit:
    """The hand-off: a sub-agent's toolkit (a fresh key) whose credential, derived from
    ``kit``'s in the ledger, may call only ``tools`` on ``server`` (each detail of ``kit``'s
    scope that names one, narrowed to it, its constraints kept); open its own
    :func:`mcp_session`. ``limits`` (``max_uses``, ``max_depth``, ...) as ``kit.delegate``."""

    def derive() -> Toolkit:
        scope = _tools_scope(kit, server, tools)
        return kit.delegate(task=task, scope=scope, ttl=ttl, description=description, **limits)

    return await anyio.to_thread.run_sync(derive)
