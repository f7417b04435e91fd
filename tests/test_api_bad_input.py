"""Bad input at every endpoint: a 4xx with a JSON error, never a 5xx, and nothing written.

docs/API.md, Errors: on ``/oauth/*`` the body is RFC 6749 §5.2 shaped (``error``,
``error_description``, nothing else); elsewhere RFC 9457 problem details
(``type``, ``title``, ``status``, ``detail``) with the same ``error`` code.
After each case the tree size (``GET /healthz``) is what it was, and at the end
the latest checkpoint covers exactly the leaves the fixture made.

Cases the service once got wrong stay here as regressions, with the
bug named; they pass once it is fixed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from lineage.client.dpop import make_proof
from lineage.verifier.bodies import revocation_body
from lineage.verifier.entry import sign_entry
from lineage.verifier.invocation import sign_invocation
from tests.api_server import (
    ORIGIN,
    SIGNED_ENTRY,
    TOKEN_EXCHANGE,
    Server,
    b64u,
    checkpoint_at_least,
    key,
    request,
    running,
)

MIB = 1 << 20
HEX0 = "0" * 64


@dataclass
class Ctx:
    srv: Server
    grant: str  # the agent's credential
    child: str  # the reader's, delegated from it
    size: int  # the tree size once these were made

    def fmt(self, path: str) -> str:
        return path.format(grant=self.grant, child=self.child)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    with running(tmp_path_factory.mktemp("bad-input")) as srv:
        grant = srv.exchange(srv.grant(), srv.agent).json()["access_token"]
        child = srv.exchange(srv.delegation(grant, srv.agent), srv.reader).json()["access_token"]
        yield Ctx(srv, grant, child, srv.size())


# -- request builders ------------------------------------------------------------------------

Build = Callable[[Ctx], dict[str, Any]]


def raw(content: bytes, ctype: str = "application/json", **headers: str) -> Build:
    return lambda c: {"content": content, "headers": {"content-type": ctype, **headers}}


def exchange(**over: Any) -> Build:
    """A token exchange of a fresh, valid grant with fields replaced (``None`` drops one)."""

    def build(c: Ctx) -> dict[str, Any]:
        grant = c.srv.grant()
        data = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token_type": SIGNED_ENTRY,
            "subject_token": b64u(grant.raw),
        }
        fields = dict(over)
        signer = fields.pop("dpop_key", c.srv.agent)
        data.update({k: v(grant) if callable(v) else v for k, v in fields.items()})
        data = {k: v for k, v in data.items() if v is not None}
        return {"data": data, "headers": c.srv.dpop(signer, "POST", "/oauth/token")}

    return build


def proof_header(**kw: Any) -> Build:
    """A token exchange whose DPoP proof is made by ``make_proof(**kw)``."""

    def build(c: Ctx) -> dict[str, Any]:
        out = exchange()(c)
        args = {"method": "POST", "url": c.srv.url("/oauth/token"), **kw}
        out["headers"] = {
            "DPoP": make_proof(c.srv.agent.seed, args.pop("method"), args.pop("url"), **args)
        }
        return out

    return build


def as_role(role: str, **kw: Any) -> Build:
    return lambda c: {**kw, "headers": c.srv.bearer(getattr(c.srv, role))}


def holder_revoke(entry: Callable[[Ctx], str | None]) -> Build:
    """The reader revoking its own credential (DPoP), sending ``entry`` as the revocation."""

    def build(c: Ctx) -> dict[str, Any]:
        data = {"token": c.child}
        value = entry(c)
        if value is not None:
            data["revocation"] = value
        return {"data": data, "headers": c.srv.dpop(c.srv.reader, "POST", "/oauth/revoke", c.child)}

    return build


def revocation(c: Ctx, credential: str, signer_name: str) -> str:
    signer = {"reader": c.srv.reader, "agent": c.srv.agent}[signer_name]
    body = revocation_body(ORIGIN, credential=credential, reason="bad input test")
    return b64u(sign_entry(body, [signer]).raw)


def access(invocation: Callable[[Ctx], dict[str, Any]], **extra: Any) -> Build:
    """POST /v1/access as the enforcement point with the reader's invocation, edited."""

    def build(c: Ctx) -> dict[str, Any]:
        body = {"invocation": invocation(c), **extra}
        return {"json": body, "headers": c.srv.bearer(c.srv.enforcement)}

    return build


