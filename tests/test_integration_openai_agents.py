"""The OpenAI Agents SDK adapter (``lineage.client.openai_agents``), with the SDK itself.

The SDK's own deterministic model (``agents.testing.ScriptedModel``) drives a triage agent
whose tools call a real mail API on 127.0.0.1 through the gateway: it reads a message, is
denied a send (the model reads the denial, naming the field), and hands off to a reader
agent; the hand-off derives a read-only credential with a fresh key, with which the reader
reads a message and is denied a send. The upstream saw exactly the two reads, with its
secret; the ledger holds grant -> delegation -> accesses, and a bundle of the reader's
credential verifies offline, with ``lineage-verify`` too. Tracing is off and nothing
resolves a name other than 127.0.0.1's.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agents import Agent, RunConfig, Runner, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message, function_call

from lineage.client.openai_agents import LineageContext, lineage_handoff, lineage_tool
from lineage.client.toolkit import Toolkit
from lineage.ledger.export import credential_bundle
from lineage.verifier.bundle import verify_bundle

from .api_server import MAIL
from .gateway_harness import MAIL_SECRET
from .test_gateway import World, stack

EVE, BOB = "eve@evil.example", "bob@corp.example"


def read_message(http: httpx.Client, message_id: str) -> str:
    """Read one message of the mailbox.

    Args:
        message_id: the message's id
    """
    r = http.get(f"{MAIL}/v1/messages/{message_id}")
    r.raise_for_status()
    return r.text


def send_email(http: httpx.Client, to: str, subject: str) -> str:
    """Send an email.

    Args:
        to: the recipient's address
        subject: the subject line
    """
    r = http.post(f"{MAIL}/v1/send", json={"to": to, "subject": subject})
    r.raise_for_status()
    return "sent"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    resolve = socket.getaddrinfo

    def local_only(host: Any, *args: Any, **kw: Any) -> Any:
        if host not in ("127.0.0.1", "localhost", b"127.0.0.1", b"localhost"):
            raise AssertionError(f"the test tried to reach {host!r}")
        return resolve(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    set_tracing_disabled(True)
    with stack(tmp_path) as w:
        yield w


def outputs(model: ScriptedModel) -> list[str]:
    """Every tool output the model was shown, in order (its last call's input)."""
    call = model.last_call
    assert call is not None and isinstance(call.input, list)
    return [i["output"] for i in call.input if i.get("type") == "function_call_output"]


def test_an_agent_hands_off_to_a_narrower_sub_agent_through_the_gateway(
    world: World, tmp_path: Path
) -> None:
    srv, log_key = world.srv, world.srv.log.log_key.vkey
    triage_model = ScriptedModel(
        [
            [function_call("read_message", {"message_id": "17"}, call_id="c1")],
            [function_call("send_email", {"to": EVE, "subject": "hi"}, call_id="c2")],
            [function_call("transfer_to_reader", {}, call_id="c3")],
        ]
    )
    reader_model = ScriptedModel(
        [
            [function_call("read_message", {"message_id": "18"}, call_id="c4")],
            [function_call("send_email", {"to": BOB, "subject": "re"}, call_id="c5")],
            [assistant_message("read 17 and 18; sending is not mine to do")],
        ]
    )
    reader = Agent(
        "reader",
        model=reader_model,
        tools=[lineage_tool(read_message), lineage_tool(send_email)],
    )
    triage = Agent(
        "triage",
        model=triage_model,
        tools=[lineage_tool(read_message), lineage_tool(send_email)],
        handoffs=[lineage_handoff(reader, task="mail/read", actions=["read"], ttl=120)],
    )
    # the model is shown each tool's own parameters, never `http`
    schema = triage.tools[1].params_json_schema
    assert sorted(schema["properties"]) == ["subject", "to"]

    kit = Toolkit.start(srv.base, world.base, world.agent, world.handle, log_key=log_key)
    ctx = LineageContext(kit)
    try:
        result = Runner.run_sync(
            triage,
            "Triage my inbox",
            context=ctx,
            max_turns=10,
            run_config=RunConfig(tracing_disabled=True),
        )
    finally:
        ctx.close()
    triage_model.assert_complete()
    reader_model.assert_complete()
    assert result.last_agent is reader
    assert result.final_output == "read 17 and 18; sending is not mine to do"

    # each tool call was an HTTP request: the allowed ones reached the upstream, with its
    # secret and not the agent's credential; the denied sends never did
    assert [(s.method, s.raw_path) for s in world.api.seen] == [
        ("GET", "/v1/messages/17"),
        ("GET", "/v1/messages/18"),
    ]
    sub = ctx.kit
    for seen in world.api.seen:
        assert seen.header("x-api-key") == [MAIL_SECRET]
        for name in ("authorization", "dpop", "lineage-invocation"):
            assert seen.header(name) == []
        assert world.handle not in json.dumps(seen.headers)
        assert sub.credential not in json.dumps(seen.headers)

    # the models read the answers: the upstream's, then the denial naming its field
    triage_saw = outputs(triage_model)
    assert json.loads(triage_saw[0])["path"] == "/v1/messages/17"
    assert triage_saw[1].startswith("Lineage denied this call (field attributes.to): ")
    assert MAIL_SECRET not in json.dumps(triage_model.last_call.input)
    reader_saw = outputs(reader_model)
    assert json.loads(reader_saw[-2])["path"] == "/v1/messages/18"
    assert reader_saw[-1].startswith("Lineage denied this call (field action): ")
    assert "'send' is not in scope[0].actions" in reader_saw[-1]

    # the hand-off derived the reader's credential: read only, a fresh key, child of ours
    assert [k.credential for k in ctx.kits] == [world.handle, sub.credential]
    assert sub.parent is kit and sub.task == "mail/read"
    assert sub.agent.key.public != world.agent.key.public
    state = srv.log.state()  # closing the run revoked the hand-off's credential, only it
    assert state.revoked_at(sub.credential) is not None
    assert state.revoked_at(world.handle) is None
    rec = state.credential(sub.credential)  # (the run's clients are closed)
    assert [list(d.actions) for d in rec.credential.scope] == [["read"]]

    # the ledger: grant -> delegation -> accesses, each access by the credential that made it
    entries = [
        leaf.entry
        for _, leaf in srv.log.leaves()
        if leaf.entry.kind in ("grant", "delegation", "access")
    ]
    grant, *rest = entries
    assert grant.id == world.handle and grant.obj["holder"] == world.agent.key.public.b64
    assert [(e.kind, e.obj.get("decision")) for e in rest] == [
        ("access", "allow"),
        ("access", "deny"),
        ("delegation", None),
        ("access", "allow"),
        ("access", "deny"),
    ]
    delegation = rest[2]
    assert delegation.id == sub.credential and delegation.obj["parent"] == world.handle
    assert delegation.obj["holder"] == sub.agent.key.public.b64
    assert delegation.obj["task"]["id"] == "mail/read"
    assert [d["actions"] for d in delegation.obj["scope"]] == [["read"]]
    used = [e.obj["invocation"]["credential"] for e in rest if e.kind == "access"]
    assert used == [world.handle, world.handle, sub.credential, sub.credential]

    # offline: the reader's chain, human first, and what it did, under the log's key alone
    bundle = credential_bundle(srv.log, sub.credential)
    proved = verify_bundle(bundle, log_key)
    record = proved.replay.credentials[sub.credential]
    assert [r.id for r in record.chain()] == [world.handle, sub.credential]
    assert record.principal == "alice@corp"
    assert record.parent is not None and record.parent.id == world.handle
    assert record.holder != record.parent.holder
    mine = [
        e for _, e in proved.replay.accesses if e.obj["invocation"]["credential"] == sub.credential
    ]
    assert [e.obj["decision"] for e in mine] == ["allow", "deny"]
    path = tmp_path / "reader-bundle.json"
    path.write_text(json.dumps(bundle))
    cli = [sys.executable, "-m", "lineage.verifier.cli", str(path), "--log-key", log_key, "--json"]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["ok"] is True
    [cli_chain] = verdict["chains"]
    assert cli_chain["credential"] == sub.credential and cli_chain["task"] == "mail/read"
    assert [link["id"] for link in cli_chain["links"]] == [world.handle, sub.credential]
