"""The service against stock OAuth clients and the letter of the RFCs it cites.

authlib validates the RFC 8414 document and makes the token, introspection and
revocation requests; DPoP proofs are built with lineage.client.dpop (joserfc). The
server is a real uvicorn on 127.0.0.1 over a real SQLite ledger (tests/api_server.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from authlib.deprecate import AuthlibDeprecationWarning
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

from lineage.client.dpop import make_proof
from lineage.ledger.config import Settings
from tests.api_server import TOKEN_EXCHANGE, Server, b64u, running

with warnings.catch_warnings():
    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import OAuth2Client, OAuthError

# IANA "OAuth Token Endpoint Authentication Methods" and "OAuth Access Token Types"
TOKEN_ENDPOINT_AUTH_METHODS = {
    "none",
    "client_secret_post",
    "client_secret_basic",
    "client_secret_jwt",
    "private_key_jwt",
    "tls_client_auth",
    "self_signed_tls_client_auth",
}
ACCESS_TOKEN_TYPES = {"Bearer", "N_A", "PoP", "DPoP"}
META = "/.well-known/oauth-authorization-server"


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    with running(tmp_path) as server:
        yield server


def metadata(srv: Server) -> dict:
    r = httpx.get(srv.url(META), timeout=10)
    assert r.status_code == 200
    return r.json()


# -- RFC 8414 ----------------------------------------------------------------------------------


def test_the_metadata_passes_authlib_validation(srv: Server) -> None:
    meta = metadata(srv)
    AuthorizationServerMetadata(meta).validate()  # raises on any RFC 8414 §2 violation
    assert meta["response_types_supported"] == ["code"]  # consent in the browser
    assert meta["code_challenge_methods_supported"] == ["S256"]  # PKCE, nothing weaker
    assert meta["authorization_endpoint"].endswith("/oauth/authorize")


def test_the_metadata_uses_only_registered_auth_methods(srv: Server) -> None:
    meta = metadata(srv)
    assert set(meta["token_endpoint_auth_methods_supported"]) <= TOKEN_ENDPOINT_AUTH_METHODS
    # RFC 8414 §2: introspection may also name access token types
    introspection = set(meta["introspection_endpoint_auth_methods_supported"])
    assert introspection <= TOKEN_ENDPOINT_AUTH_METHODS | ACCESS_TOKEN_TYPES
    # revocation may name token endpoint methods only, and none of them is Bearer-or-DPoP
    revocation = set(meta.get("revocation_endpoint_auth_methods_supported", []))
    assert revocation <= TOKEN_ENDPOINT_AUTH_METHODS


def test_the_metadata_issuer_follows_public_url(tmp_path: Path) -> None:
    settings = Settings(checkpoint_interval=0.2, public_url="https://lineage.example.com/")
    with running(tmp_path, settings) as srv:
        meta = metadata(srv)
    assert meta["issuer"] == "https://lineage.example.com"
    assert meta["token_endpoint"] == "https://lineage.example.com/oauth/token"


def test_introspection_iss_is_the_metadata_issuer(srv: Server) -> None:
    grant = srv.exchange(srv.grant(), srv.agent).json()["access_token"]
    r = httpx.post(
        srv.url("/oauth/introspect"), data={"token": grant}, headers=srv.bearer(srv.enforcement)
    )
    body = r.json()
    assert body["iss"] == metadata(srv)["issuer"] == srv.base
    assert body["lineage"]["log"] == srv.log.origin  # the log origin is still there


# -- RFC 6749 / 8693 token requests --------------------------------------------------------------


def test_client_credentials_is_an_unsupported_grant_type(srv: Server) -> None:
    before = srv.size()
    client = OAuth2Client(client_id="x", token_endpoint_auth_method="none", timeout=10)
    with client, pytest.raises(OAuthError) as caught:
        client.fetch_token(srv.url("/oauth/token"), grant_type="client_credentials")
    assert caught.value.error == "unsupported_grant_type"  # RFC 6749 §5.2
    assert srv.size() == before


def test_a_scope_on_a_token_request_is_refused_not_ignored(srv: Server) -> None:
    grant = srv.grant()
    before = srv.size()
    client = OAuth2Client(client_id="x", token_endpoint_auth_method="none", timeout=10)
    with client, pytest.raises(OAuthError) as caught:
        client.fetch_token(
            srv.url("/oauth/token"),
            grant_type=TOKEN_EXCHANGE,
            subject_token=b64u(grant.raw),
            subject_token_type="urn:lineage:params:oauth:token-type:signed-entry",
            scope="email:read",
            headers=srv.dpop(srv.agent, "POST", "/oauth/token"),
        )
    assert caught.value.error == "invalid_scope"  # RFC 6749 §5.2, RFC 8693 §2.2.2
    assert "authorization_details" in caught.value.description
    assert srv.size() == before


@pytest.mark.parametrize("field", ["resource", "audience"])
def test_a_target_on_a_token_request_is_refused(srv: Server, field: str) -> None:
    r = httpx.post(
        srv.url("/oauth/token"),
        data=srv.exchange_form(srv.grant(), **{field: "https://mail.example.com"}),
        headers=srv.dpop(srv.agent, "POST", "/oauth/token"),
    )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_target")  # RFC 8693 §2.2.2


# -- RFC 9449 DPoP ---------------------------------------------------------------------------------


def test_two_dpop_headers_are_refused(srv: Server) -> None:
    url = srv.url("/oauth/token")
    proofs = [("DPoP", make_proof(srv.agent.seed, "POST", url)) for _ in range(2)]
    before = srv.size()
    r = httpx.post(
        url,
        content=httpx.QueryParams(srv.exchange_form(srv.grant())).__str__().encode(),
        headers=[("Content-Type", "application/x-www-form-urlencoded"), *proofs],
    )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_dpop_proof")  # §4.3 check 1
    assert "exactly one" in r.json()["error_description"]
    assert srv.size() == before


@pytest.mark.parametrize(
    "spelling",
    [
        "HTTP://127.0.0.1:{port}/oauth/token",  # scheme is case-insensitive (RFC 3986 §6.2.2.1)
        "http://127.0.0.1:{port}/oauth/./token",  # dot segments (§6.2.2.3)
        "http://127.0.0.1:{port}/oauth/%74oken",  # an unreserved octet, encoded (§6.2.2.2)
    ],
)
def test_an_equivalent_htu_is_accepted(srv: Server, spelling: str) -> None:
    port = srv.base.rsplit(":", 1)[1]
    proof = make_proof(srv.agent.seed, "POST", spelling.format(port=port))
    r = httpx.post(
        srv.url("/oauth/token"), data=srv.exchange_form(srv.grant()), headers={"DPoP": proof}
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "other",
    [
        "https://127.0.0.1:{port}/oauth/token",  # another scheme
        "http://127.0.0.1:{port}/oauth/Token",  # paths are case-sensitive
        "http://127.0.0.1:{port}/oauth/introspect/../tokens",
        "http://user@127.0.0.1:{port}/oauth/token",
    ],
)
def test_a_different_htu_is_still_refused(srv: Server, other: str) -> None:
    port = srv.base.rsplit(":", 1)[1]
    proof = make_proof(srv.agent.seed, "POST", other.format(port=port))
    r = httpx.post(
        srv.url("/oauth/token"), data=srv.exchange_form(srv.grant()), headers={"DPoP": proof}
    )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_dpop_proof")


# -- client authentication and 401s --------------------------------------------------------------


def test_basic_client_auth_is_invalid_client_with_a_challenge(srv: Server) -> None:
    grant = srv.exchange(srv.grant(), srv.agent).json()["access_token"]
    with OAuth2Client(client_id="rs", client_secret="secret", timeout=10) as client:  # Basic
        r = client.introspect_token(srv.url("/oauth/introspect"), token=grant)
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"  # RFC 6749 §5.2
    challenge = r.headers["WWW-Authenticate"]
    assert "Bearer" in challenge and "DPoP" in challenge


@pytest.mark.parametrize(
    ("method", "path", "kw"),
    [
        ("GET", "/v1/export", {}),
        ("GET", "/v1/entries", {}),
        ("GET", "/v1/credentials/{grant}/lineage", {}),
        ("POST", "/v1/access", {"json": {"invocation": {}}}),
        ("POST", "/oauth/introspect", {"data": {"token": "x"}}),
        ("POST", "/oauth/revoke", {"data": {"token": "x"}}),
        ("GET", "/v1/export", {"headers": {"Authorization": "Basic eDp5"}}),
        ("GET", "/v1/export", {"headers": {"Authorization": "Bearer lin_nope"}}),
        ("GET", "/v1/entries", {"headers": {"Authorization": "Negotiate abc"}}),
    ],
)
def test_every_401_carries_www_authenticate(srv: Server, method: str, path: str, kw: dict) -> None:
    grant = srv.exchange(srv.grant(), srv.agent).json()["access_token"]
    r = httpx.request(method, srv.url(path.format(grant=grant)), timeout=10, **kw)
    assert r.status_code == 401, r.text
    assert r.headers.get("WWW-Authenticate"), r.headers  # RFC 9110 §15.5.2


def test_an_invalid_invocation_401_carries_www_authenticate(srv: Server) -> None:
    grant = srv.exchange(srv.grant(), srv.agent).json()["access_token"]
    invocation = srv.invoke(srv.reader, grant)  # signed by a key that does not hold it
    r = srv.access(invocation)
    assert (r.status_code, r.json()["error"]) == (401, "invalid_invocation")
    assert r.headers.get("WWW-Authenticate")


# -- integer parameters ----------------------------------------------------------------------------

HUGE = [
    "since=9223372036854775808",
    "until=9223372036854775808",
    "since=" + "9" * 40,
    "until=1e26",
    "cursor=9223372036854775808",
    "since=-9223372036854775809",
]


@pytest.mark.parametrize("query", HUGE)
def test_an_out_of_range_integer_is_a_400_and_the_connection_lives(srv: Server, query: str) -> None:
    with httpx.Client(headers=srv.bearer(srv.auditor), timeout=10) as client:
        r = client.get(srv.url(f"/v1/entries?{query}"))
        assert (r.status_code, r.json()["error"]) == (400, "invalid_request"), r.text
        assert client.get(srv.url("/v1/entries")).status_code == 200  # same connection, fine


EXPORT_HUGE = [
    *(f"format={fmt}&{q}" for fmt in ("csv", "jsonl", "dot", "bundle") for q in HUGE[:2]),
    "format=bundle&from_size=9223372036854775808",
]


@pytest.mark.parametrize("query", EXPORT_HUGE)
def test_an_out_of_range_export_parameter_is_a_400_not_a_dropped_stream(
    srv: Server, query: str
) -> None:
    with httpx.Client(headers=srv.bearer(srv.auditor), timeout=10) as client:
        r = client.get(srv.url(f"/v1/export?{query}"))
        assert (r.status_code, r.json()["error"]) == (400, "invalid_request"), r.text
        assert client.get(srv.url("/v1/export?format=csv")).status_code == 200


@pytest.mark.parametrize("path", ["/v1/export?format=csv", "/v1/entries", "/oauth/introspect"])
def test_two_authorization_headers_are_refused_not_the_first_taken(srv: Server, path: str):
    """Found from outside: with two, the first won silently (auditor then bogus: 200)."""
    headers = [("Authorization", f"Bearer {srv.auditor}"), ("Authorization", "Bearer lin_bogus")]
    method = "POST" if path == "/oauth/introspect" else "GET"
    data = {"token": "x" * 64} if method == "POST" else None
    r = httpx.request(method, srv.url(path), headers=headers, data=data, timeout=10)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request"), r.text


LOOSE = ["since=%2B12", "since=%2012%20", "since=12.0", "since=1_000", "since=1e3", "cursor=-0"]


@pytest.mark.parametrize("query", LOOSE)
def test_an_integer_parameter_is_decimal_digits_only(srv: Server, query: str) -> None:
    """Found from outside: '+12', ' 12 ', '12.0' and '1_000' were read as numbers."""
    r = httpx.get(srv.url(f"/v1/entries?{query}"), headers=srv.bearer(srv.auditor), timeout=10)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request"), r.text


@pytest.mark.parametrize(
    "path", ["/v1/log/entries/-1", "/v1/log/entries/+1", "/v1/log/entries/1.0"]
)
def test_a_leaf_index_in_the_path_is_decimal_digits_only(srv: Server, path: str) -> None:
    r = httpx.get(srv.url(path), timeout=10)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request"), r.text
    assert httpx.get(srv.url("/v1/log/entries/0"), timeout=10).status_code == 200