def invocation(iat_shift: int = 0, signer: str = "reader", **edit: Any) -> Callable[[Ctx], dict]:
    def build(c: Ctx) -> dict[str, Any]:
        holder = {"reader": c.srv.reader, "agent": c.srv.agent}[signer]
        inv = dict(sign_invocation(holder, c.child, request(), c.srv.now + iat_shift).to_json())
        inv.update(edit)
        return inv

    return build


def nothing(c: Ctx) -> dict[str, Any]:
    return {}


def chunked(size: int) -> Iterator[bytes]:
    for _ in range(size // 65536 + 1):
        yield b"a" * 65536


@dataclass
class Case:
    name: str
    method: str
    path: str
    build: Build = nothing
    status: int | None = None  # None: any 4xx
    error: str | None = None


def forged(c: Ctx) -> bytes:
    """alice's grant re-signed by the agent: well-formed, but not alice's signature."""
    body = {k: v for k, v in c.srv.grant().obj.items() if k != "sigs"}
    return sign_entry(body, [key("agent")]).raw


def not_a_credential(c: Ctx) -> bytes:
    return sign_entry(revocation_body(ORIGIN, credential=HEX0), [key("alice@corp")]).raw


def other_log(c: Ctx) -> bytes:
    body = {**revocation_body(ORIGIN, credential=c.grant), "log": "elsewhere.example/log"}
    return sign_entry(body, [c.srv.alice]).raw


def subject(make: Callable[[Ctx], bytes]) -> Build:
    """A token exchange whose subject token is ``make``'s bytes, base64url."""

    def build(c: Ctx) -> dict[str, Any]:
        return exchange(subject_token=b64u(make(c)))(c)

    return build


def body(make: Callable[[Ctx], bytes]) -> Build:
    return lambda c: {"content": make(c)}


def headers_only(**headers: str) -> Build:
    """A valid exchange form with exactly these headers (no DPoP proof unless given)."""
    return lambda c: {"data": exchange()(c)["data"], "headers": headers}


def anon(**kw: Any) -> Build:
    return lambda c: kw


def grant_token(c: Ctx) -> dict[str, str]:
    return {"token": c.grant}


def with_auth(value: str) -> Build:
    return lambda c: {"data": grant_token(c), "headers": {"Authorization": value.format(c=c)}}


def pretty(g: Any) -> str:
    return b64u(json.dumps(g.obj, indent=1).encode())


OVERSIZE = b"{" + b" " * (MIB + 10) + b"}"
TOKEN = "/oauth/token"
INTROSPECT = "/oauth/introspect"
REVOKE = "/oauth/revoke"
ENTRIES = "/v1/entries"
ACCESS = "/v1/access"
FORM = "application/x-www-form-urlencoded"
BAD, UNAUTH = "invalid_request", "invalid_dpop_proof"
DETAILS = "invalid_authorization_details"

# (name, build, status or None for any 4xx, error code or None), one table per endpoint
TOKEN_CASES = [  # RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 9396 §5, RFC 9449 §5
    ("empty-form", anon(data={}), 400, BAD),
    ("malformed-form", raw(b"\xff\xfe=%%&&=", FORM), 400, None),
    ("json-body", raw(b'{"grant_type":"x"}'), 400, BAD),
    ("no-subject", exchange(subject_token=None), 400, BAD),
    ("grant-type", exchange(grant_type="password"), 400, "unsupported_grant_type"),
    ("subject-type", exchange(subject_token_type="urn:ietf:params:oauth:token-type:jwt"), 400, BAD),
    ("requested-type", exchange(requested_token_type="x"), 400, BAD),
    ("bad-base64", exchange(subject_token="a"), 400, BAD),
    ("not-json", exchange(subject_token=b64u(b"not json")), 400, BAD),
    ("json-array", exchange(subject_token=b64u(b"[]")), 400, BAD),
    ("not-canonical", exchange(subject_token=pretty), 400, BAD),
    ("too-long", exchange(subject_token="A" * 100_001), 400, BAD),
    ("not-a-credential", subject(not_a_credential), 400, "invalid_grant"),
    ("forged-signature", subject(forged), 400, "invalid_grant"),
    ("details-not-json", exchange(authorization_details="[{"), 400, DETAILS),
    ("details-float", exchange(authorization_details="[1.5]"), 400, DETAILS),
    ("details-differ", exchange(authorization_details="[]"), 400, DETAILS),
    ("oversized", raw(b"a=" + b"b" * (MIB + 1), FORM), 413, None),
    ("no-dpop", headers_only(), None, UNAUTH),
    ("dpop-not-jws", headers_only(DPoP="a.b.c"), None, UNAUTH),
    ("dpop-htm", proof_header(method="GET"), None, UNAUTH),
    ("dpop-htu", proof_header(url="http://elsewhere.example/oauth/token"), None, UNAUTH),
    ("dpop-stale", proof_header(iat=1), None, UNAUTH),
    ("dpop-other-key", exchange(dpop_key=key("reader")), 400, UNAUTH),
    ("get", nothing, 405, None),
]
INTROSPECT_CASES = [  # RFC 7662 §2.1
    ("no-token", as_role("enforcement", data={}), 400, BAD),
    ("json", lambda c: {"json": grant_token(c), **as_role("enforcement")(c)}, 400, None),
    ("anonymous", lambda c: {"data": grant_token(c)}, 401, None),
    ("unknown-bearer", with_auth("Bearer lin_x"), 401, "invalid_token"),
    ("basic-auth", with_auth("Basic eDp5"), 401, None),
    ("dpop-no-proof", with_auth("DPoP {c.grant}"), 401, UNAUTH),
]
REVOKE_CASES = [  # RFC 7009 §2.1
    ("no-token", as_role("operator", data={}), 400, BAD),
    ("auditor", lambda c: {"data": grant_token(c), **as_role("auditor")(c)}, 403, None),
    ("holder-no-entry", holder_revoke(lambda c: None), 400, BAD),
    ("holder-bad-base64", holder_revoke(lambda c: "a"), 400, BAD),
    ("holder-not-json", holder_revoke(lambda c: b64u(b"{")), 400, BAD),
    ("holder-other-target", holder_revoke(lambda c: revocation(c, c.grant, "reader")), 400, BAD),
    ("holder-other-signer", holder_revoke(lambda c: revocation(c, c.child, "agent")), 400, BAD),
    ("oversized", raw(b"token=" + b"a" * (MIB + 1), FORM), 413, None),
]
APPEND_CASES = [
    ("not-json", raw(b"not json"), 400, BAD),
    ("not-utf8", raw(b'{"a":"\xff"}'), 400, BAD),
    ("array", raw(b"[]"), 400, BAD),
    ("empty-object", raw(b"{}"), 400, BAD),
    ("float", raw(b'{"v":1.5}'), 400, BAD),
    ("big-int", raw(b'{"v":9007199254740993}'), 400, None),
    ("duplicate-key", raw(b'{"v":1,"v":1}'), 400, BAD),
    ("deep", raw(b"[" * 10_000 + b"]" * 10_000), 400, None),
    ("empty-body", raw(b""), 400, None),
    ("forged", body(forged), 400, "invalid_grant"),
    ("other-log", body(other_log), 400, None),
    ("70k", raw(b'{"x":"' + b"a" * 70_000 + b'"}'), 400, None),
    ("300k", raw(b'{"x":"' + b"a" * 300_000 + b'"}'), 413, None),
    ("oversized", raw(OVERSIZE), 413, None),
]
ACCESS_CASES = [
    ("empty", as_role("enforcement", json={}), 400, None),
    ("not-json", lambda c: {"content": b"{nope", **as_role("enforcement")(c)}, 400, None),
    ("invocation-list", as_role("enforcement", json={"invocation": []}), 400, None),
    ("unknown-field", access(invocation(), verdict="allow"), 400, BAD),
    ("context-list", access(invocation(), context=[]), 400, None),
    ("context-float", access(invocation(), context={"x": 0.5}), 400, None),
    ("context-big", access(invocation(), context={"x": "a" * 9000}), 400, None),
    ("status-range", access(invocation(), upstream_status=7), 400, None),
    ("status-text", access(invocation(), upstream_status="ok"), 400, None),
    ("invocation-fields", access(lambda c: {}), 400, None),
    ("invocation-extra", access(invocation(sig="x")), 400, None),
    ("invocation-iat-float", access(invocation(iat=1.5)), 400, None),
    ("unknown-credential", access(invocation(credential=HEX0)), 401, "invalid_invocation"),
    ("wrong-holder", access(invocation(signer="agent")), 401, "invalid_invocation"),
    ("stale", access(invocation(iat_shift=-3600)), 401, "invalid_invocation"),
    ("future", access(invocation(iat_shift=3600)), 401, "invalid_invocation"),
    ("anonymous", anon(json={"invocation": {}}), 401, None),
    ("auditor", as_role("auditor", json={"invocation": {}}), 403, None),
    ("oversized", raw(OVERSIZE), 413, None),
]
# the fixture's tree has 4 leaves; RFC 9162 §2.1.3: 0 <= index < tree_size <= size;
# §2.1.4: 0 < first <= second <= size
INCLUSION_QUERIES = {
    "index-at-size": "index=4&tree_size=4",
    "index-above-size": "index=9&tree_size=4",
    "size-zero": "index=0&tree_size=0",
    "size-beyond-log": "index=0&tree_size=99",
    "index-negative": "index=-1&tree_size=2",
    "size-negative": "index=0&tree_size=-2",
    "index-text": "index=one&tree_size=2",
    "size-float": "index=0&tree_size=1.5",
    "size-exponent": "index=0&tree_size=1e1",
    "size-huge": "index=0&tree_size=" + "9" * 40,
    "index-huge": "index=" + "9" * 40 + "&tree_size=2",
    "no-size": "index=0",
    "no-index": "tree_size=2",
    "nothing": "",
}
CONSISTENCY_QUERIES = {
    "first-zero": "first=0&second=2",
    "first-above-second": "first=3&second=2",
    "second-beyond-log": "first=1&second=99",
    "first-negative": "first=-1&second=2",
    "second-text": "first=1&second=two",
    "first-float": "first=1.5&second=2",
    "second-huge": "first=1&second=" + "9" * 40,
    "no-second": "first=1",
    "no-first": "second=2",
    "nothing": "",
}
GET_CASES = [  # (name, path, build, status)
    ("entry-bad-id", ENTRIES + "/xyz", nothing, 400),
    ("entry-upper-hex", ENTRIES + "/" + "A" * 64, nothing, 400),
    ("entry-unknown", ENTRIES + "/" + HEX0, nothing, 404),
    ("query-cursor-negative", ENTRIES + "?cursor=-1", nothing, 400),
    ("query-limit-zero", ENTRIES + "?limit=0", nothing, 400),
    ("query-limit-huge", ENTRIES + "?limit=501", nothing, 400),
    ("query-since-text", ENTRIES + "?since=yesterday", nothing, 400),
    ("leaf-beyond", "/v1/log/entries/99", nothing, 404),
    ("leaf-negative", "/v1/log/entries/-1", nothing, None),
    ("leaf-text", "/v1/log/entries/first", nothing, 400),
    ("leaf-huge", "/v1/log/entries/" + "9" * 40, nothing, None),
    ("leaves-no-start", "/v1/log/entries", nothing, 400),
    ("leaves-start-beyond", "/v1/log/entries?start=99", nothing, 400),
    ("leaves-empty-range", "/v1/log/entries?start=2&end=2", nothing, 400),
    ("leaves-end-zero", "/v1/log/entries?start=0&end=0", nothing, 400),
    ("leaves-start-text", "/v1/log/entries?start=zero", nothing, 400),
    ("lineage-bad-id", "/v1/credentials/xyz/lineage", as_role("auditor"), 400),
    ("lineage-unknown", f"/v1/credentials/{HEX0}/lineage", as_role("auditor"), 404),
    ("lineage-anonymous", "/v1/credentials/{child}/lineage", nothing, 401),
    ("export-format", "/v1/export?format=xml", as_role("auditor"), 400),
    ("export-since-negative", "/v1/export?since=-1", as_role("auditor"), 400),
    ("export-until-text", "/v1/export?until=later", as_role("auditor"), 400),
    ("export-anonymous", "/v1/export", nothing, 401),
    ("unknown-path", "/v1/nothing-here", nothing, 404),
]

CASES = [
    *[
        Case(f"token-{n}", "GET" if n == "get" else "POST", TOKEN, b, s, e)
        for n, b, s, e in TOKEN_CASES
    ],
    *[Case(f"introspect-{n}", "POST", INTROSPECT, b, s, e) for n, b, s, e in INTROSPECT_CASES],
    *[Case(f"revoke-{n}", "POST", REVOKE, b, s, e) for n, b, s, e in REVOKE_CASES],
    *[Case(f"append-{n}", "POST", ENTRIES, b, s, e) for n, b, s, e in APPEND_CASES],
    *[Case(f"access-{n}", "POST", ACCESS, b, s, e) for n, b, s, e in ACCESS_CASES],
    *[
        Case(f"inclusion-{n}", "GET", f"/v1/log/proof/inclusion?{q}", nothing, 400, BAD)
        for n, q in INCLUSION_QUERIES.items()
    ],
    *[
        Case(f"consistency-{n}", "GET", f"/v1/log/proof/consistency?{q}", nothing, 400, BAD)
        for n, q in CONSISTENCY_QUERIES.items()
    ],
    *[Case(n, "GET", path, b, s) for n, path, b, s in GET_CASES],
    Case("wrong-method", "DELETE", "/v1/log/checkpoint", nothing, 405, "method_not_allowed"),
]


def check_error_shape(path: str, r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    if path.startswith("/oauth/"):
        assert set(body) == {"error", "error_description"}, body  # RFC 6749 §5.2
        assert r.headers["content-type"].startswith("application/json")
    else:
        assert set(body) == {"type", "title", "status", "detail", "error"}, body  # RFC 9457 §3
        assert body["status"] == r.status_code
        assert r.headers["content-type"].startswith("application/problem+json")
    assert isinstance(body["error"], str) and body["error"]
    return body


def test_case_names_are_unique() -> None:
    assert len({c.name for c in CASES}) == len(CASES) > 100


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_a_4xx_json_error_and_writes_nothing(ctx: Ctx, case: Case) -> None:
    before = ctx.srv.size()
    path = ctx.fmt(case.path)
    r = httpx.request(case.method, ctx.srv.url(path), timeout=30, **case.build(ctx))
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if case.status is not None:
        assert r.status_code == case.status, r.text[:300]
    body = check_error_shape(path, r)
    if case.error is not None:
        assert body["error"] == case.error, body
    assert ctx.srv.size() == before


@pytest.mark.parametrize("path", ["/v1/access", TOKEN])
def test_chunked_oversized_body_is_refused(ctx: Ctx, path: str) -> None:
    before = ctx.srv.size()
    headers = {"content-type": "application/json" if path == "/v1/access" else FORM}
    r = httpx.post(ctx.srv.url(path), content=chunked(MIB + 1), headers=headers, timeout=30)
    assert 400 <= r.status_code < 500, r.text
    check_error_shape(path, r)
    assert ctx.srv.size() == before


def test_nothing_was_written(ctx: Ctx) -> None:
    """Every case above left the tree as the fixture made it; the checkpoint agrees."""
    assert ctx.srv.size() == ctx.size
    assert checkpoint_at_least(ctx.srv, ctx.size).checkpoint.size == ctx.size


# -- bugs: each passes once the service is fixed ----------------------------------------------


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Server]:
    with running(tmp_path) as srv:
        yield srv


def test_chunked_oversized_entry_is_a_413(fresh: Server) -> None:
    r = httpx.post(fresh.url(ENTRIES), content=chunked(MIB + 1), timeout=30)
    assert r.status_code == 413, r.text[:300]
    check_error_shape(ENTRIES, r)


def test_non_ascii_principal_name_is_a_401(fresh: Server) -> None:
    path = "/v1/export"
    proof = make_proof(fresh.alice.seed, "GET", fresh.url(path), access_token="x")
    headers = [("Authorization", "DPoP ali\xe9".encode("latin-1")), ("DPoP", proof.encode())]
    r = httpx.get(fresh.url(path), headers=headers)
    assert r.status_code == 401, r.text[:300]
    check_error_shape(path, r)


def test_dpop_proof_with_a_huge_iat_is_refused(fresh: Server) -> None:
    """At the token endpoint a bad proof is an RFC 6749 §5.2 error: 400 (RFC 9449 §5)."""
    grant = fresh.grant()
    data = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token_type": SIGNED_ENTRY,
        "subject_token": b64u(grant.raw),
    }
    proof = make_proof(fresh.agent.seed, "POST", fresh.url(TOKEN), iat=10**400)
    r = httpx.post(fresh.url(TOKEN), data=data, headers={"DPoP": proof})
    assert r.status_code == 400, r.text[:300]
    assert check_error_shape(TOKEN, r)["error"] == "invalid_dpop_proof"
    assert fresh.size() == 2


@pytest.mark.parametrize("junk", ["!", " ", "*"])
def test_subject_token_outside_base64url_is_refused(fresh: Server, junk: str) -> None:
    grant = fresh.grant()
    token = b64u(grant.raw)
    token = token[:10] + junk + token[10:]
    data = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token_type": SIGNED_ENTRY,
        "subject_token": token,
    }
    r = httpx.post(fresh.url(TOKEN), data=data, headers=fresh.dpop(fresh.agent, "POST", TOKEN))
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"] == "invalid_request"
    assert fresh.size() == 2


def test_a_405_names_the_allowed_methods(tmp_path):
    """Regression (the faults issue): 405 answers carried no Allow header."""
    import httpx

    from tests.api_server import running

    with running(tmp_path) as srv:
        r = httpx.delete(srv.url("/healthz"))
        assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
        assert r.headers["Allow"] == "GET"
        r = httpx.put(srv.url("/v1/access"), json={})
        assert r.status_code == 405 and "POST" in r.headers["Allow"]
