"""The framework-free core of the adapters (client/toolkit.py): tools run through the
gateway, denials become readable answers, hand-offs derive narrower credentials with fresh
keys, never past the parent's expiry, and the chain verifies offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from lineage.client import LineageClient
from lineage.client.toolkit import Denied, Toolkit, _narrowed
from lineage.ledger.export import credential_bundle
from lineage.verifier.bundle import verify_bundle

from .api_server import MAIL
from .gateway_harness import MAIL_SECRET
from .test_gateway import stack


def read_message(http, message_id: str) -> str:
    return http.get(f"{MAIL}/v1/messages/{message_id}").text


def send(http, to: str) -> str:
    return http.post(f"{MAIL}/v1/send", json={"to": to}).text


@pytest.fixture
def kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    with stack(tmp_path) as w:
        client = LineageClient(w.srv.base, log_key=w.srv.log.log_key.vkey)
        with Toolkit(client, w.base, w.agent, w.handle, task="mail") as k:
            k.world = w  # type: ignore[attr-defined]
            yield k
        client.close()


def test_a_tool_reaches_the_upstream_and_a_denial_is_its_readable_answer(kit):
    w = kit.world
    assert '"/v1/messages/17"' in kit.run(read_message, message_id="17")
    said = kit.run(send, to="eve@evil.example")
    assert said.startswith("Lineage denied this call (field attributes.to): scope:")
    assert [s.raw_path for s in w.api.seen] == ["/v1/messages/17"]
    assert all(s.header("x-api-key") == [MAIL_SECRET] for s in w.api.seen)
    with pytest.raises(Denied) as exc:  # the tool's own code sees the exception
        send(kit.http, "eve@evil.example")
    assert (exc.value.check, exc.value.field) == ("scope", "attributes.to")
    assert exc.value.receipt is not None


def test_a_hand_off_derives_a_narrower_credential_with_a_fresh_key(kit):
    w = kit.world
    reader = kit.delegate(task="mail/read", actions=["read"], ttl=10_000)
    assert reader.agent.key.kid != kit.agent.key.kid and reader.parent is kit
    rec = w.srv.log.state().credential(reader.credential)
    assert rec.parent is not None and rec.parent.id == kit.credential
    assert rec.credential.limits.expires_at <= kit.standing()["exp"]  # capped at the parent's
    assert '"/v1/messages/18"' in reader.run(read_message, message_id="18")
    said = reader.run(send, to="bob@corp.example")
    assert "(field action)" in said and "'send' is not in" in said
    verify_bundle(credential_bundle(w.srv.log, reader.credential), w.srv.log.log_key.vkey)
    reader.revoke("task done")
    assert "revoked" in reader.run(read_message, message_id="19")
    assert '"/v1/messages/20"' in kit.run(read_message, message_id="20")  # the parent lives
    reader.close()


def test_narrowing_keeps_only_what_is_asked():
    scope = [{"type": "email", "actions": ["read", "send"], "resources": ["a/*"]}]
    assert _narrowed(scope, ["read"], None) == [
        {"type": "email", "actions": ["read"], "resources": ["a/*"]}
    ]
    assert _narrowed(scope, None, ["a/b"])[0]["resources"] == ["a/b"]
    with pytest.raises(ValueError):
        _narrowed(scope, ["delete"], None)
    two = [
        {"type": "mcp", "actions": ["call"], "resources": ["tool:read_inbox"]},
        {
            "type": "mcp",
            "actions": ["call"],
            "resources": ["tool:send_email"],
            "constraints": {"to": {"in": ["bob@corp.example"]}},
        },
    ]
    # only the detail that covers the asked resource stays, with its own constraints
    assert _narrowed(two, None, ["tool:read_inbox"]) == [two[0]]
    assert _narrowed(two, None, ["tool:send_email"]) == [two[1]]
    with pytest.raises(ValueError):
        _narrowed(two, None, ["tool:delete_everything"])
    assert _narrowed(scope, None, ["a/*"])[0]["resources"] == ["a/*"]  # a pattern as itself
    with pytest.raises(ValueError):
        _narrowed(scope, None, ["b/c"])
