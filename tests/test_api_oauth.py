"""The OAuth-shaped endpoints as an outside client sees them, and who may read what.

A third-party OAuth library (authlib's httpx ``OAuth2Client``) performs the
RFC 8693 token exchange and the RFC 7662 introspection and RFC 7009 revocation;
the DPoP proofs (RFC 9449 §4) are built here with joserfc alone, as an
``httpx.Auth`` that also answers a ``use_dpop_nonce`` challenge (RFC 9449 §8).
Thumbprints are recomputed with joserfc (RFC 7638), not taken from the service.

Then the read rules of docs/API.md ("Who may call what") and DECISIONS.md D24
over HTTP: entry bodies for operator and auditor tokens, a holder's own chain,
a principal's own lineages; leaf hashes only for anyone else.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import warnings
from collections.abc import Generator, Iterator
from pathlib import Path

import httpx
import httpx2
import pytest
from authlib.deprecate import AuthlibDeprecationWarning
from joserfc import jws
from joserfc.jwk import OKPKey

from lineage.ledger.issuance import bind_principal
from lineage.verifier.bundle import verify_bundle
from lineage.verifier.keys import SigningKey
from tests.api_server import (
    CREDENTIAL,
    ORIGIN,
    SIGNED_ENTRY,
    TOKEN_EXCHANGE,
    Server,
    b64u,
    key,
    read_scope,
    running,
)

with warnings.catch_warnings():  # authlib 1.7+ prefers the httpx2 package; httpx still works
    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import OAuth2Client, OAuthError


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    with running(tmp_path) as server:
        yield server


# -- an outside client: DPoP with joserfc, OAuth with authlib ----------------------------------


def jkt(signing: SigningKey) -> str:
    """RFC 7638 thumbprint of the holder's public key, computed by joserfc."""
    return OKPKey.import_key(
        {"kty": "OKP", "crv": "Ed25519", "x": b64u(signing.public.raw)}
    ).thumbprint()


def outside_proof(
    signing: SigningKey,
    method: str,
    url: str,
    *,
    access_token: str | None = None,
    nonce: str | None = None,
) -> str:
    """RFC 9449 §4.2: a DPoP proof JWT, alg Ed25519 (RFC 9864), built with joserfc alone."""
    okp = OKPKey.import_key(
        {"kty": "OKP", "crv": "Ed25519", "d": b64u(signing.seed), "x": b64u(signing.public.raw)}
    )
    claims = {"jti": secrets.token_urlsafe(16), "htm": method, "htu": url, "iat": int(time.time())}
    if access_token is not None:
        claims["ath"] = b64u(hashlib.sha256(access_token.encode()).digest())
    if nonce is not None:
        claims["nonce"] = nonce
    header = {"typ": "dpop+jwt", "alg": "Ed25519", "jwk": okp.as_dict(private=False)}
    return jws.serialize_compact(header, json.dumps(claims), okp, algorithms=["Ed25519"])


# authlib's httpx client is built on httpx2 when httpx2 is installed (the mcp SDK 2.x brings
# it), and httpx2 takes only its own Auth: the proof maker is both.
AUTH_BASES = (httpx2.Auth, httpx.Auth)


class DPoP(*AUTH_BASES):
    """Adds a fresh DPoP proof to each request; retries once on a ``use_dpop_nonce`` challenge."""

    requires_response_body = True

    def __init__(
        self, signing: SigningKey, access_token: str | None = None, nonce: str | None = None
    ):
        self.signing, self.access_token, self.nonce = signing, access_token, nonce
        self.challenged = 0

    def _sign(self, request: httpx.Request) -> httpx.Request:
        url = request.url
        htu = f"{url.scheme}://{url.netloc.decode()}{url.path}"
        request.headers["DPoP"] = outside_proof(
            self.signing, request.method, htu, access_token=self.access_token, nonce=self.nonce
        )
        if self.access_token is not None:
            request.headers["Authorization"] = f"DPoP {self.access_token}"
        return request

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        response = yield self._sign(request)
        challenged = response.status_code in (400, 401) and "DPoP-Nonce" in response.headers
        if challenged and response.json().get("error") == "use_dpop_nonce":
            self.challenged += 1
            self.nonce = response.headers["DPoP-Nonce"]
            yield self._sign(request)


