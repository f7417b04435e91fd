"""An MCP server (the `mcp` SDK's own) behind the gateway, and the SDK's own client.

The agent's credential and invocations go to the gateway; the MCP server receives only
its own secret. An allowed tool is called, a forbidden one is refused with a JSON-RPC error
and a logged deny, `tools/list` shows each agent only the tools its credential names, and a
sub-agent with a narrower credential sees and may call fewer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2  # the mcp SDK's HTTP client (a fork of httpx)
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from lineage.api.gateway.config import parse_gateway
from lineage.client import Agent, LineageClient
from lineage.client.dpop import make_proof
from lineage.client.gateway import INVOCATION_HEADER, encode_invocation, mcp_auth, tool_request

from .api_server import running
from .gateway_harness import gateway, serve_app

MCP_SECRET = "mcp-server-secret-2b8e61f0"
LOCATION = "https://mcp.example.com:443"


@dataclass
class Guard:
    """The MCP server's own authentication: only its secret gets in. Records what reached it."""

    app: Any
    headers: list[dict[str, str]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    @classmethod
    def serving(cls, server: Callable[[list[str]], Any] | None = None) -> Guard:
        """``server(calls)`` (default ``mail_server``) behind the guard; what reaches the
        MCP server is recorded in ``guard.calls``."""
        calls: list[str] = []
        return cls((server or mail_server)(calls), calls=calls)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            self.headers.append(headers)
            if headers.get("x-mcp-key") != MCP_SECRET:
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"no"})
                return
        await self.app(scope, receive, send)


def mail_server(guard_calls: list[str]) -> Any:
    server = MCPServer("mail")

    @server.tool()
    def read_inbox(folder: str = "inbox") -> str:
        """List the messages in a folder."""
        guard_calls.append(f"read_inbox:{folder}")
        return f"3 messages in {folder}"

    @server.tool()
    def send_email(to: str, subject: str) -> str:
        """Send an email."""
        guard_calls.append(f"send_email:{to}")
        return f"sent to {to}"

    @server.tool()
    def delete_everything() -> str:
        """Delete every message."""
        guard_calls.append("delete_everything")
        return "gone"

    return server.streamable_http_app(stateless_http=True, json_response=True)


SCOPE = [
    {
        "type": "mcp",
        "actions": ["call"],
        "locations": [LOCATION],
        "resources": ["tool:read_inbox"],
    },
    {
        "type": "mcp",
        "actions": ["call"],
        "locations": [LOCATION],
        "resources": ["tool:send_email"],
        "constraints": {"to": {"in": ["bob@corp.example"]}},
    },
]


def mcp_config(srv: Any, upstream: str) -> Any:
    """A gateway before the MCP server at ``upstream`` (as ``mail``), deciding at ``srv``."""
    return parse_gateway(
        {
            "service": srv.base,
            "token": {"from": "env", "name": "UNUSED"},
            "upstreams": {
                "mail": {
                    "kind": "mcp",
                    "url": upstream + "/mcp",
                    "location": LOCATION,
                    "secret": {"from": "env", "name": "LINEAGE_TEST_MCP_KEY"},
                    "attach": "header:X-Mcp-Key",
                }
            },
        }
    )


@dataclass
class World:
    srv: Any
    guard: Guard
    base: str
    agent: Agent
    handle: str


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("LINEAGE_TEST_MCP_KEY", MCP_SECRET)
    guard = Guard.serving()
    with running(tmp_path) as srv, serve_app(guard, lifespan="on") as upstream:
        cfg = mcp_config(srv, upstream)
        client = LineageClient(srv.base, log_key=srv.log.log_key.vkey)
        agent = Agent.ephemeral()
        handle = client.grant(srv.alice, "alice@corp", agent, task="mail", scope=SCOPE)
        client.close()
        with gateway(srv, cfg) as (_gw, base):
            yield World(srv, guard, base, agent, handle)


async def _session(w: World, agent: Agent, handle: str, mode: str, work):
    auth = mcp_auth(w.base, "mail", agent, handle)
    async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
        transport = streamable_http_client(w.base + "/mail", http_client=http)
        async with Client(transport, mode=mode, cache=None) as client:
            return await work(client)


def run(w: World, work, agent: Agent | None = None, handle: str | None = None, mode="auto"):
    return asyncio.run(_session(w, agent or w.agent, handle or w.handle, mode, work))


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_the_sdk_client_calls_an_allowed_tool_through_the_gateway(world, mode):
    async def work(client):
        return await client.call_tool("read_inbox", {"folder": "invoices"})

    result = run(world, work, mode=mode)
    assert not result.is_error
    assert "3 messages in invoices" in str(result.content)
    assert world.guard.calls == ["read_inbox:invoices"]
    for headers in world.guard.headers:  # the MCP server saw its secret, never the agent's
        assert headers["x-mcp-key"] == MCP_SECRET
        assert "authorization" not in headers and "dpop" not in headers
        assert "lineage-invocation" not in headers


