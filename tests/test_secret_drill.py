"""The drill of CVE-2025-68664's shape: an agent runtime whose state and environment are
dumped to an attacker (there, LangChain's serialisation gave up secrets from the
environment, triggered by a crafted model output).

The agent runs in a process of its own, as in production, with a Lineage toolkit, a tool
that reads mail through the gateway, and an environment holding nothing but what the
toolkit needs. After a real call, it dumps everything an attacker could take: its whole
environment, and every string and bytes object alive in its heap (``gc.get_objects()``),
which is more than any serialiser would give up. The test then checks, byte for byte:

- no upstream secret is anywhere in the dump (the gateway attaches it; the agent never
  had it), in any spelling the gateway masks;
- the only credential in it is short-lived (minutes), bound to the agent's key (useless
  with another key: the gateway refuses it), and revocable in one call, after which the
  agent's own key gets nothing either.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lineage.client import Agent, LineageClient
from lineage.client.gateway import gateway_session

from .api_server import MAIL
from .gateway_harness import MAIL_SECRET
from .test_gateway import stack

AGENT = textwrap.dedent(
    """
    import gc, json, os, sys
    from lineage.client import Agent
    from lineage.client.toolkit import Toolkit
    from lineage.verifier.keys import SigningKey

    agent = Agent(SigningKey(bytes.fromhex(os.environ["AGENT_SEED"])))
    kit = Toolkit.start(os.environ["SERVICE"], os.environ["GATEWAY"], agent,
                        os.environ["CREDENTIAL"])

    def read_message(http, message_id):
        return http.get(f"https://mail.example.com/v1/messages/{message_id}").text

    answer = kit.run(read_message, message_id="17")
    assert '"path": "/v1/messages/17"' in answer, answer
    # the attacker's dump: the environment, and every string and bytes object alive
    heap = []
    for obj in gc.get_objects():
        if obj is heap:
            continue
        for value in (obj.values() if isinstance(obj, dict) else
                      obj if isinstance(obj, (list, tuple, set)) else (obj,)):
            if isinstance(value, str):
                heap.append(value)
            elif isinstance(value, (bytes, bytearray)):
                heap.append(bytes(value).hex())
    json.dump({"environ": dict(os.environ), "heap": heap}, sys.stdout)
    """
)


def _run_agent(w, **extra_env: str) -> subprocess.CompletedProcess:
    """The agent runtime, in a process of its own, with an environment holding only what
    the toolkit needs (and ``extra_env``); its stdout is the attacker's dump."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AGENT_SEED": w.agent.key.seed.hex(),
        "SERVICE": w.srv.base,
        "GATEWAY": w.base,
        "CREDENTIAL": w.handle,
        **extra_env,
    }
    run = subprocess.run(
        [sys.executable, "-c", AGENT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def _spellings(secret: str) -> list[str]:
    raw = secret.encode()
    return [
        secret,
        raw.hex(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        base64.b64encode(b"user:" + raw).decode()[8:],  # inside basic auth, roughly
        secret[::-1],
    ]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    with stack(tmp_path) as w:
        yield w


def test_a_dumped_agent_runtime_holds_no_upstream_secret_and_no_lasting_credential(world):
    w = world
    run = _run_agent(w)
    dump = run.stdout
    assert '"/v1/messages/17"' in dump  # the dump holds what the tool read, the call worked
    assert any(s.raw_path == "/v1/messages/17" for s in w.api.seen)

    # 1. No upstream secret, in any spelling, anywhere in the environment or the heap.
    for spelling in _spellings(MAIL_SECRET):
        assert spelling not in dump, spelling
    data = json.loads(dump)
    assert "LINEAGE_TEST_MAIL_KEY" not in data["environ"]

    # 2. The credentials in it: exactly the agent's, short-lived, bound to its key.
    with LineageClient(w.srv.base, log_key=w.srv.log.log_key.vkey) as client:
        found = [c for c in {w.handle} if c in dump]
        assert found == [w.handle]
        standing = client.introspect(w.handle, holder=w.agent)
        assert standing["active"] and standing["exp"] - time.time() <= 15 * 60
        assert standing["cnf"]["jkt"] == w.agent.key.kid

        # Useless without the key: another key holding the stolen credential is refused
        # at the gateway, and nothing reaches the upstream.
        seen = len(w.api.seen)
        thief = Agent.ephemeral()
        with gateway_session(w.base, thief, w.handle, timeout=10) as stolen:
            r = stolen.get(f"{MAIL}/v1/messages/18")
        assert r.status_code == 401 and len(w.api.seen) == seen

        # Revocable in one call; then the agent's own key gets nothing either.
        client.revoke(w.handle, holder=w.agent, reason="runtime dumped")
    with gateway_session(w.base, w.agent, w.handle, timeout=10) as mail:
        r = mail.get(f"{MAIL}/v1/messages/19")
    assert r.status_code == 403 and "revoked" in r.json()["error_description"]
    assert len(w.api.seen) == seen


def test_the_drill_would_catch_a_secret_in_the_runtime(world):
    """The check is not vacuous: with the secret in the agent's environment (the documented
    practice the drill replaces), the same dump gives it up."""
    run = _run_agent(world, MAIL_API_KEY=MAIL_SECRET)
    assert MAIL_SECRET in run.stdout
