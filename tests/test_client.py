"""``lineage.client``: the agent client against a real server, sync and async.

grant (signed by alice) -> delegate (signed by the agent) -> invoke (the reader)
-> access (an enforcement-token client) -> verify_lineage (offline, with the
verifier alone). Both drivers run the same sans-I/O flows; each is checked end
to end, including the errors it raises and a pinned log key that does not match.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lineage.client import (
    Agent,
    AsyncLineageClient,
    LineageClient,
    LineageHTTPError,
    LogKeyError,
    ReceiptError,
)
from lineage.ledger.config import Settings
from lineage.verifier.errors import ProofError, SignatureError
from lineage.verifier.merkle import verify_inclusion
from lineage.verifier.note import Signer
from tests.api_server import ORIGIN, Server, key, read_scope, request, running


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
    pinned = srv.log.log_key.vkey  # as `lineage log key` prints it
    with (
        LineageClient(srv.base, log_key=pinned) as lineage,
        LineageClient(srv.base, token=srv.enforcement) as ep,
    ):
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
            AsyncLineageClient(srv.base, log_key=srv.log.log_key.vkey) as lineage,
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


# -- the pinned log key ------------------------------------------------------------------------


def chain_of_two(lineage: LineageClient, srv: Server) -> tuple[Agent, str, Agent, str]:
    agent, reader = Agent.ephemeral(), Agent.ephemeral()
    grant = lineage.grant(srv.alice, "alice@corp", agent, task="inbox-triage", scope=read_scope())
    sub = lineage.delegate(agent, grant, reader, task="inbox-triage/read", scope=read_scope())
    return agent, grant, reader, sub


def test_verify_lineage_refuses_without_a_pinned_log_key(srv: Server) -> None:
    with LineageClient(srv.base) as lineage:
        _, _, reader, sub = chain_of_two(lineage, srv)
        with pytest.raises(LogKeyError, match="no log key is pinned"):
            lineage.verify_lineage(reader, sub)
        with pytest.raises(LogKeyError):
            lineage.checkpoint()
        assert lineage.pinned_log_key is None
        # a key given for the one call is used, and pins nothing
        lineage.verify_lineage(reader, sub, log_key=srv.log.log_key.vkey)
        assert lineage.pinned_log_key is None


def test_a_pinned_log_key_refuses_a_server_showing_another(srv: Server, tmp_path: Path) -> None:
    impostor = Signer.generate(ORIGIN).verifier.vkey
    with LineageClient(srv.base) as unpinned:
        _, _, reader, sub = chain_of_two(unpinned, srv)
    with LineageClient(srv.base, log_key=impostor) as lineage:
        with pytest.raises(ReceiptError, match="does not verify"):  # the first receipt
            chain_of_two(lineage, srv)
        with pytest.raises(SignatureError):  # the bundle is not signed by the pinned key
            lineage.verify_lineage(reader, sub)
        with pytest.raises(LogKeyError, match="not the pinned"):
            lineage.log_key()
    with pytest.raises(ValueError):
        LineageClient(srv.base, log_key="not a verifier key")


def test_trust_on_first_use_pins_the_first_key_and_refuses_another(
    srv: Server, tmp_path: Path
) -> None:
    with LineageClient(srv.base, trust_on_first_use=True) as lineage:
        assert lineage.pinned_log_key is None
        _, _, reader, sub = chain_of_two(lineage, srv)  # the first receipt pins the key
        assert lineage.pinned_log_key == srv.log.log_key.vkey
        lineage.verify_lineage(reader, sub)
        # the address now answers with another log (same origin, another key): refused
        with running(tmp_path / "other") as other:
            lineage._flows.base = other.base  # as if the name now pointed elsewhere
            with pytest.raises(LogKeyError, match="not the pinned"):
                lineage.log_key()
            with pytest.raises(SignatureError):
                lineage.checkpoint()
            assert lineage.pinned_log_key == srv.log.log_key.vkey


# -- DPoP nonces, revocation, introspection, the log ----------------------------------------------


def test_the_client_answers_a_dpop_nonce_challenge(tmp_path: Path) -> None:
    settings = Settings(checkpoint_interval=0.2, dpop_nonce_required=True)
    with running(tmp_path, settings) as srv:
        with LineageClient(srv.base, log_key=srv.log.log_key.vkey) as lineage:
            _, _, reader, sub = chain_of_two(lineage, srv)
            assert lineage._flows._nonce is not None  # the server's, remembered
            assert lineage.introspect(sub, holder=reader)["active"] is True
            lineage.verify_lineage(reader, sub)

        async def run() -> None:
            async with AsyncLineageClient(srv.base, log_key=srv.log.log_key.vkey) as client:
                fresh = Agent.ephemeral()
                handle = await client.grant(
                    srv.alice, "alice@corp", fresh, task="t", scope=read_scope()
                )
                assert (await client.introspect(handle, holder=fresh))["active"] is True

        asyncio.run(run())


def test_the_client_revokes_with_a_token_and_as_a_holder(srv: Server) -> None:
    with (
        LineageClient(srv.base) as lineage,
        LineageClient(srv.base, token=srv.operator) as operator,
    ):
        agent, grant, reader, sub = chain_of_two(lineage, srv)
        lineage.revoke(sub, holder=reader, reason="done")  # signed by the reader's key
        assert operator.introspect(sub)["lineage"]["status"] == "revoked"
        assert operator.introspect(grant)["active"] is True
        operator.revoke(grant)
        assert operator.introspect(grant)["lineage"]["status"] == "revoked"
        with pytest.raises(LineageHTTPError) as caught:  # a revoked holder cannot authenticate
            lineage.revoke(grant, holder=agent)
        assert caught.value.status == 401


def test_the_client_introspects_as_holder_and_as_principal(srv: Server) -> None:
    with LineageClient(srv.base) as lineage:
        _, grant, reader, sub = chain_of_two(lineage, srv)
        own = lineage.introspect(sub, holder=reader)
        assert own["active"] is True and own["cnf"]["jkt"] == reader.key.kid
        with pytest.raises(LineageHTTPError) as caught:  # the reader does not hold the grant
            lineage.introspect(grant, holder=reader)
        assert (caught.value.status, caught.value.error) == (401, "invalid_token")
        alice = lineage.introspect(sub, principal="alice@corp", principal_key=srv.alice)
        assert alice["active"] is True and alice["sub"] == "alice@corp"
        with pytest.raises(LineageHTTPError) as caught:  # a key not bound to alice
            lineage.introspect(sub, principal="alice@corp", principal_key=key("mallory"))
        assert caught.value.status == 401
        with pytest.raises(ValueError):
            lineage.introspect(sub, principal="alice@corp")


def test_the_client_fetches_checkpoints_and_proofs(srv: Server) -> None:
    with LineageClient(srv.base, log_key=srv.log.log_key.vkey) as lineage:
        old = lineage.checkpoint()
        chain_of_two(lineage, srv)
        deadline = time.monotonic() + 10
        while (new := lineage.checkpoint()).checkpoint.size <= old.checkpoint.size:
            assert time.monotonic() < deadline, "no new checkpoint"
            time.sleep(0.05)
        grown = lineage.grew_from(old)
        assert grown.checkpoint.size >= new.checkpoint.size
        size = grown.checkpoint.size
        leaf = bytes.fromhex(httpx.get(srv.url(f"/v1/log/entries/{size - 1}")).json()["leaf_hash"])
        path = lineage.inclusion_proof(size - 1, size)
        verify_inclusion(size - 1, size, leaf, path, grown.checkpoint.root_hash)
        proof = lineage.consistency_proof(old.checkpoint.size, size)
        assert proof  # non-empty: the log grew
        with pytest.raises(ProofError):  # a proof for other sizes does not fit
            verify_inclusion(0, size, leaf, path, grown.checkpoint.root_hash)


def test_the_client_verifies_each_receipt_and_proves_it_later(srv: Server) -> None:
    """Every answer that appended carries a receipt; the client checks it under the pinned
    key before returning, and ``still_included`` proves later that the log kept it."""
    agent = Agent.ephemeral()
    with (
        LineageClient(srv.base, log_key=srv.log.log_key.vkey) as lineage,
        LineageClient(srv.base, token=srv.operator) as operator,
    ):
        grant = lineage.grant(srv.alice, "alice@corp", agent, task="t", scope=read_scope())
        entry = srv.log.leaf(srv.log.find(grant)).entry
        answer = lineage.exchange(entry, agent)  # a repeat: the same receipt shape
        receipt = answer["lineage_receipt"]
        assert receipt["leaf"]["entry"]["sigs"] == entry.obj["sigs"]
        revoked = operator.revoke(grant)
        assert revoked is not None and revoked["index"] > receipt["index"]
        later = lineage.still_included(receipt)
        assert later.checkpoint.size > receipt["index"]


def test_the_client_refuses_a_receipt_that_does_not_verify(srv: Server) -> None:
    """A service (or a proxy) answering with a receipt for another entry, or a forged one,
    is caught before the answer reaches the agent."""
    agent = Agent.ephemeral()
    forged = Signer.generate(ORIGIN)

    def tamper(response: httpx.Response) -> None:
        if response.request.url.path == "/oauth/token" and response.status_code == 200:
            response.read()
            body = response.json()
            body["lineage_receipt"]["leaf"]["time"] += 1  # re-timed: the proof breaks
            response._content = json.dumps(body).encode()

    with LineageClient(srv.base, log_key=srv.log.log_key.vkey) as lineage:
        lineage._http.event_hooks["response"].append(tamper)
        with pytest.raises(ReceiptError, match="does not verify"):
            lineage.grant(srv.alice, "alice@corp", agent, task="t", scope=read_scope())
    with (
        LineageClient(srv.base, log_key=forged.verifier.vkey) as lineage,
        pytest.raises(ReceiptError, match="no signature by a known key"),
    ):
        lineage.grant(srv.alice, "alice@corp", agent, task="t2", scope=read_scope())
