"""The MCP adapter (lineage.client.mcp_tools) with the `mcp` SDK's own client and server.

MCP has no model of its own, so a deterministic fake model drives the agent: a scripted
list of tool calls, each chosen in turn, that reads every answer (a tiny policy). The agent
calls an allowed tool through the gateway to an MCP server on 127.0.0.1 (which receives its
own secret, never the agent's credential), is denied one call (the model reads the reason
and the field; the run goes on; the server never sees it), and hands off to a sub-agent
whose credential, derived in the ledger with a fresh key, may call `read_inbox` only. The
ledger shows grant -> delegation -> accesses, and lineage-verify proves it offline.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lineage.client import Agent, LineageClient
from lineage.client.mcp_tools import call_tool, delegate_tools, mcp_session, mcp_tools, text_of
from lineage.client.toolkit import Toolkit
from lineage.ledger.export import credential_bundle
from lineage.verifier.bundle import verify_bundle

from .api_server import running
from .gateway_harness import gateway, serve_app
from .test_gateway_mcp import MCP_SECRET, SCOPE, Guard, mcp_config


@dataclass
class World:
    srv: Any
    guard: Guard
    kit: Toolkit


@contextmanager
def mcp_world(tmp_path: Path, server: Any = None) -> Iterator[World]:
    """alice's grant to an agent, whose toolkit reaches ``server`` (default the mail
    server) through the gateway's MCP front. The caller sets LINEAGE_TEST_MCP_KEY."""
    guard = Guard.serving(server)
    with running(tmp_path) as srv, serve_app(guard, lifespan="on") as upstream:
        cfg = mcp_config(srv, upstream)
        agent = Agent.ephemeral()
        with LineageClient(srv.base, log_key=srv.log.log_key.vkey) as client:
            handle = client.grant(srv.alice, "alice@corp", agent, task="mail", scope=SCOPE)
        with gateway(srv, cfg) as (_gw, base):
            kit = Toolkit.start(srv.base, base, agent, handle, log_key=srv.log.log_key.vkey)
            try:
                yield World(srv, guard, kit)
            finally:
                kit.close()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("LINEAGE_TEST_MCP_KEY", MCP_SECRET)
    with mcp_world(tmp_path) as w:
        yield w


@dataclass
class ScriptedModel:
    """The fake model: it answers each turn with the next scripted tool call, and reads
    (keeps) every answer it gets. ``("hand_off", {...})`` hands work to a sub-agent."""

    script: list[tuple[str, dict[str, Any]]]
    read: list[tuple[str, bool, str]] = field(default_factory=list)
    handed: list[Toolkit] = field(default_factory=list)  # the sub-agents it handed off to

    def next_call(self) -> tuple[str, dict[str, Any]] | None:
        return self.script.pop(0) if self.script else None


async def run_agent(kit: Toolkit, model: ScriptedModel, sub_model: ScriptedModel | None = None):
    """The agent loop: the model picks a tool, the tool's answer (or refusal) goes back."""
    async with mcp_session(kit, "mail") as mcp:
        listed = sorted(tool.name for tool in await mcp_tools(mcp))
        while (call := model.next_call()) is not None:
            name, arguments = call
            if name == "hand_off":
                sub = await delegate_tools(kit, "mail", **arguments)
                model.handed.append(sub)
                sub_listed = await run_agent(sub, sub_model)
                model.read.append((name, False, f"{sub.credential} saw {sub_listed}"))
                continue
            result = await call_tool(mcp, name, arguments)
            model.read.append((name, bool(result.is_error), text_of(result)))
            if result.is_error:
                model.read.append(("structured", True, json.dumps(result.structured_content)))
    return listed


