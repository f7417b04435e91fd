"""The whole story over HTTP, against a real uvicorn server on 127.0.0.1.

alice (principal) -> the agent -> the reader (sub-agent), each link a client-signed
entry exchanged at ``POST /oauth/token`` (RFC 8693); the reader's invocation
allowed at ``POST /v1/access``; then what must be refused: a widened exchange,
a replayed DPoP proof (RFC 9449 §11.1), a replayed invocation, a revoked
ancestor, an expired credential. The log's proofs (RFC 9162 §2.1.3, §2.1.4)
are checked with the offline verifier against ``GET /v1/log/key`` alone, and
the leaf hashes recomputed with an independent RFC 8785 encoder.

Also here: ``/metrics`` and ``/healthz``, and ``lineage serve`` as a subprocess.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import rfc8785
from prometheus_client.parser import text_string_to_metric_families

from lineage.verifier.merkle import verify_consistency, verify_inclusion
from lineage.verifier.receipt import verify_receipt
from tests.api_server import (
    Server,
    checkpoint_at_least,
    free_port,
    read_scope,
    request,
    running,
)

UNCONSTRAINED = {k: v for k, v in read_scope()[0].items() if k != "constraints"}


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    with running(tmp_path) as server:
        yield server


def chain(srv: Server) -> tuple[str, str]:
    """alice -> agent (grant), agent -> reader (delegation), over /oauth/token."""
    r = srv.exchange(srv.grant(), srv.agent)
    assert r.status_code == 200, r.text
    grant = r.json()["access_token"]
    r = srv.exchange(srv.delegation(grant, srv.agent), srv.reader)
    assert r.status_code == 200, r.text
    return grant, r.json()["access_token"]


def read_entry(srv: Server, entry_id: str) -> dict:
    r = httpx.get(srv.url(f"/v1/entries/{entry_id}"), headers=srv.bearer(srv.auditor))
    assert r.status_code == 200, r.text
    return r.json()


# -- the story -------------------------------------------------------------------------------


def test_principal_agent_subagent_access_allowed(srv: Server) -> None:
    g = srv.grant()
    r = srv.exchange(g, srv.agent)
    assert r.status_code == 200, r.text
    assert r.json()["access_token"] == g.id  # the handle is the entry id
    d = srv.delegation(g.id, srv.agent)
    r = srv.exchange(d, srv.reader)
    assert r.status_code == 200, r.text
    sub = r.json()["access_token"]
    assert sub == d.id
    # appended unchanged: the stored entries are the signed ones, byte for byte
    assert read_entry(srv, g.id)["entry"] == g.obj
    assert read_entry(srv, d.id)["entry"] == d.obj
    r = srv.access(srv.invoke(srv.reader, sub))
    assert r.status_code == 200, r.text
    decision = r.json()
    assert decision["decision"] == "allow"
    logged = read_entry(srv, decision["id"])
    assert logged["index"] == decision["index"]
    assert logged["entry"]["kind"] == "access"
    assert logged["entry"]["decision"] == "allow"
    assert logged["entry"]["enforcement"] == "enforcement-1"
    assert logged["entry"]["invocation"]["credential"] == sub
    # outside the scope: a logged deny, not an error
    r = srv.access(srv.invoke(srv.reader, sub, request(action="send")))
    assert r.status_code == 200 and r.json()["decision"] == "deny", r.text


@pytest.mark.parametrize(
    ("widen", "error", "field"),
    [
        (
            {"scope": read_scope(actions=["read", "send"])},
            "invalid_authorization_details",
            "actions",
        ),
        (
            {"scope": read_scope(resources=["mailbox:*"])},
            "invalid_authorization_details",
            "resources",
        ),
        ({"scope": [UNCONSTRAINED]}, "invalid_authorization_details", "sender"),
        ({"ttl": 1200}, "invalid_grant", "expires_at"),
        ({"max_depth": 2}, "invalid_grant", "max_depth"),
    ],
)
def test_widened_exchange_refused_naming_the_field(
    srv: Server, widen: dict, error: str, field: str
) -> None:
    grant, _ = chain(srv)
    before = srv.size()
    r = srv.exchange(srv.delegation(grant, srv.agent, **widen), srv.reader)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == error
    assert field in body["error_description"]
    assert set(body) == {"error", "error_description"}  # RFC 6749 §5.2
    assert srv.size() == before


def test_authorization_details_must_equal_the_signed_scope(srv: Server) -> None:
    before = srv.size()
    wider = '[{"type":"email","actions":["read","delete"]}]'
    r = srv.exchange(srv.grant(), srv.agent, authorization_details=wider)
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_authorization_details"
    assert srv.size() == before


def test_replayed_dpop_proof_refused(srv: Server) -> None:
    _, sub = chain(srv)
    path = f"/v1/credentials/{sub}/lineage"
    headers = srv.dpop(srv.reader, "GET", path, sub)
    assert httpx.get(srv.url(path), headers=headers).status_code == 200
    r = httpx.get(srv.url(path), headers=headers)  # the same proof again
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_dpop_proof"
    assert "jti" in r.json()["detail"]
    # at the token endpoint too: the replay appends nothing
    headers = srv.dpop(srv.agent, "POST", "/oauth/token")
    first = srv.grant(ttl=700)
    r = httpx.post(srv.url("/oauth/token"), data=srv.exchange_form(first), headers=headers)
    assert r.status_code == 200, r.text
    before = srv.size()
    second = srv.grant(ttl=800)
    r = httpx.post(srv.url("/oauth/token"), data=srv.exchange_form(second), headers=headers)
    assert r.status_code in (400, 401)  # RFC 9449 §5 says 400 here; §7.1 401 at a resource
    assert r.json()["error"] == "invalid_dpop_proof"
    assert srv.size() == before


def test_replayed_invocation_refused(srv: Server) -> None:
    _, sub = chain(srv)
    invocation = srv.invoke(srv.reader, sub)
    assert srv.access(invocation).json()["decision"] == "allow"
    before = srv.size()
    r = srv.access(invocation)
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_invocation"
    assert "replayed" in r.json()["detail"]
    assert srv.size() == before  # counted, not logged


def test_invocation_by_another_key_refused(srv: Server) -> None:
    _, sub = chain(srv)
    before = srv.size()
    r = srv.access(srv.invoke(srv.agent, sub))  # the parent's holder is not the holder
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_invocation"
    assert srv.size() == before


def test_revoked_ancestor_denied(srv: Server) -> None:
    grant, sub = chain(srv)
    assert srv.access(srv.invoke(srv.reader, sub)).json()["decision"] == "allow"
    r = httpx.post(
        srv.url("/oauth/revoke"), data={"token": grant}, headers=srv.bearer(srv.operator)
    )
    assert r.status_code == 200, r.text
    receipt = verify_receipt(r.json()["lineage_receipt"], srv.log.log_key)
    assert receipt.leaf.entry.body.credential == grant
    r = srv.access(srv.invoke(srv.reader, sub))
    assert r.status_code == 200, r.text
    assert r.json()["decision"] == "deny"
    assert r.json()["reason"].startswith("revoked")
    # the revocation is in the log, signed by the operator key that authenticated the call
    entries = httpx.get(
        srv.url("/v1/entries"), params={"kind": "revocation"}, headers=srv.bearer(srv.auditor)
    ).json()["entries"]
    assert [e["entry"]["target"] for e in entries] == [{"credential": grant}]


def test_expired_credential_refused(srv: Server) -> None:
    r = srv.exchange(srv.grant(ttl=60), srv.agent)
    assert r.status_code == 200 and 0 < r.json()["expires_in"] <= 60, r.text
    grant = r.json()["access_token"]
    sub = srv.exchange(srv.delegation(grant, srv.agent, ttl=30), srv.reader).json()["access_token"]
    assert srv.access(srv.invoke(srv.reader, sub)).json()["decision"] == "allow"
    srv.clock.advance(120)  # the log's clock: every credential in the chain has expired
    r = srv.access(srv.invoke(srv.reader, sub))
    assert r.status_code == 200, r.text
    assert r.json()["decision"] == "deny"
    assert r.json()["reason"].startswith("expired")
    r = httpx.post(
        srv.url("/oauth/introspect"), data={"token": sub}, headers=srv.bearer(srv.enforcement)
    )
    assert r.json()["active"] is False
    assert r.json()["lineage"]["status"] == "expired"  # the grant, first in the chain
    assert r.json()["lineage"]["credential"] == grant


# -- the log's proofs, checked offline -------------------------------------------------------


def leaf_hash(entry: dict, integrated: int) -> bytes:
    """RFC 9162 §2.1.1 leaf hash of ``{"entry", "time"}`` in RFC 8785, computed independently."""
    return hashlib.sha256(b"\x00" + rfc8785.dumps({"entry": entry, "time": integrated})).digest()


def hashes(values: list[str]) -> list[bytes]:
    return [base64.b64decode(v, validate=True) for v in values]


def test_log_proofs_verify_under_the_log_key(srv: Server) -> None:
    first = checkpoint_at_least(srv, srv.size()).checkpoint
    _, sub = chain(srv)
    srv.access(srv.invoke(srv.reader, sub))
    latest = checkpoint_at_least(srv, srv.size()).checkpoint
    size, root = latest.size, latest.root_hash
    assert first.size < size
    for index in range(size):
        leaf = httpx.get(
            srv.url(f"/v1/log/entries/{index}"), headers=srv.bearer(srv.auditor)
        ).json()
        computed = leaf_hash(leaf["entry"], leaf["time"])
        assert leaf["leaf_hash"] == computed.hex()
        proof = httpx.get(
            srv.url("/v1/log/proof/inclusion"), params={"index": index, "tree_size": size}
        ).json()
        assert (proof["leaf_index"], proof["tree_size"]) == (index, size)
        verify_inclusion(index, size, computed, hashes(proof["audit_path"]), root)
    proof = httpx.get(
        srv.url("/v1/log/proof/consistency"), params={"first": first.size, "second": size}
    ).json()
    assert (proof["first"], proof["second"]) == (first.size, size)
    verify_consistency(first.size, size, first.root_hash, root, hashes(proof["consistency"]))
    equal = httpx.get(
        srv.url("/v1/log/proof/consistency"), params={"first": size, "second": size}
    ).json()
    assert equal["consistency"] == []  # RFC 9162 §2.1.4: equal sizes, empty proof


def test_consistency_proofs_between_every_pair_of_sizes(srv: Server) -> None:
    chain(srv)
    size = checkpoint_at_least(srv, srv.size()).checkpoint.size
    roots = {}
    for m in range(1, size + 1):  # the root of each earlier size, from its own leaves
        leaves = httpx.get(
            srv.url("/v1/log/entries"),
            params={"start": 0, "end": m},
            headers=srv.bearer(srv.auditor),
        ).json()["entries"]
        roots[m] = _root([leaf_hash(x["entry"], x["time"]) for x in leaves])
    for m in range(1, size + 1):
        for n in range(m, size + 1):
            proof = httpx.get(
                srv.url("/v1/log/proof/consistency"), params={"first": m, "second": n}
            ).json()["consistency"]
            verify_consistency(m, n, roots[m], roots[n], hashes(proof))


def _root(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH, recursively: the largest power of two below n on the left."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _root(leaves[:k]) + _root(leaves[k:])).digest()


# -- operations ------------------------------------------------------------------------------


def test_metrics_after_traffic(srv: Server) -> None:
    _, sub = chain(srv)
    invocation = srv.invoke(srv.reader, sub)
    srv.access(invocation)
    srv.access(invocation)  # an invalid (replayed) invocation
    path = f"/v1/credentials/{sub}/lineage"
    headers = srv.dpop(srv.reader, "GET", path, sub)
    httpx.get(srv.url(path), headers=headers)
    httpx.get(srv.url(path), headers=headers)  # an invalid (replayed) DPoP proof
    r = httpx.get(srv.url("/metrics"))
    assert r.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("lineage_appends_total", (("kind", "grant"),))] >= 1
    assert samples[("lineage_appends_total", (("kind", "delegation"),))] >= 1
    assert samples[("lineage_decisions_total", (("outcome", "allow"),))] == 1
    assert samples[("lineage_invalid_proofs_total", (("reason", "dpop"),))] == 1
    assert samples[("lineage_invalid_proofs_total", (("reason", "replayed"),))] == 1
    assert samples[("lineage_request_seconds_count", (("route", "/v1/access"),))] == 2


def test_healthz(srv: Server) -> None:
    r = httpx.get(srv.url("/healthz"))
    assert r.status_code == 200
    assert r.json() == {
        "status": "ok",
        "origin": "api-test.example/log",
        "tree_size": 2,
        "checkpoint_failures": 0,
        "checkpoint_error": None,
        "proof_failures": 0,
        "damage": None,
    }
    chain(srv)
    assert srv.size() == 4


# -- lineage serve ---------------------------------------------------------------------------


def _lineage_command() -> list[str]:
    script = Path(sys.executable).with_name("lineage")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from api.cli import main; main()"]


def test_lineage_serve_with_no_configuration(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [*_lineage_command(), "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            vkey = httpx.get(base + "/v1/log/key").text.strip()
        finally:
            proc.terminate()
            proc.wait(15)
    # SIGTERM: a clean shutdown (uvicorn re-raises the signal once it has shut down)
    assert proc.returncode in (0, -signal.SIGTERM), log_path.read_text()
    assert "Application shutdown complete" in log_path.read_text()
    logs = log_path.read_text()
    assert vkey.startswith("lineage.local/")  # the default origin
    assert "lineage-keys" in logs and vkey in logs  # where the keys are; the verifier key
    assert f"http://127.0.0.1:{port}/v1/log/key" in logs  # how to fetch it
    assert (tmp_path / "lineage.db").is_file()
    assert stat.S_IMODE((tmp_path / "lineage.db").stat().st_mode) == 0o600
    keys = tmp_path / "lineage-keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    files = list(keys.iterdir())
    assert files
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
