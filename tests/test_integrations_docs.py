"""docs/INTEGRATIONS.md: every Python block compiles, and the core's example runs as shown
against a live service, gateway and upstream (the frameworks' examples run in their own
tests, tests/test_integration_*.py, which say which block they follow)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lineage.client import Agent, LineageClient

from .gateway_harness import MAIL_SECRET
from .test_gateway import SCOPE, stack
from .test_integration_mcp import world as mcp_world  # noqa: F401  (the MCP stack)

DOC = (Path(__file__).resolve().parent.parent / "docs" / "INTEGRATIONS.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", DOC, re.S)


def test_the_page_has_the_core_and_the_frameworks():
    assert len(BLOCKS) >= 1
    for heading in ("## The core", "## The drill"):
        assert heading in DOC


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_python_block_compiles(index: int):
    compile(BLOCKS[index], f"INTEGRATIONS.md block {index}", "exec")


def test_the_core_example_runs_as_shown(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    with stack(tmp_path) as w:
        agent = Agent.ephemeral()  # the person's grant, for the example's task
        with LineageClient(w.srv.base, log_key=w.srv.log.log_key.vkey) as client:
            credential = client.grant(
                w.srv.alice, "alice@corp", agent, task="inbox-triage", scope=SCOPE
            )
        names = {"SERVICE": w.srv.base, "GATEWAY": w.base, "agent": agent, "credential": credential}
        exec(compile(BLOCKS[0], "INTEGRATIONS.md core", "exec"), names)
        printed = capsys.readouterr().out
        assert '"/v1/messages/17"' in printed and '"/v1/messages/18"' in printed
        assert [s.raw_path for s in w.api.seen] == ["/v1/messages/17", "/v1/messages/18"]
        reader = names["reader"]
        assert w.srv.log.state().is_revoked(
            w.srv.log.state().credential(reader.credential), w.srv.log.size
        )


def _block(heading: str) -> str:
    """The Python block under a ``## heading`` of INTEGRATIONS.md."""
    section = DOC.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_langchain_example_runs_as_shown(tmp_path: Path, monkeypatch):
    """The LangChain block, with langchain-core's own fake chat model as ``model``: the
    orchestrator reads, hands off to the reader (a fresh key, read only), which reads."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    def call(name: str, args: dict, ident: str) -> AIMessage:
        return AIMessage("", tool_calls=[{"name": name, "args": args, "id": ident}])

    model = GenericFakeChatModel(
        messages=iter(
            [
                call("read_message", {"message_id": "17"}, "c1"),
                call("reader", {"request": "read message 18"}, "c2"),
                call("read_message", {"message_id": "18"}, "c3"),  # the reader's turn
                AIMessage("18 read."),
                AIMessage("Triaged."),
            ]
        )
    )
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    with stack(tmp_path) as w:
        names = {
            "SERVICE": w.srv.base,
            "GATEWAY": w.base,
            "agent": w.agent,
            "credential": w.handle,
            "LOG_KEY": w.srv.log.log_key.vkey,
            "model": model,
        }
        exec(compile(_block("LangChain"), "INTEGRATIONS.md LangChain", "exec"), names)
        assert [s.raw_path for s in w.api.seen] == ["/v1/messages/17", "/v1/messages/18"]
        assert names["messages"][-1].content == "Triaged."
        kinds = [leaf.entry.obj["kind"] for _, leaf in w.srv.log.leaves()]
        assert "delegation" in kinds and "revocation" in kinds  # handed off, then ended


def test_the_openai_agents_example_runs_as_shown(tmp_path: Path, monkeypatch):
    """The Agents SDK block, with the SDK's own scripted model in place of OpenAI's."""
    import agents
    from agents.testing import ScriptedModel, assistant_message, function_call

    triage = ScriptedModel(
        [
            [function_call("read_message", {"message_id": "17"}, call_id="c1")],
            [function_call("transfer_to_reader", {}, call_id="c2")],
        ]
    )
    reader = ScriptedModel(
        [
            [function_call("read_message", {"message_id": "18"}, call_id="c3")],
            [assistant_message("read 17 and 18")],
        ]
    )
    run_sync = agents.Runner.run_sync

    def scripted(agent, *args, **kw):  # the scripted model, no network, no traces
        agent.model = triage
        kw["run_config"] = agents.RunConfig(tracing_disabled=True)
        return run_sync(agent, *args, **kw)

    monkeypatch.setattr(agents.Runner, "run_sync", scripted)
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    with stack(tmp_path) as w:
        agent = Agent.ephemeral()  # the example's grant is for task inbox-triage
        with LineageClient(w.srv.base, log_key=w.srv.log.log_key.vkey) as client:
            credential = client.grant(
                w.srv.alice, "alice@corp", agent, task="inbox-triage", scope=SCOPE
            )
        names = {
            "SERVICE": w.srv.base,
            "GATEWAY": w.base,
            "agent": agent,
            "credential": credential,
            "LOG_KEY": w.srv.log.log_key.vkey,
        }
        source = _block("OpenAI Agents SDK").replace(
            'reader = Agent("reader",', 'reader = Agent("reader", model=READER_MODEL,'
        )
        names["READER_MODEL"] = reader
        exec(compile(source, "INTEGRATIONS.md OpenAI Agents SDK", "exec"), names)
        assert names["result"].final_output == "read 17 and 18"
        assert [s.raw_path for s in w.api.seen] == ["/v1/messages/17", "/v1/messages/18"]


def test_the_mcp_example_runs_as_shown(mcp_world):  # noqa: F811
    import asyncio

    w = mcp_world
    names = {
        "SERVICE": w.srv.base,
        "GATEWAY": w.kit.gateway,
        "agent": w.kit.agent,
        "credential": w.kit.credential,
        "LOG_KEY": w.srv.log.log_key.vkey,
    }
    exec(compile(_block("MCP clients (the `mcp` SDK)"), "INTEGRATIONS.md MCP", "exec"), names)
    asyncio.run(names["main"]())
    assert w.guard.calls == ["read_inbox:invoices", "read_inbox:inbox"]
