"""``lineage.client.crewai`` with the real CrewAI and no network: a scripted model drives a
crew whose agent calls a tool through the gateway to a real upstream on 127.0.0.1, hands
work to a coworker through CrewAI's own delegation tool (a narrower credential, a fresh
key), and the coworker's one forbidden call is denied: its model reads the denial, naming
the field, and the crew goes on. The ledger holds grant -> delegation -> accesses, and
``lineage-verify`` proves the coworker's chain offline.

CrewAI lives in a venv of its own (``.venv-crewai``: it pins ``mcp<2`` and ``openai<3``);
in the project's main venv this module is skipped.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("crewai") is not None:  # before crewai is first imported
    _scratch = tempfile.mkdtemp(prefix="crewai-test-")
    atexit.register(shutil.rmtree, _scratch, True)
    os.environ.update(
        CREWAI_DISABLE_TELEMETRY="true",
        OTEL_SDK_DISABLED="true",
        CREWAI_TRACING_ENABLED="false",  # no first-run trace collection, no prompt
        CREWAI_TESTING="true",
        # importing crewai writes a key for its cloud login under $HOME, and a run its task
        # outputs under XDG_DATA_HOME: both in a scratch folder, not the user's
        HOME=_scratch,
        XDG_DATA_HOME=_scratch,
    )

crewai = pytest.importorskip("crewai")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:crewai")  # its own fields

from crewai import Agent, BaseLLM, Crew, Process, Task  # noqa: E402
from pydantic import Field  # noqa: E402

from lineage.client.crewai import (  # noqa: E402
    Handoff,
    LineageAgent,
    lineage_context,
    lineage_tool,
)
from lineage.client.toolkit import Toolkit  # noqa: E402
from lineage.ledger.export import credential_bundle  # noqa: E402
from lineage.verifier.bundle import verify_bundle  # noqa: E402

from .api_server import MAIL  # noqa: E402
from .gateway_harness import MAIL_SECRET  # noqa: E402
from .test_gateway import World, stack  # noqa: E402

# -- the tools: plain functions of the real API's URLs ------------------------------------------


def read_message(http, message_id: str) -> str:
    """Read one message of the mailbox."""
    return http.get(f"{MAIL}/v1/messages/{message_id}").text


def send_email(http, to: str, subject: str) -> str:
    """Send an email."""
    return http.post(f"{MAIL}/v1/send", json={"to": to, "subject": subject}).text


# -- the model: scripted ReAct turns, one script per agent ---------------------------------------


class ScriptedLLM(BaseLLM):
    """A deterministic model: each call answers the next of ``replies`` and keeps the
    messages it was shown in ``shown``."""

    replies: list[str]
    shown: list[str] = Field(default_factory=list)

    def call(self, messages: Any, *args: Any, **kwargs: Any) -> str:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        self.shown.append("\n".join(str(m.get("content", "")) for m in messages))
        if not self.replies:
            raise AssertionError(f"{self.model}: the script has no more turns")
        return self.replies.pop(0)


def act(tool: str, **arguments: Any) -> str:
    return f"Thought: {tool} is next.\nAction: {tool}\nAction Input: {json.dumps(arguments)}"


def final(answer: str) -> str:
    return f"Thought: I now know the final answer.\nFinal Answer: {answer}"


# -- no network but 127.0.0.1 ------------------------------------------------------------------


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every connection and name lookup beyond the loopback is refused and recorded."""
    tried: list[Any] = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in (
            "127.0.0.1",
            "::1",
            "localhost",
        ):
            tried.append(address)
            raise OSError(f"test: no network beyond 127.0.0.1 ({address!r})")
        return connect(sock, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in (None, "127.0.0.1", "::1", "localhost"):
            tried.append(name)
            raise socket.gaierror(f"test: no name lookups ({name!r})")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    return tried


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    with stack(tmp_path) as w:  # read messages/*; send only to bob@corp.example
        yield w


# -- the story ---------------------------------------------------------------------------------


def test_a_crew_delegates_to_a_narrower_coworker_and_reads_its_denial(
    world: World, loopback_only: list[Any], tmp_path: Path
) -> None:
    reader_llm = ScriptedLLM(
        model="scripted-reader",
        replies=[
            act("read_message", message_id="17"),  # as triage did: no crew-wide cache
            act("send_email", to="bob@corp.example", subject="Re: 17"),  # read-only: denied
            final("Message 17 read; sending is not mine to do."),
        ],
    )
    triage_llm = ScriptedLLM(
        model="scripted-triage",
        replies=[
            act("read_message", message_id="17"),
            act(
                "Delegate work to coworker",
                task="Read message 17 and answer Bob",
                context="Bob asked about message 17.",
                coworker="Reader",
            ),
            act("send_email", to="bob@corp.example", subject="Re: 17"),
            final("Inbox triaged; Bob answered."),
        ],
    )
    tools = [lineage_tool(read_message), lineage_tool(send_email)]
    reader = LineageAgent(
        role="Reader",
        goal="Read the messages you are given",
        backstory="You read mail for the triage agent.",
        llm=reader_llm,
        tools=tools,
        handoff=Handoff(task="mail/read", actions=["read"], ttl=120),
    )
    triage = Agent(
        role="Triage",
        goal="Triage the inbox",
        backstory="You triage Alice's inbox.",
        llm=triage_llm,
        tools=tools,
        allow_delegation=True,
    )
    crew = Crew(
        agents=[triage, reader],
        tasks=[Task(description="Triage my inbox", expected_output="a summary", agent=triage)],
        process=Process.sequential,
        cache=True,  # CrewAI's crew-wide tool cache: Lineage tools opt out of it
    )
    root = Toolkit.start(world.srv.base, world.base, world.agent, world.handle)
    with lineage_context(root) as run:
        out = crew.kickoff()

    assert out.raw == "Inbox triaged; Bob answered."
    assert not triage_llm.replies and not reader_llm.replies  # every scripted turn was taken
    assert loopback_only == []  # nothing left 127.0.0.1

    # the upstream received exactly the allowed calls, with its secret, not the credentials
    assert [(s.method, s.raw_path) for s in world.api.seen] == [
        ("GET", "/v1/messages/17"),  # triage
        ("GET", "/v1/messages/17"),  # the reader, with its own credential (never cached)
        ("POST", "/v1/send"),  # triage again, once the reader is done
    ]
    first, sub = run.kits
    for seen in world.api.seen:
        assert seen.header("x-api-key") == [MAIL_SECRET]
        for name in ("authorization", "dpop", "lineage-invocation"):
            assert seen.header(name) == []
        assert world.handle not in repr(seen) and sub.credential not in repr(seen)
    assert json.loads(world.api.seen[2].body) == {"to": "bob@corp.example", "subject": "Re: 17"}

    # the hand-off: a delegation from the triage credential, held by a fresh key
    assert first is root and sub.parent is root and sub.task == "mail/read"
    assert sub.agent.key.kid != world.agent.key.kid
    assert sub.credential != world.handle

    # the reader's model read the denial, naming the field; the triage model read its answer
    denial = "Lineage denied this call (field action): scope: credential"
    assert denial not in reader_llm.shown[1] and denial in reader_llm.shown[2]
    assert "'send' is not in scope[0].actions" in reader_llm.shown[2]
    assert MAIL_SECRET not in "".join(reader_llm.shown + triage_llm.shown)
    assert "Message 17 read; sending is not mine to do." in triage_llm.shown[2]

    # the ledger: grant -> delegation -> accesses, each access under the right credential
    bundle = credential_bundle(world.srv.log, world.handle)
    proved = verify_bundle(bundle, world.srv.log.log_key.vkey)
    story = [
        (e.leaf.entry.kind, _credential_of(e.leaf.entry), e.leaf.entry.obj.get("decision"))
        for e in proved.entries
        if e.leaf.entry.kind in ("grant", "delegation", "access", "revocation")
    ]
    assert story == [
        ("grant", world.handle, None),
        ("access", world.handle, "allow"),  # message 17
        ("delegation", sub.credential, None),
        ("access", sub.credential, "allow"),  # message 17 again
        ("access", sub.credential, "deny"),  # the reader's send
        ("revocation", sub.credential, None),  # the reader's task is over
        ("access", world.handle, "allow"),  # triage's send
    ]
    [denied] = [e.leaf.entry for e in proved.entries if e.leaf.entry.obj.get("decision") == "deny"]
    assert "action: 'send' is not in scope[0].actions" in denied.obj["reason"]
    assert denied.obj["invocation"]["request"]["action"] == "send"
    record = proved.replay.credentials[sub.credential]
    assert record.parent is not None and record.parent.id == world.handle
    assert record.principal == "alice@corp"
    assert record.holder.kid == sub.agent.key.kid != record.parent.holder.kid
    assert [d.actions for d in record.credential.scope] == [("read",)]

    # and lineage-verify proves the reader's chain offline, from a file
    path = tmp_path / "reader-bundle.json"
    path.write_text(json.dumps(credential_bundle(world.srv.log, sub.credential)))
    log_key = world.srv.log.log_key.vkey
    verified = subprocess.run(
        [sys.executable, "-m", "lineage.verifier.cli", str(path), "--log-key", log_key, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    [chain] = report["chains"]
    assert report["ok"] is True and chain["credential"] == sub.credential
    assert chain["principal"] == "alice@corp" and chain["task"] == "mail/read"
    assert [(link["kind"], link["id"]) for link in chain["links"]] == [
        ("grant", world.handle),
        ("delegation", sub.credential),
    ]


def _credential_of(entry: Any) -> str:
    """What an entry is about: an access's credential, a revocation's, or its own id."""
    if entry.kind == "access":
        return entry.obj["invocation"]["credential"]
    if entry.kind == "revocation":
        return entry.obj["target"]["credential"]
    return entry.id


def test_a_coworker_without_a_lineage_context_is_refused_before_its_model_runs() -> None:
    llm = ScriptedLLM(model="scripted", replies=[final("never")])
    reader = LineageAgent(
        role="Reader",
        goal="Read",
        backstory="You read mail.",
        llm=llm,
        tools=[lineage_tool(read_message)],
        handoff=Handoff(task="mail/read", actions=["read"]),
    )
    task = Task(description="Read message 1", expected_output="its text", agent=reader)
    with pytest.raises(RuntimeError, match="lineage_context"):
        reader.execute_task(task)
    assert llm.shown == []