def test_an_agent_calls_is_denied_and_hands_off_over_mcp(world, tmp_path):
    srv, guard, kit = world.srv, world.guard, world.kit
    model = ScriptedModel(
        [
            ("read_inbox", {"folder": "invoices"}),
            ("send_email", {"to": "eve@evil.example", "subject": "x"}),  # outside `to`
            ("send_email", {"to": "bob@corp.example", "subject": "hi"}),  # the run goes on
            ("hand_off", {"task": "mail/read", "tools": ["read_inbox"], "ttl": 120}),
        ]
    )
    reader = ScriptedModel(
        [
            ("read_inbox", {}),
            ("send_email", {"to": "bob@corp.example", "subject": "x"}),  # not its tool
        ]
    )
    listed = asyncio.run(run_agent(kit, model, reader))

    # tools/list showed each agent only what its credential names
    assert listed == ["read_inbox", "send_email"]
    (sub,) = model.handed
    sub_handle = sub.credential
    assert model.read[-1] == ("hand_off", False, f"{sub_handle} saw ['read_inbox']")

    # the model read each answer, and each refusal with its reason and field
    ok, denied, structured, sent = model.read[:4]
    assert ok == ("read_inbox", False, "3 messages in invoices")
    assert denied[:2] == ("send_email", True)
    assert denied[2].startswith("Lineage denied this call (field attributes.to): ")
    assert "does not permit the request: attributes.to:" in denied[2]
    assert json.loads(structured[2])["field"] == "attributes.to"
    assert sent == ("send_email", False, "sent to bob@corp.example")
    sub_ok, sub_denied, sub_structured = reader.read
    assert sub_ok == ("read_inbox", False, "3 messages in inbox")
    assert sub_denied[:2] == ("send_email", True)
    assert sub_denied[2].startswith("Lineage denied this call (field resource): ")
    assert json.loads(sub_structured[2])["field"] == "resource"

    # the server got exactly the allowed calls, with its own secret and nothing of the agents'
    assert guard.calls == ["read_inbox:invoices", "send_email:bob@corp.example", "read_inbox:inbox"]
    assert guard.headers
    for headers in guard.headers:
        assert headers["x-mcp-key"] == MCP_SECRET
        assert not {"authorization", "dpop", "lineage-invocation"} & set(headers)
        assert not any(h in v for v in headers.values() for h in (kit.credential, sub_handle))

    # the ledger: grant (alice) -> delegation (a fresh key) -> the accesses of each
    state = srv.log.state()
    grant = srv.log.leaf(state.index_of(kit.credential)).entry.obj
    delegation = srv.log.leaf(state.index_of(sub_handle)).entry.obj
    assert grant["kind"] == "grant" and grant["principal"] == "alice@corp"
    assert delegation["kind"] == "delegation" and delegation["parent"] == kit.credential
    assert grant["holder"] == kit.agent.key.public.b64
    assert delegation["holder"] == sub.agent.key.public.b64 != grant["holder"]
    assert delegation["task"]["id"] == "mail/read"
    assert [d["resources"] for d in delegation["scope"]] == [["tool:read_inbox"]]
    accesses = []
    for i in range(srv.log.size):
        body = srv.log.leaf(i).entry.obj
        if body["kind"] == "access":
            request = body["invocation"]["request"]
            accesses.append(
                (i, body["invocation"]["credential"], request["resource"], body["decision"])
            )
    assert [a[1:] for a in accesses] == [
        (kit.credential, "tool:read_inbox", "allow"),
        (kit.credential, "tool:send_email", "deny"),
        (kit.credential, "tool:send_email", "allow"),
        (sub_handle, "tool:read_inbox", "allow"),
        (sub_handle, "tool:send_email", "deny"),
    ]
    assert state.index_of(kit.credential) < state.index_of(sub_handle) < accesses[3][0]

    # offline: the sub-agent's chain and its accesses, under the log's key alone
    bundle = credential_bundle(srv.log, sub_handle)
    proved = verify_bundle(bundle, srv.log.log_key.vkey)
    (chain,) = proved.chains()
    assert [r.id for r in chain] == [kit.credential, sub_handle]
    assert chain[0].principal == "alice@corp"
    bundled = [(i, e.obj["invocation"]["credential"]) for i, e in proved.replay.accesses]
    assert bundled == [(i, credential) for i, credential, *_ in accesses]  # the whole chain's
    path = tmp_path / "reader.bundle.json"
    path.write_text(json.dumps(bundle))
    cli = Path(sys.executable).with_name("lineage-verify")
    out = subprocess.run(
        [str(cli), str(path), "--log-key", srv.log.log_key.vkey, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (shown,) = json.loads(out.stdout)["chains"]
    assert shown["principal"] == "alice@corp" and shown["task"] == "mail/read"
    assert [(link["kind"], link["id"]) for link in shown["links"]] == [
        ("grant", kit.credential),
        ("delegation", sub_handle),
    ]


def test_the_listed_tools_are_plain_callables_and_a_wider_hand_off_is_refused(world):
    srv, guard, kit = world.srv, world.guard, world.kit

    async def work():
        async with mcp_session(kit, "mail") as mcp:
            tools = {tool.name: tool for tool in await mcp_tools(mcp)}
            answers = [
                await tools["read_inbox"](folder="spam"),
                await tools["send_email"](to="eve@evil.example", subject="x"),
            ]
        with pytest.raises(ValueError, match="may not call delete_everything"):
            await delegate_tools(kit, "mail", task="mail/wipe", tools=["delete_everything"])
        return tools, answers

    tools, answers = asyncio.run(work())
    assert sorted(tools) == ["read_inbox", "send_email"]
    assert tools["send_email"].description == "Send an email."
    assert set(tools["send_email"].input_schema["properties"]) == {"to", "subject"}
    assert answers[0] == "3 messages in spam"
    assert answers[1].startswith("Lineage denied this call (field attributes.to): ")
    assert guard.calls == ["read_inbox:spam"]
    kinds = [srv.log.leaf(i).entry.obj["kind"] for i in range(srv.log.size)]
    assert "delegation" not in kinds  # the refused hand-off wrote nothing