def oauth_client() -> OAuth2Client:
    return OAuth2Client(client_id="outside-agent", token_endpoint_auth_method="none", timeout=10)


def exchange(client: OAuth2Client, srv: Server, entry, holder: SigningKey, **kw) -> dict:
    return client.fetch_token(
        srv.url("/oauth/token"),
        grant_type=TOKEN_EXCHANGE,
        subject_token=b64u(entry.raw),
        subject_token_type=SIGNED_ENTRY,
        auth=kw.pop("auth", None) or DPoP(holder),
        **kw,
    )


# -- RFC 8414 ----------------------------------------------------------------------------------


def test_authorization_server_metadata(srv: Server) -> None:
    r = httpx.get(srv.url("/.well-known/oauth-authorization-server"))
    assert r.status_code == 200
    meta = r.json()
    assert meta["issuer"] == srv.base  # RFC 8414 §3.3: the issuer the document was fetched for
    assert meta["token_endpoint"] == srv.url("/oauth/token")
    assert meta["introspection_endpoint"] == srv.url("/oauth/introspect")
    assert meta["revocation_endpoint"] == srv.url("/oauth/revoke")
    assert TOKEN_EXCHANGE in meta["grant_types_supported"]
    assert {"EdDSA", "Ed25519"} <= set(meta["dpop_signing_alg_values_supported"])
    assert "email" in meta["authorization_details_types_supported"]
    for name, value in meta.items():  # RFC 8414 §3.2: no empty arrays
        assert value not in ([], None, ""), name


# -- RFC 8693 token exchange through authlib ---------------------------------------------------


def test_token_exchange_with_authlib(srv: Server) -> None:
    with oauth_client() as client:
        grant = srv.grant()
        token = exchange(client, srv, grant, srv.agent)
        assert token["access_token"] == grant.id
        assert token["issued_token_type"] == CREDENTIAL
        assert token["token_type"] == "DPoP"
        assert 0 < token["expires_in"] <= 900
        assert token["authorization_details"] == grant.obj["scope"]
        child = srv.delegation(grant.id, srv.agent)
        token = exchange(client, srv, child, srv.reader)
        assert token["access_token"] == child.id
        assert token["authorization_details"] == read_scope()
        # the same signed entry again: idempotent, the same handle, nothing new
        before = srv.size()
        assert exchange(client, srv, child, srv.reader)["access_token"] == child.id
        assert srv.size() == before


def test_token_response_is_not_cached(srv: Server) -> None:
    r = srv.exchange(srv.grant(), srv.agent)
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"  # RFC 6749 §5.1
    assert r.headers["content-type"].startswith("application/json")


def test_widened_exchange_is_an_oauth_error(srv: Server) -> None:
    with oauth_client() as client:
        grant = srv.grant()
        exchange(client, srv, grant, srv.agent)
        before = srv.size()
        wide = srv.delegation(grant.id, srv.agent, scope=read_scope(actions=["delete", "read"]))
        with pytest.raises(OAuthError) as caught:
            exchange(client, srv, wide, srv.reader)
        assert caught.value.error == "invalid_authorization_details"
        assert "actions" in caught.value.description
        assert srv.size() == before


def test_dpop_nonce_challenge_is_answered(srv: Server) -> None:
    auth = DPoP(srv.agent, nonce="stale-nonce")
    with oauth_client() as client:
        token = exchange(client, srv, srv.grant(), srv.agent, auth=auth)
    assert auth.challenged == 1  # RFC 9449 §8: a use_dpop_nonce error with a DPoP-Nonce header
    assert token["token_type"] == "DPoP"


def test_exchange_needs_a_proof_by_the_holder_key(srv: Server) -> None:
    before = srv.size()
    with oauth_client() as client, pytest.raises(OAuthError) as caught:
        exchange(client, srv, srv.grant(), srv.agent, auth=DPoP(srv.reader))
    assert caught.value.error == "invalid_dpop_proof"
    assert srv.size() == before


# -- RFC 7662 introspection, RFC 7009 revocation ----------------------------------------------


