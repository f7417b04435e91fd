"""Step-up through the gateway (POLICY.md "Approval", GATEWAY.md §4 and §8): a call a rule
holds is answered ``approval_pending`` with the person's link and reaches no upstream; once
the person approves, the same request goes through exactly once, and its access entry
carries the approval. The person answers here through the page's own endpoints, signing
with the principal's key as the browser does (tests/test_browser_step_up.py drives a real
browser through the same page).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lineage.api.bearer import bearer_token
from lineage.api.gateway.config import parse_gateway
from lineage.client import Agent, LineageClient
from lineage.client.gateway import APPROVAL_HEADER, APPROVAL_PENDING, gateway_session
from lineage.ledger.export import credential_bundle
from lineage.verifier.bodies import grant_body
from lineage.verifier.bundle import verify_bundle
from lineage.verifier.entry import sign_entry
from lineage.verifier.keys import SigningKey

from .api_server import MAIL, ORIGIN, running
from .gateway_harness import MAIL_SECRET, Upstream, serve_app
from .test_gateway_mcp import MCP_SECRET, Guard
from .test_mcp_stock_client import ACCEPT, LOCATION, gateway_table

POLICY = {
    "rules": [
        {"id": "deletes-need-alice", "match": {"actions": ["delete"]}, "require_approval": True},
        {
            "id": "mail-to-the-boss",
            "match": {"type": "mcp", "attributes": {"to": {"eq": "boss@corp.example"}}},
            "require_approval": True,
        },
    ]
}
SCOPE = [
    {
        "type": "email",
        "actions": ["delete", "read"],
        "locations": [MAIL],
        "resources": [f"{MAIL}/v1/messages/*"],
    }
]


class World:
    def __init__(self, srv, api: Upstream, guard: Guard, calls: list[str]):
        self.srv, self.api, self.guard, self.calls = srv, api, guard, calls
        self.gateway = srv.base + "/gateway"

    def reached(self) -> list[str]:
        return [f"{s.method} {s.raw_path}" for s in self.api.seen]

    def answer(self, held: dict[str, Any], decision: str = "approve", key=None) -> dict:
        """What the person's page does: prepare, sign the bytes, answer."""
        key = key or self.srv.alice
        page = httpx.get(held["url"], timeout=10).text
        csrf = page.split('data-csrf="', 1)[1].split('"', 1)[0]
        base = held["url"]
        prepared = httpx.post(
            base + "/prepare",
            json={"csrf": csrf, "kid": key.kid, "decision": decision},
            timeout=10,
        )
        assert prepared.status_code == 200, prepared.text
        signing_input = base64.urlsafe_b64decode(prepared.json()["signing_input"] + "==")
        sig = base64.urlsafe_b64encode(key.sign(b"", signing_input)).rstrip(b"=").decode()
        signed = {**prepared.json()["approval"], "sigs": [{"kid": key.kid, "sig": sig}]}
        r = httpx.post(base + "/answer", json={"csrf": csrf, "approval": signed}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """The service with the gateway mounted at /gateway (deciding in-process), before an
    HTTP mail API and an MCP mail server, under a policy that holds deletes and mail to the
    boss for alice's approval."""
    monkeypatch.setenv("LINEAGE_TEST_MCP_KEY", MCP_SECRET)
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    guard = Guard.serving()
    with serve_app(guard, lifespan="on") as mcp_base, Upstream.serving() as (api, api_base):
        table = gateway_table(mcp_base + "/mcp", api_base, mount="/gateway")
        table["upstreams"]["api"]["actions"] = {"GET": "read", "DELETE": "delete"}
        with running(tmp_path, gateway=parse_gateway(table)) as srv:
            policy = {"kind": "policy", "v": 1, "log": ORIGIN, "version": 1, "document": POLICY}
            srv.log.append(sign_entry(policy, [srv.log.keys.operator]))
            yield World(srv, api, guard, guard.calls)


def _grant(w: World) -> tuple[Agent, str]:
    agent = Agent.ephemeral()
    with LineageClient(w.srv.base, log_key=w.srv.log.log_key.vkey) as client:
        handle = client.grant(w.srv.alice, "alice@corp", agent, task="mail", scope=SCOPE)
    return agent, handle


def test_a_held_request_reaches_nothing_and_goes_through_once_approved(world):
    agent, handle = _grant(world)
    url = f"{MAIL}/v1/messages/17"
    with gateway_session(world.gateway, agent, handle, timeout=10) as mail:
        assert mail.get(url).status_code == 200  # reads are not held
        held = mail.delete(url)
        assert held.status_code == 403, held.text
        assert held.json()["error"] == APPROVAL_PENDING
        approval = held.json()["approval"]
        assert held.headers[APPROVAL_HEADER] == approval["poll"]
        assert approval["url"].startswith(world.srv.base + "/approve/apr_")
        assert "DELETE /v1/messages/17" not in world.reached()
        # asked again before anyone answered: the same call, the same link
        assert mail.delete(url).json()["approval"]["id"] == approval["id"]

        assert world.answer(approval)["status"] == "approved"
        done = mail.delete(url)  # the same request: the transport sends the same invocation
        assert done.status_code == 200, done.text
        assert world.reached().count("DELETE /v1/messages/17") == 1

        again = mail.delete(url)  # another call: a new invocation, held again
        assert again.status_code == 403 and again.json()["approval"]["id"] != approval["id"]
    assert world.reached().count("DELETE /v1/messages/17") == 1
    access = world.srv.log.leaf(world.srv.log.size - 1).entry
    approved = [
        leaf.entry
        for _, leaf in world.srv.log.leaves()
        if leaf.entry.obj.get("kind") == "access" and "approval" in leaf.entry.obj
    ]
    assert len(approved) == 1 and approved[0].obj["approval"]["sigs"][0]["kid"] == (
        world.srv.alice.kid
    )
    assert access is not None
    verify_bundle(credential_bundle(world.srv.log, handle), world.srv.log.log_key.vkey)


def test_the_transport_waits_for_the_person_and_sends_the_call_again(world):
    agent, handle = _grant(world)
    shown: list[dict] = []

    def show(held: dict) -> None:  # the agent shows its person the link; here they approve
        shown.append(held)
        world.answer(held)

    url = f"{MAIL}/v1/messages/18"
    with gateway_session(
        world.gateway, agent, handle, approval_wait=30, on_approval=show, timeout=10
    ) as mail:
        done = mail.delete(url)
    assert done.status_code == 200, done.text
    assert len(shown) == 1 and shown[0]["url"].startswith(world.srv.base + "/approve/")
    assert world.reached().count("DELETE /v1/messages/18") == 1


def test_a_refused_call_is_a_logged_deny_and_reaches_nothing(world):
    agent, handle = _grant(world)
    url = f"{MAIL}/v1/messages/19"
    with gateway_session(
        world.gateway,
        agent,
        handle,
        approval_wait=30,
        on_approval=lambda held: world.answer(held, "refuse"),
        timeout=10,
    ) as mail:
        done = mail.delete(url)
    assert done.status_code == 403 and done.json()["error"] == "access_denied"
    assert "alice@corp refused this call" in done.json()["error_description"]
    assert "DELETE /v1/messages/19" not in world.reached()


def test_an_agent_that_does_not_wait_gets_the_link_and_nothing_else(world):
    agent, handle = _grant(world)
    with gateway_session(world.gateway, agent, handle, approval_wait=0, timeout=10) as mail:
        r = mail.delete(f"{MAIL}/v1/messages/20")
    assert r.status_code == 403 and r.json()["error"] == APPROVAL_PENDING
    assert httpx.get(r.json()["approval"]["poll"], timeout=10).json()["status"] == "pending"
    assert world.reached() == []


# --- an MCP client that cannot sign: the gateway keeps what it signed for the retry ------------


def _rpc(w: World, token: str, ident: int, to: str) -> httpx.Response:
    message = {
        "jsonrpc": "2.0",
        "id": ident,
        "method": "tools/call",
        "params": {"name": "send_email", "arguments": {"to": to, "subject": "Q3"}},
    }
    return httpx.post(
        w.gateway + "/mail",
        json=message,
        headers={"Authorization": f"Bearer {token}", "Accept": ACCEPT},
        timeout=10,
    )


def test_a_bearer_mcp_clients_held_call_goes_through_on_its_retry_once_approved(world):
    seed = SigningKey.generate().seed
    holder = SigningKey(seed)
    scope = [
        {
            "type": "mcp",
            "actions": ["call"],
            "locations": [LOCATION],
            "resources": ["tool:send_email"],
        }
    ]
    body = grant_body(
        ORIGIN,
        "alice@corp",
        holder.public,
        task={"id": "mail", "description": "mail"},
        scope=scope,
        expires_at=world.srv.now + 600,
        max_depth=0,
    )
    grant = world.srv.log.append(sign_entry(body, [world.srv.alice]))
    token = bearer_token(grant.id, seed)

    assert "result" in _rpc(world, token, 1, "bob@corp.example").json()  # not held
    held = _rpc(world, token, 2, "boss@corp.example")
    error = held.json()["error"]
    assert error["code"] == -31402 and "approval required" in error["message"]
    assert "send_email:boss@corp.example" not in world.calls
    world.answer(error["data"]["approval"])

    retry = _rpc(world, token, 3, "boss@corp.example")  # the client's retry: a new id
    assert retry.json()["id"] == 3 and "result" in retry.json(), retry.text
    assert world.calls.count("send_email:boss@corp.example") == 1
    last = [
        leaf.entry.obj
        for _, leaf in world.srv.log.leaves()
        if leaf.entry.obj.get("kind") == "access"
    ][-1]
    assert last["decision"] == "allow" and "approval" in last
    again = _rpc(world, token, 4, "boss@corp.example")  # a new call: held again
    assert again.json()["error"]["code"] == -31402
    assert world.calls.count("send_email:boss@corp.example") == 1


def test_the_async_transport_waits_for_the_person_too(world):
    import anyio

    from lineage.client.gateway import async_gateway_session

    agent, handle = _grant(world)
    shown: list[dict] = []

    async def show(held: dict) -> None:  # an async callback is awaited
        shown.append(held)
        await anyio.to_thread.run_sync(world.answer, held)

    async def run() -> httpx.Response:
        async with async_gateway_session(
            world.gateway, agent, handle, approval_wait=30, on_approval=show, timeout=10
        ) as mail:
            read = await mail.get(f"{MAIL}/v1/messages/21")  # streams: not held, not read early
            assert read.status_code == 200
            return await mail.delete(f"{MAIL}/v1/messages/21")

    done = anyio.run(run)
    assert done.status_code == 200, done.text
    assert len(shown) == 1
    assert world.reached().count("DELETE /v1/messages/21") == 1