def test_a_forbidden_tool_is_a_json_rpc_error_and_a_logged_deny(world):
    size = world.srv.size()

    async def work(client):
        with pytest.raises(MCPError) as denied:
            await client.call_tool("delete_everything", {})
        with pytest.raises(MCPError) as outside:
            await client.call_tool("send_email", {"to": "eve@evil.example", "subject": "x"})
        ok = await client.call_tool("send_email", {"to": "bob@corp.example", "subject": "hi"})
        return denied.value, outside.value, ok

    denied, outside, ok = run(world, work)
    assert denied.error.code == -31403 and "resource" in denied.error.message
    assert outside.error.code == -31403 and "attributes.to" in outside.error.message
    assert denied.error.data["receipt"]["index"] == denied.error.data["index"]
    assert not ok.is_error
    assert world.guard.calls == ["send_email:bob@corp.example"]
    assert world.srv.size() >= size + 3  # two denies and an allow, all logged


def test_tools_list_shows_only_what_the_credential_may_call(world):
    async def work(client):
        return sorted(t.name for t in (await client.list_tools()).tools)

    assert run(world, work) == ["read_inbox", "send_email"]


def test_a_sub_agent_with_a_narrower_credential_sees_and_calls_fewer_tools(world):
    reader = Agent.ephemeral()
    client = LineageClient(world.srv.base, log_key=world.srv.log.log_key.vkey)
    sub = client.delegate(
        world.agent, world.handle, reader, task="mail/read", scope=[SCOPE[0]], max_depth=0
    )
    client.close()

    async def work(c):
        tools = sorted(t.name for t in (await c.list_tools()).tools)
        with pytest.raises(MCPError) as refused:
            await c.call_tool("send_email", {"to": "bob@corp.example", "subject": "x"})
        ok = await c.call_tool("read_inbox", {})
        return tools, refused.value, ok

    tools, refused, ok = run(world, work, agent=reader, handle=sub)
    assert tools == ["read_inbox"]
    assert refused.error.code == -31403
    assert not ok.is_error
    assert world.guard.calls == ["read_inbox:inbox"]


def test_unauthenticated_requests_get_the_resource_metadata_challenge(world):
    r = httpx.post(
        world.base + "/mail",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Accept": "application/json, text/event-stream"},
        timeout=10,
    )
    assert r.status_code == 401
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith('Bearer resource_metadata="')
    url = challenge.split('"')[1]
    meta = httpx.get(url, timeout=10).json()
    assert meta["resource"] == world.base + "/mail"
    assert meta["authorization_servers"] == [world.srv.base]
    assert world.guard.headers == []


def test_another_agents_invocation_or_a_changed_message_is_refused(world):
    """The invocation covers the exact message: a different argument is not what was signed."""
    import json as json_

    url = world.base + "/mail"
    route = mcp_auth(world.base, "mail", world.agent, world.handle).route
    signed = json_.dumps(
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {
                "name": "send_email",
                "arguments": {"to": "bob@corp.example", "subject": "a"},
            },
        }
    ).encode()
    inv = world.agent.invoke(world.handle, tool_request(route, json_.loads(signed), signed))
    sent = signed.replace(b"bob@corp.example", b"eve@evil.example")
    headers = {
        "Authorization": f"DPoP {world.handle}",
        "DPoP": make_proof(world.agent.key.seed, "POST", url, access_token=world.handle),
        INVOCATION_HEADER: encode_invocation(inv),
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    r = httpx.post(url, content=sent, headers=headers, timeout=10)
    assert r.status_code == 401
    assert world.guard.calls == []


def test_a_mounted_gateway_publishes_its_mcp_metadata_at_the_services_root(tmp_path):
    """RFC 9728 puts the metadata of <base>/gateway/tools at
    <base>/.well-known/oauth-protected-resource/gateway/tools: the service routes it."""
    import uvicorn

    from lineage.api.main import create_app
    from lineage.ledger.config import Settings
    from lineage.ledger.ledger import init_ledger

    from .api_server import in_thread

    cfg = parse_gateway(
        {
            "mount": "/gateway",
            "upstreams": {"tools": {"kind": "mcp", "url": "http://127.0.0.1:9/mcp"}},
        }
    )
    log = init_ledger(tmp_path / "l.db", tmp_path / "keys", settings=Settings())
    app = create_app(log, Settings(), checkpoints=False, gateway=cfg)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    with in_thread(config) as port:
        base = f"http://127.0.0.1:{port}"
        meta = httpx.get(base + "/.well-known/oauth-protected-resource/gateway/tools", timeout=10)
        assert meta.status_code == 200, meta.text
        assert meta.json()["resource"] == base + "/gateway/tools"
        assert meta.json()["authorization_servers"] == [base]
        r = httpx.post(
            base + "/gateway/tools",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            timeout=10,
        )
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith(
            f'Bearer resource_metadata="{base}/.well-known/oauth-protected-resource/gateway/tools"'
        )
        missing = httpx.get(base + "/.well-known/oauth-protected-resource/gateway/nope", timeout=10)
        assert missing.status_code == 404