def test_introspection_with_authlib(srv: Server) -> None:
    with oauth_client() as client:
        grant = srv.grant()
        exchange(client, srv, grant, srv.agent)
        child = srv.delegation(grant.id, srv.agent)
        exchange(client, srv, child, srv.reader)
        bearer = {"Authorization": f"Bearer {srv.enforcement}"}
        r = client.introspect_token(srv.url("/oauth/introspect"), token=child.id, headers=bearer)
        assert r.status_code == 200
        body = r.json()
        assert body["active"] is True
        assert body["token_type"] == "DPoP"
        assert body["sub"] == "alice@corp"
        assert body["cnf"] == {"jkt": jkt(srv.reader)}  # RFC 9449 §6.1
        # RFC 8693 §4.1: the current actor outermost, the one before it nested inside
        assert body["act"] == {"sub": jkt(srv.reader), "act": {"sub": jkt(srv.agent)}}
        assert body["authorization_details"] == child.obj["scope"]
        assert body["exp"] == child.obj["expires_at"]
        # the holder itself, authenticated with DPoP, may introspect its own credential
        own = client.introspect_token(
            srv.url("/oauth/introspect"), token=child.id, auth=DPoP(srv.reader, child.id)
        )
        assert own.json()["active"] is True
        assert own.json()["cnf"]["jkt"] == jkt(srv.reader)


def test_unknown_or_foreign_tokens_are_only_inactive(srv: Server) -> None:
    """RFC 7662 §2.2: nothing more about a token the caller may not introspect; a known
    credential that is not active says which rule, to a caller that may (docs/API.md)."""
    with oauth_client() as client:
        grant = srv.grant()
        exchange(client, srv, grant, srv.agent)
        child = srv.delegation(grant.id, srv.agent)
        exchange(client, srv, child, srv.reader)
        url = srv.url("/oauth/introspect")
        bearer = {"Authorization": f"Bearer {srv.enforcement}"}
        for token in ("0" * 64, "not-a-handle", "A" * 64):
            r = client.introspect_token(url, token=token, headers=bearer)
            assert (r.status_code, r.json()) == (200, {"active": False}), token
        # a holder asking about a credential that is not its own
        other = client.introspect_token(url, token=grant.id, auth=DPoP(srv.reader, child.id))
        assert other.json() == {"active": False}
        # RFC 7009 through authlib, with an operator token: the subtree goes inactive
        operator = {"Authorization": f"Bearer {srv.operator}"}
        r = client.revoke_token(srv.url("/oauth/revoke"), token=grant.id, headers=operator)
        assert r.status_code == 200
        for token in (grant.id, child.id):
            r = client.introspect_token(url, token=token, headers=bearer)
            assert r.json()["active"] is False
            assert r.json()["lineage"]["status"] == "revoked"
            assert r.json()["lineage"]["credential"] == grant.id
            assert set(r.json()) == {"active", "lineage"}


def test_introspection_and_revocation_need_client_authentication(srv: Server) -> None:
    grant = srv.grant()
    srv.exchange(grant, srv.agent)
    before = srv.size()
    for path in ("/oauth/introspect", "/oauth/revoke"):
        r = httpx.post(srv.url(path), data={"token": grant.id})
        assert r.status_code == 401
        assert set(r.json()) == {"error", "error_description"}
        assert "WWW-Authenticate" in r.headers
    r = httpx.post(
        srv.url("/oauth/revoke"), data={"token": grant.id}, headers=srv.bearer(srv.auditor)
    )
    assert r.status_code == 403
    assert srv.size() == before


# -- who may read what ---------------------------------------------------------------------------


class Readers:
    """Every kind of caller, as request headers for one GET."""

    def __init__(self, srv: Server, agent: str, reader: str, stranger: str):
        self.srv, self.handles = srv, {"agent": agent, "reader": reader, "stranger": stranger}
        self.keys = {"agent": srv.agent, "reader": srv.reader, "stranger": key("stranger")}

    def headers(self, who: str, path: str) -> dict[str, str]:
        srv = self.srv
        if who in ("operator", "auditor", "enforcement"):
            return srv.bearer(getattr(srv, who))
        if who in self.handles:
            return srv.dpop(self.keys[who], "GET", path, self.handles[who])
        if who in ("alice@corp", "bob@corp"):
            signing = srv.alice if who == "alice@corp" else key("bob@corp")
            return srv.dpop(signing, "GET", path, who)
        return {}


