"""LangChain (langchain-core's own tools, messages and fake chat model) through the gateway.

A scripted orchestrator agent reads a message through the gateway to a real upstream on
127.0.0.1, hands off to a reader sub-agent (a fresh key, a credential narrowed to read)
that reads another message and is denied a send, is itself denied a send outside its
constraint, and sends within it. The models read each denial as a tool error naming the
field; the upstream saw exactly the allowed requests, with its secret and never the
agent's credential; the ledger holds grant -> delegation -> accesses, and the
sub-agent's chain verifies offline (the verifier's API and the ``lineage-verify`` CLI).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import StructuredTool

from lineage.client.langchain import lineage_handoff, lineage_tool, run_agent
from lineage.client.toolkit import Toolkit
from lineage.ledger.export import credential_bundle
from lineage.verifier.bundle import verify_bundle

from .api_server import MAIL
from .gateway_harness import MAIL_SECRET
from .test_gateway import World, stack

TRACING = (
    "LANGSMITH_TRACING",
    "LANGSMITH_TRACING_V2",
    "LANGCHAIN_TRACING",
    "LANGCHAIN_TRACING_V2",
    "LANGSMITH_API_KEY",
    "LANGCHAIN_API_KEY",
    "LANGSMITH_ENDPOINT",
    "LANGCHAIN_ENDPOINT",
)


# The tools: plain functions of the gateway's http client; they never hold a secret.
def read_message(http: httpx.Client, message_id: str) -> str:
    """Read one message of the mailbox."""
    r = http.get(f"{MAIL}/v1/messages/{message_id}")
    r.raise_for_status()
    return r.text


def send_message(http: httpx.Client, to: str, text: str) -> str:
    """Send a message."""
    r = http.post(f"{MAIL}/v1/send", json={"to": to, "text": text})
    r.raise_for_status()
    return f"sent to {to}"


class Seen(BaseCallbackHandler):
    """What a chat model was given at each turn."""

    def __init__(self) -> None:
        self.turns: list[list[BaseMessage]] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, **kw: Any) -> None:
        self.turns.append(list(messages[0]))


def scripted(*replies: AIMessage) -> tuple[GenericFakeChatModel, Seen]:
    seen = Seen()
    return GenericFakeChatModel(messages=iter(replies), callbacks=[seen]), seen


def call(name: str, id: str, **args: Any) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": id}])


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for name in TRACING:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    with stack(tmp_path) as w:
        yield w


def test_lineage_tool_schema_is_the_function_without_http():
    tool = lineage_tool(None, send_message)  # type: ignore[arg-type]  # built, not run
    assert isinstance(tool, StructuredTool)
    assert tool.name == "send_message" and tool.description == "Send a message."
    schema = tool.tool_call_schema.model_json_schema()
    assert sorted(schema["properties"]) == ["text", "to"]
    assert sorted(schema["required"]) == ["text", "to"]


def test_an_agent_hands_off_to_a_narrower_sub_agent_and_both_read_their_denials(
    world: World, tmp_path: Path
):
    vkey = world.srv.log.log_key.vkey
    kit = Toolkit.start(world.srv.base, world.base, world.agent, world.handle, log_key=vkey)
    subs: list[Toolkit] = []

    reader_model, reader_saw = scripted(
        call("read_message", "r1", message_id="18"),
        call("send_message", "r2", to="bob@corp.example", text="hi"),
        AIMessage("Message 18 read; sending is not mine to do."),
    )

    def reader(sub: Toolkit):
        subs.append(sub)
        tools = [lineage_tool(sub, read_message), lineage_tool(sub, send_message)]
        return lambda request: run_agent(reader_model, tools, request)

    model, saw = scripted(
        call("read_message", "o1", message_id="17"),
        call("reader", "o2", request="Read message 18."),
        call("send_message", "o3", to="eve@evil.example", text="the summary"),
        call("send_message", "o4", to="bob@corp.example", text="the summary"),
        AIMessage("Done."),
    )
    tools = [
        lineage_tool(kit, read_message),
        lineage_tool(kit, send_message),
        lineage_handoff(
            kit,
            "reader",
            "Reads messages for you.",
            task="mail/read",
            actions=["read"],
            build=reader,
        ),
    ]
    with kit:
        messages = run_agent(model, tools, "Triage my inbox.")

    # The run went on to the end, past both denials.
    assert messages[-1].text == "Done."
    results = {m.tool_call_id: m for m in messages if isinstance(m, ToolMessage)}
    assert json.loads(results["o1"].content)["path"] == "/v1/messages/17"
    assert results["o1"].status == "success"
    assert results["o2"].content == "Message 18 read; sending is not mine to do."
    assert results["o4"].content == "sent to bob@corp.example"

    # The orchestrator's model read its denial (the field it names) at its next turn.
    eve = saw.turns[3][-1]
    assert isinstance(eve, ToolMessage) and eve.tool_call_id == "o3"
    assert eve.status == "error"
    assert eve.content.startswith("Lineage denied this call (field attributes.to): scope:")
    # The reader's model read its own: its credential does not permit send.
    denied = reader_saw.turns[2][-1]
    assert isinstance(denied, ToolMessage) and denied.tool_call_id == "r2"
    assert denied.status == "error"
    assert denied.content.startswith("Lineage denied this call (field action): scope:")
    assert json.loads(reader_saw.turns[1][-1].content)["path"] == "/v1/messages/18"

    # The upstream saw exactly the allowed requests, with its secret, never a credential.
    assert [(s.method, s.raw_path) for s in world.api.seen] == [
        ("GET", "/v1/messages/17"),
        ("GET", "/v1/messages/18"),
        ("POST", "/v1/send"),
    ]
    assert json.loads(world.api.seen[2].body)["to"] == "bob@corp.example"
    [sub] = subs
    for s in world.api.seen:
        assert s.header("x-api-key") == [MAIL_SECRET]
        assert s.header("authorization") == s.header("dpop") == []
        assert kit.credential not in json.dumps(s.headers)
        assert sub.credential not in json.dumps(s.headers)

    # The sub-agent's credential: a delegation of the agent's, for another key.
    assert sub.parent is kit and sub.task == "mail/read"
    assert sub.agent.key.public != kit.agent.key.public
    bundle = credential_bundle(world.srv.log, sub.credential)
    proved = verify_bundle(bundle, vkey)
    [chain] = proved.chains()
    grant, delegation = chain
    assert grant.entry.kind == "grant" and grant.principal == "alice@corp"
    assert grant.id == kit.credential
    assert delegation.entry.kind == "delegation" and delegation.id == sub.credential
    assert delegation.parent is not None and delegation.parent.id == kit.credential
    assert grant.holder == kit.agent.key.public
    assert delegation.holder == sub.agent.key.public != grant.holder
    assert [d["actions"] for d in delegation.entry.obj["scope"]] == [["read"]]
    # ... its accesses, after it; and revoked once the sub-agent finished.
    accesses = [
        e
        for e in proved.entries
        if e.leaf.entry.kind == "access"
        and e.leaf.entry.obj["invocation"]["credential"] == sub.credential
    ]
    assert [
        (e.leaf.entry.obj["decision"], e.leaf.entry.obj["invocation"]["request"]["action"])
        for e in accesses
    ] == [("allow", "read"), ("deny", "send")]
    assert grant.index < delegation.index < accesses[0].index
    assert sub.credential in proved.replay.revoked
    assert proved.replay.revoked[sub.credential] > accesses[-1].index

    # The whole chain, human to every tool call, from the agent's credential down.
    whole = verify_bundle(credential_bundle(world.srv.log, kit.credential), vkey)
    decided = [
        (
            e.leaf.entry.obj["invocation"]["credential"] == sub.credential,
            e.leaf.entry.obj["decision"],
            e.leaf.entry.obj["invocation"]["request"]["action"],
        )
        for e in whole.entries
        if e.leaf.entry.kind == "access"
    ]
    assert decided == [
        (False, "allow", "read"),
        (True, "allow", "read"),
        (True, "deny", "send"),
        (False, "deny", "send"),
        (False, "allow", "send"),
    ]

    # lineage-verify proves the sub-agent's chain offline.
    path = tmp_path / "reader-bundle.json"
    path.write_text(json.dumps(bundle))
    run = subprocess.run(
        [sys.executable, "-m", "lineage.verifier.cli", str(path), "--log-key", vkey, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    [proof] = report["chains"]
    assert report["ok"] and proof["principal"] == "alice@corp"
    assert proof["credential"] == sub.credential and proof["task"] == "mail/read"
    assert [(link["kind"], link["id"]) for link in proof["links"]] == [
        ("grant", kit.credential),
        ("delegation", sub.credential),
    ]


def test_a_hand_off_the_ledger_refuses_is_a_tool_error_and_no_sub_agent_runs(world: World):
    vkey = world.srv.log.log_key.vkey
    kit = Toolkit.start(world.srv.base, world.base, world.agent, world.handle, log_key=vkey)
    built: list[Toolkit] = []
    wider = [{"type": "email", "actions": ["delete"], "locations": [MAIL]}]
    tool = lineage_handoff(
        kit,
        "janitor",
        "Deletes messages.",
        task="mail/clean",
        scope=wider,
        build=lambda sub: built.append(sub) or (lambda request: "ran"),
    )
    with kit:
        answer = tool.invoke(
            {"name": "janitor", "args": {"request": "clean"}, "id": "h1", "type": "tool_call"}
        )
    assert isinstance(answer, ToolMessage) and answer.status == "error"
    assert answer.content.startswith("Lineage refused the hand-off to janitor:")
    assert built == [] and world.api.seen == []
