"""``lineage.client``: the agent client against a real server, sync and async.

grant (signed by alice) -> delegate (signed by the agent) -> invoke (the reader)
-> access (an enforcement-token client) -> verify_lineage (offline, with the
verifier alone). Both drivers run the same sans-I/O flows; each is checked end
to end, including the errors it raises and a pinned log key that does not match.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineage.client import Agent, AsyncLineageClient, LineageClient, LineageHTTPError
from lineage.verifier.errors import SignatureError
from lineage.verifier.note import Signer
from tests.api_server import ORIGIN, Server, read_scope, request, running


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    with running(tmp_path) as server:
        yield server


def check_proved(proved, grant: str, sub: str, decision: dict) -> None:
    chains = [[rec.id for rec in chain] for chain in proved.chains()]
    assert [grant, sub] in chains
    assert proved.replay.credentials[sub].principal == "alice@corp"
    assert proved.replay.credentials[sub].parent.id == grant
    assert decision["id"] in {e.leaf.entry.id for e in proved.entries}  # what came of it
    assert proved.checkpoint.checkpoint.size > decision["index"]


def test_sync_client_end_to_end(srv: Server) -> None:
    agent, reader = Agent.ephemeral(), Agent.ephemeral()
    with LineageClient(srv.base) as lineage, LineageClient(srv.base, token=srv.enforcement) as ep:
        grant = lineage.grant(
            srv.alice, "alice@corp", agent, task="inbox-triage", scope=read_scope()
        )
        sub = lineage.delegate(agent, grant, reader, task="inbox-triage/read", scope=read_scope())
        invocation = reader.invoke(sub, request())
        decision = ep.access(invocation, {})
        assert decision["decision"] == "allow"
        introspected = ep.introspect(sub)
        assert introspected["active"] is True
        assert introspected["cnf"]["jkt"] == reader.key.kid
        proved = lineage.verify_lineage(reader, sub)
        check_proved(proved, grant, sub, decision)
        # pinned to the right key, it verifies; to another key, it does not
        log_key = lineage.log_key()
        assert log_key == srv.log.log_key.vkey
        lineage.verify_lineage(reader, sub, log_key=log_key)
        impostor = Signer.generate(ORIGIN).verifier.vkey
        with pytest.raises(SignatureError):
            lineage.verify_lineage(reader, sub, log_key=impostor)
        # the service's refusals arrive as LineageHTTPError
        with pytest.raises(LineageHTTPError) as caught:
            ep.access(invocation, {})  # replayed
        assert (caught.value.status, caught.value.error) == (401, "invalid_invocation")
        with pytest.raises(LineageHTTPError) as caught:
            lineage.delegate(
                reader, sub, Agent.ephemeral(), task="t", scope=read_scope(actions=["read", "send"])
            )
        assert (caught.value.status, caught.value.error) == (400, "invalid_authorization_details")
        assert "actions" in caught.value.description
        with pytest.raises(LineageHTTPError) as caught:
            lineage.access(reader.invoke(sub, request()), {})  # no enforcement token
        assert caught.value.status == 401


def test_async_client_end_to_end(srv: Server) -> None:
    async def story() -> None:
        agent, reader = Agent.ephemeral(), Agent.ephemeral()
        async with (
            AsyncLineageClient(srv.base) as lineage,
            AsyncLineageClient(srv.base, token=srv.enforcement) as ep,
        ):
            grant = await lineage.grant(
                srv.alice, "alice@corp", agent, task="inbox-triage", scope=read_scope(), ttl=300
            )
            sub = await lineage.delegate(
                agent, grant, reader, task="inbox-triage/read", scope=read_scope(), ttl=120
            )
            decision = await ep.access(reader.invoke(sub, request()), {})
            assert decision["decision"] == "allow"
            denied = await ep.access(reader.invoke(sub, request(action="send")), {})
            assert denied["decision"] == "deny"
            proved = await lineage.verify_lineage(reader, sub)
            check_proved(proved, grant, sub, decision)
            assert denied["id"] in {e.leaf.entry.id for e in proved.entries}
            introspected = await ep.introspect(sub)
            assert introspected["exp"] <= introspected["iat"] + 120
            with pytest.raises(LineageHTTPError) as caught:
                await lineage.lineage(agent, sub)  # the agent holds the parent, not ``sub``
            assert caught.value.error == "invalid_token"

    asyncio.run(story())


def test_sync_and_async_clients_see_the_same_log(srv: Server) -> None:
    async def key() -> str:
        async with AsyncLineageClient(srv.base) as client:
            return await client.log_key()

    with LineageClient(srv.base) as client:
        assert client.log_key() == asyncio.run(key()) == srv.log.log_key.vkey