@pytest.fixture
def readers(srv: Server) -> tuple[Readers, dict[str, int]]:
    """alice -> agent -> reader, an access by the reader, and alice -> stranger; bob bound."""
    bob = bind_principal(ORIGIN, srv.log.keys.operator, "bob@corp", key("bob@corp").public)
    assert httpx.post(srv.url("/v1/entries"), content=bob.raw).status_code == 201
    grant = srv.exchange(srv.grant(), srv.agent).json()
    child = srv.exchange(srv.delegation(grant["access_token"], srv.agent), srv.reader).json()
    access = srv.access(srv.invoke(srv.reader, child["access_token"])).json()
    other = srv.exchange(srv.grant(key("stranger"), ttl=500), key("stranger")).json()
    indexes = {
        "grant": grant["lineage_index"],
        "child": child["lineage_index"],
        "access": access["index"],
        "other": other["lineage_index"],
    }
    handles = (grant["access_token"], child["access_token"], other["access_token"])
    return Readers(srv, *handles), indexes


EVERYTHING = {"grant", "child", "access", "other"}
MAY_READ = {
    "anonymous": set(),
    "enforcement": set(),
    "operator": EVERYTHING,
    "auditor": EVERYTHING,
    "agent": {"grant", "child", "access"},  # its credential, what derives from it, its uses
    "reader": {"grant", "child", "access"},  # its chain, up to the human
    "stranger": {"other"},
    "alice@corp": EVERYTHING,  # everything she authorised
    "bob@corp": set(),
}


@pytest.mark.parametrize("who", sorted(MAY_READ))
def test_log_entry_bodies_only_for_authorised_readers(readers, who: str) -> None:
    rd, indexes = readers
    for name, index in indexes.items():
        path = f"/v1/log/entries/{index}"
        r = httpx.get(rd.srv.url(path), headers=rd.headers(who, path))
        assert r.status_code == 200, r.text
        body = r.json()
        assert {"index", "leaf_hash", "time"} <= set(body)
        if name in MAY_READ[who]:
            assert body["entry"]["kind"] in ("grant", "delegation", "access"), (who, name)
        else:
            assert set(body) == {"index", "leaf_hash", "time"}, (who, name)


def test_a_key_not_bound_to_the_principal_is_refused(readers) -> None:
    rd, indexes = readers
    path = f"/v1/log/entries/{indexes['grant']}"
    headers = rd.srv.dpop(key("bob@corp"), "GET", path, "alice@corp")
    r = httpx.get(rd.srv.url(path), headers=headers)
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_token"


@pytest.mark.parametrize(
    ("who", "status"),
    [
        ("anonymous", 401),
        ("enforcement", 403),
        ("reader", 403),
        ("operator", 200),
        ("auditor", 200),
    ],
)
def test_export_needs_an_operator_or_auditor(readers, who: str, status: int) -> None:
    rd, _ = readers
    r = httpx.get(rd.srv.url("/v1/export"), headers=rd.headers(who, "/v1/export"))
    assert r.status_code == status, r.text
    if status == 200:
        vkey = httpx.get(rd.srv.url("/v1/log/key")).text.strip()
        verified = verify_bundle(r.json(), vkey)
        exported = {e.leaf.entry.id for e in verified.entries}
        assert set(rd.handles.values()) <= exported
    else:
        assert {"type", "title", "status", "detail", "error"} <= set(r.json())


def test_lineage_readable_by_its_holder_and_verifies_offline(readers) -> None:
    rd, _ = readers
    srv, child = rd.srv, rd.handles["reader"]
    path = f"/v1/credentials/{child}/lineage"
    vkey = httpx.get(srv.url("/v1/log/key")).text.strip()
    r = httpx.get(srv.url(path), headers=rd.headers("reader", path))
    assert r.status_code == 200, r.text
    verified = verify_bundle(r.json(), vkey)
    chains = [[rec.id for rec in c] for c in verified.chains()]
    assert [rd.handles["agent"], child] in chains
    assert verified.replay.credentials[child].principal == "alice@corp"
    for who, status in (("stranger", 403), ("anonymous", 401), ("bob@corp", 403)):
        r = httpx.get(srv.url(path), headers=rd.headers(who, path))
        assert r.status_code == status, (who, r.text)
    for who in ("alice@corp", "auditor", "agent"):
        r = httpx.get(srv.url(path), headers=rd.headers(who, path))
        assert r.status_code == 200, (who, r.text)
