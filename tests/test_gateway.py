"""The gateway against a real upstream on 127.0.0.1 that accepts only the real secret.

Allowed requests reach the upstream with the secret and without the agent's credential;
denied, tampered and path-trick requests never reach it; the secret is in no answer the
agent sees, no log line, no metric, and not in the ledger file's bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from lineage.api.gateway.decider import RemoteDecider
from lineage.client import Agent, LineageClient
from lineage.client.dpop import make_proof
from lineage.client.gateway import (
    INVOCATION_HEADER,
    NotBehindGateway,
    canonical_segments,
    decode_invocation,
    encode_invocation,
    gateway_session,
)
from lineage.ledger.errors import StorageError
from lineage.verifier.invocation import sign_invocation

from .api_server import MAIL, free_port, running, wait_until_serving
from .gateway_harness import MAIL_SECRET, Upstream, gateway, mail_config

SCOPE = [
    {
        "type": "email",
        "actions": ["read"],
        "locations": [MAIL],
        "resources": [f"{MAIL}/v1/messages/*"],
    },
    {
        "type": "email",
        "actions": ["send"],
        "locations": [MAIL],
        "resources": [f"{MAIL}/v1/send"],
        "constraints": {"to": {"in": ["bob@corp.example"]}},
    },
]


class World:
    def __init__(self, srv, api: Upstream, upstream: str, gw, base: str, agent, handle):
        self.srv, self.api, self.upstream, self.gw, self.base = srv, api, upstream, gw, base
        self.agent, self.handle = agent, handle

    def session(self, agent: Agent | None = None, handle: str | None = None) -> httpx.Client:
        return gateway_session(self.base, agent or self.agent, handle or self.handle, timeout=10)

    def reached(self) -> list[str]:
        return [s.raw_path for s in self.api.seen]


@contextmanager
def stack(
    tmp_path: Path,
    scope: list[dict[str, Any]] = SCOPE,
    *,
    decider: Any = None,
    upstream: str | None = None,
    mangle: Any = None,
    **over: Any,
) -> Iterator[World]:
    """A service, an upstream (or ``upstream``: another URL), a gateway before it (``over``:
    the upstream's settings), and an agent holding a credential for ``scope``.
    ``mangle(srv)`` runs before the gateway starts."""
    with running(tmp_path) as srv, Upstream.serving(slow=3.0) as (api, served):
        if mangle is not None:
            mangle(srv)
        cfg = mail_config(srv, upstream or served, **over)
        client = LineageClient(srv.base, log_key=srv.log.log_key.vkey)
        agent = Agent.ephemeral()
        handle = client.grant(srv.alice, "alice@corp", agent, task="mail", scope=scope)
        client.close()
        if decider is not None:
            decider = decider(srv)
        with gateway(srv, cfg, decider) as (gw, base):
            yield World(srv, api, served, gw, base, agent, handle)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    with stack(tmp_path) as w:
        yield w


def signed_headers(w: World, method: str, url: str, request: dict[str, Any], **over) -> dict:
    """Headers for one request made by hand (what the transport does), with overrides."""
    inv = sign_invocation(w.agent.key, w.handle, request, int(w.srv.clock()))
    headers = {
        "Authorization": f"DPoP {w.handle}",
        "DPoP": make_proof(w.agent.key.seed, method, url.split("?")[0], access_token=w.handle),
        INVOCATION_HEADER: encode_invocation(inv),
    }
    headers.update(over)
    return headers


def read_request(path: str = "/v1/messages/17", method: str = "GET", **attrs) -> dict:
    return {
        "type": "email",
        "action": "read",
        "location": MAIL,
        "resource": MAIL + path,
        "attributes": {
            "http.method": method,
            "http.query": "",
            "http.body": "sha-256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            **attrs,
        },
    }


def test_an_allowed_request_reaches_the_upstream_with_the_secret_and_not_the_credential(world):
    with world.session() as s:
        r = s.get(f"{MAIL}/v1/messages/17")
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/v1/messages/17"
    assert r.headers["lineage-access"]
    [seen] = world.api.seen
    assert seen.header("x-api-key") == [MAIL_SECRET]
    for name in ("authorization", "dpop", "lineage-invocation"):
        assert seen.header(name) == []
    assert world.handle not in json.dumps(seen.headers)


def test_the_agent_may_call_the_gateway_url_itself(world):
    with world.session() as s:
        r = s.get(f"{world.base}/mail/v1/messages/18")
    assert r.status_code == 200, r.text
    assert world.reached() == ["/v1/messages/18"]


def test_a_denied_request_is_403_with_the_reason_and_never_reaches_the_upstream(world):
    with world.session() as s:
        r = s.delete(f"{MAIL}/v1/messages/17")
        assert r.status_code == 403
        body = r.json()
        assert body["error"] == "access_denied"
        assert "action" in body["error_description"]
        assert body["receipt"]["index"] == body["index"]
        r = s.post(f"{MAIL}/v1/send", json={"to": "eve@evil.example", "text": "hi"})
        assert r.status_code == 403
        assert "attributes.to" in r.json()["error_description"]
    assert world.api.seen == []


def test_a_send_within_the_constraint_is_forwarded_with_its_body_exactly(world):
    with world.session() as s:
        r = s.post(f"{MAIL}/v1/send", json={"to": "bob@corp.example", "text": "hi"})
    assert r.status_code == 200, r.text
    [seen] = world.api.seen
    assert json.loads(seen.body) == {"to": "bob@corp.example", "text": "hi"}


@pytest.mark.parametrize(
    "path",
    [
        "/mail/v1/messages/../../admin",
        "/mail/v1/messages/%2e%2e/admin",
        "/mail/v1/messages/a%2Fb",
        "/mail/v1/messages/%252e%252e",
        "/mail/v1/messages/..;/admin",
        "/mail/v1/messages//17",
        "/mail/v1/messages/17/",
        "/mail/v1/messages/a%5Cb",
        "/mail/v1/messages/%00",
        "/mail/v1/messages/%C0%AE",
    ],
)
def test_a_path_trick_is_refused_before_anything_is_decided_or_forwarded(world, path):
    size = world.srv.size()
    url = world.base + path
    # Signed for exactly this raw path, as an attacker holding the key could.
    headers = signed_headers(world, "GET", url, read_request("/v1/messages/x"))
    r = httpx.get(url, headers=headers, timeout=10)
    assert r.status_code in (400, 401), r.text
    assert world.api.seen == []
    assert world.srv.size() == size  # nothing logged


def test_escaped_unreserved_characters_are_decided_and_forwarded_in_one_spelling(world):
    raw = "/mail/v1/messages/%7euser%2dx"
    url = world.base + raw
    headers = signed_headers(world, "GET", url, read_request("/v1/messages/~user-x"))
    r = httpx.get(url, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert world.reached() == ["/v1/messages/~user-x"]


def test_a_body_changed_after_signing_never_reaches_the_upstream(world):
    url = world.base + "/mail/v1/send"
    signed = json.dumps({"to": "bob@corp.example", "text": "hi"}).encode()
    req = {
        "type": "email",
        "action": "send",
        "location": MAIL,
        "resource": MAIL + "/v1/send",
        "attributes": {
            "to": "bob@corp.example",
            "http.method": "POST",
            "http.query": "",
            "http.body": "sha-256:" + hashlib.sha256(signed).hexdigest(),
        },
    }
    headers = signed_headers(world, "POST", url, req, **{"Content-Type": "application/json"})
    tampered = json.dumps({"to": "bob@corp.example", "text": "wire me money"}).encode()
    r = httpx.post(url, content=tampered, headers=headers, timeout=10)
    assert r.status_code == 401
    assert "http.body" in r.json()["error_description"]
    assert r.headers["www-authenticate"].startswith("DPoP ")
    assert world.api.seen == []


def test_another_method_or_path_than_the_one_signed_never_reaches_the_upstream(world):
    url = world.base + "/mail/v1/messages/17"
    headers = signed_headers(world, "GET", url, read_request())
    r = httpx.get(world.base + "/mail/v1/messages/18", headers=headers, timeout=10)
    assert r.status_code == 401  # the DPoP proof names another URL
    headers = signed_headers(world, "GET", url, read_request())
    headers["DPoP"] = make_proof(world.agent.key.seed, "DELETE", url, access_token=world.handle)
    r = httpx.delete(url, headers=headers, timeout=10)
    assert r.status_code == 401
    assert "request." in r.json()["error_description"]
    assert world.api.seen == []


def test_no_credential_is_401_with_a_dpop_challenge(world):
    r = httpx.get(world.base + "/mail/v1/messages/17", timeout=10)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("DPoP")
    r = httpx.get(
        world.base + "/mail/v1/messages/17",
        headers={"Authorization": f"Bearer {MAIL_SECRET}"},
        timeout=10,
    )
    assert r.status_code == 401
    assert world.api.seen == []


def test_a_replayed_request_is_refused(world):
    url = world.base + "/mail/v1/messages/17"
    headers = signed_headers(world, "GET", url, read_request())
    assert httpx.get(url, headers=headers, timeout=10).status_code == 200
    again = httpx.get(url, headers=headers, timeout=10)
    assert again.status_code == 401
    assert len(world.api.seen) == 1


def test_an_unknown_upstream_is_404_and_the_transport_sends_nothing_outside(world):
    r = httpx.get(world.base + "/nope/x", timeout=10)
    assert r.status_code == 404
    with world.session() as s, pytest.raises(NotBehindGateway):
        s.get("https://elsewhere.example/x")  # never sent anywhere, signed or not


def test_the_description_publishes_routes_and_no_secret_or_upstream_url(world):
    r = httpx.get(world.base + "/.well-known/lineage-gateway", timeout=10)
    assert r.status_code == 200
    text = r.text
    assert MAIL_SECRET not in text and world.upstream not in text
    assert r.json()["routes"][0]["name"] == "mail"


def test_upstream_failures_are_502_and_504_and_the_gateway_stays_up(world, tmp_path):
    with world.session() as s:
        r = s.get(f"{MAIL}/v1/messages/fail")
        assert r.status_code == 500  # the upstream's own answer, passed on
        r = s.get(f"{MAIL}/v1/messages/slow")
        assert r.status_code == 504
        assert r.json()["error"] == "upstream_timeout"
        r = s.get(f"{MAIL}/v1/messages/17")
        assert r.status_code == 200


def test_a_refused_connection_is_502(tmp_path, monkeypatch):
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    dead = f"http://127.0.0.1:{free_port()}"
    with stack(tmp_path, upstream=dead) as w, w.session() as s:
        r = s.get(f"{MAIL}/v1/messages/17")
    assert r.status_code == 502
    assert r.json()["error"] == "upstream_unreachable"


def test_the_secret_appears_in_no_answer_log_metric_or_ledger_byte(world, caplog):
    caplog.set_level(logging.DEBUG)
    with world.session() as s:
        answers = [
            s.get(f"{MAIL}/v1/messages/17"),
            s.get(f"{MAIL}/v1/messages/echo"),
            s.delete(f"{MAIL}/v1/messages/17"),
            s.get(f"{MAIL}/v1/messages/fail"),
            s.post(f"{MAIL}/v1/send", json={"to": "eve@evil.example"}),
        ]
    answers.append(httpx.get(world.base + "/metrics", timeout=10))
    answers.append(httpx.get(world.base + "/.well-known/lineage-gateway", timeout=10))
    for r in answers:
        assert MAIL_SECRET not in r.text
        assert MAIL_SECRET not in json.dumps(dict(r.headers))
    assert MAIL_SECRET not in caplog.text
    world.srv.log.checkpoint()
    for path in Path(world.srv.log.store.path).parent.iterdir():
        if path.is_file():
            assert MAIL_SECRET.encode() not in path.read_bytes(), path


def test_canonical_segments_refuses_what_it_cannot_spell_once():
    assert canonical_segments("/a/%7e/b%2d") == ("a", "~", "b-")
    assert canonical_segments("/a/b%3b") == ("a", "b%3B")
    for bad in ("/a/..", "/a/./b", "//a", "/a/", "/%2F", "/%252e", "/a b", "/caf\u00e9"):
        with pytest.raises(ValueError):
            canonical_segments(bad)


def test_the_invocation_header_round_trips():
    from lineage.verifier.keys import SigningKey

    key = SigningKey.generate()
    inv = sign_invocation(key, "ab" * 32, read_request(), 1767225660)
    assert decode_invocation(encode_invocation(inv)).to_bytes() == inv.to_bytes()
    with pytest.raises(ValueError):
        decode_invocation("not base64!")
    with pytest.raises(ValueError):
        decode_invocation(base64.urlsafe_b64encode(b"{}").decode().rstrip("="))


def _big(n: int) -> bytes:
    return bytes(range(256)) * (n // 256)


def test_a_streamed_body_changed_after_signing_never_arrives_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    scope = [
        {
            "type": "email",
            "actions": ["upload"],
            "locations": [MAIL],
            "resources": [f"{MAIL}/v1/blobs/*"],
        }
    ]
    body = _big(3 << 20)  # more than is read before deciding: it streams
    with stack(tmp_path, scope, actions={"PUT": "upload"}, fields={}) as w:
        with w.session() as s:
            r = s.put(f"{MAIL}/v1/blobs/a", content=body)
        assert r.status_code == 200, r.text
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        # Signed for one body, sent with another of the same length.
        url = w.base + "/mail/v1/blobs/b"
        req = {
            "type": "email",
            "action": "upload",
            "location": MAIL,
            "resource": f"{MAIL}/v1/blobs/b",
            "attributes": {
                "http.method": "PUT",
                "http.query": "",
                "http.body": "sha-256:" + hashlib.sha256(body).hexdigest(),
            },
        }
        headers = signed_headers(w, "PUT", url, req)
        r = httpx.put(url, content=body[:-1] + b"X", headers=headers, timeout=30)
        assert r.status_code == 401
        assert "http.body" in r.json()["error_description"]
        assert w.reached() == ["/v1/blobs/a"]  # b never arrived whole


@pytest.mark.parametrize(
    ("attach", "check"),
    [
        ("bearer", lambda seen: seen.header("authorization") == [f"Bearer {MAIL_SECRET}"]),
        ("query:key", lambda seen: seen.query.endswith(f"key={MAIL_SECRET}")),
        ("basic:svc", lambda seen: seen.header("authorization")[0].startswith("Basic ")),
        ("header:X-Api-Key", lambda seen: seen.header("x-api-key") == [MAIL_SECRET]),
    ],
)
def test_each_way_of_attaching_the_secret_reaches_the_upstream_and_is_masked_if_echoed(
    tmp_path, monkeypatch, caplog, attach, check
):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    with stack(tmp_path, attach=attach) as w, w.session() as s:
        r = s.get(f"{MAIL}/v1/messages/echo", params={"folder": "inbox"})
    seen = w.api.seen[-1]
    assert check(seen)
    assert seen.query.startswith("folder=inbox")
    assert MAIL_SECRET not in r.text and MAIL_SECRET not in json.dumps(dict(r.headers))
    assert MAIL_SECRET not in caplog.text


def test_an_agent_may_not_set_the_query_parameter_that_carries_the_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    with stack(tmp_path, attach="query:key") as w, w.session() as s:
        r = s.get(f"{MAIL}/v1/messages/1", params={"key": "mine"})
    assert r.status_code == 400
    assert w.api.seen == []


def test_no_decision_point_means_nothing_is_forwarded(tmp_path, monkeypatch):
    """Fail closed: the service is gone, so no access entry can be made durable."""
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)

    def dead(srv):
        return RemoteDecider(f"http://127.0.0.1:{free_port()}", srv.enforcement)

    with stack(tmp_path, decider=dead) as w, w.session() as s:
        r = s.get(f"{MAIL}/v1/messages/17")
    assert r.status_code == 503
    assert r.json()["error"] == "temporarily_unavailable"
    assert w.api.seen == []


def test_an_unwritable_log_means_nothing_is_forwarded(tmp_path, monkeypatch):
    """Fail closed: the ledger cannot append (its writer refuses), so the gateway forwards
    nothing and says so; the upstream never sees the request."""
    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)

    def full(*a, **k):
        raise StorageError("database or disk is full")

    with stack(tmp_path) as w:
        monkeypatch.setattr(w.srv.log, "build", full)
        with w.session() as s:
            r = s.get(f"{MAIL}/v1/messages/17")
        assert r.status_code == 503
    assert w.api.seen == []


def test_the_async_transport_signs_like_the_sync_one(world):
    import asyncio

    from lineage.client.gateway import async_gateway_session

    async def go() -> list[int]:
        async with async_gateway_session(world.base, world.agent, world.handle) as s:
            rs = await asyncio.gather(*(s.get(f"{MAIL}/v1/messages/{i}") for i in range(5)))
        return [r.status_code for r in rs]

    assert asyncio.run(go()) == [200] * 5
    assert sorted(world.reached()) == [f"/v1/messages/{i}" for i in range(5)]


def test_lineage_serve_mounts_the_gateway_and_decides_in_process(tmp_path, monkeypatch):
    """`lineage serve` with a [gateway] mount: one process, one command, the same contract.
    The access entry names the gateway's configured name."""
    import subprocess
    import sys

    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    with Upstream.serving() as (api, upstream):
        port = free_port()
        (tmp_path / "lineage.toml").write_text(
            f"""
[gateway]
name = "gateway-1"
mount = "/gateway"

[gateway.upstreams.mail]
url = "{upstream}"
type = "email"
location = "{MAIL}"
actions = {{GET = "read", POST = "send"}}
fields = {{to = "body"}}
secret = {{from = "env", name = "LINEAGE_TEST_MAIL_KEY"}}
attach = "header:X-Api-Key"
"""
        )
        exe = Path(sys.executable).parent / "lineage"
        proc = subprocess.Popen(
            [str(exe), "serve", "--port", str(port), "--db", "lineage.db", "--keys", "keys"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_serving(base, proc)
            from lineage.verifier.keys import load_key_file

            log_key = httpx.get(base + "/v1/log/key", timeout=10).text.strip()
            alice = Agent.ephemeral()
            subprocess.run(
                [
                    str(exe),
                    "principal",
                    "add",
                    "alice@corp",
                    "--public-key",
                    alice.key.public.b64,
                    "--db",
                    "lineage.db",
                    "--keys",
                    "keys",
                ],
                cwd=tmp_path,
                check=True,
                capture_output=True,
            )
            client = LineageClient(base, log_key=log_key)
            agent = Agent.ephemeral()
            handle = client.grant(alice.key, "alice@corp", agent, task="mail", scope=SCOPE)
            with gateway_session(base + "/gateway", agent, handle, timeout=10) as s:
                ok = s.get(f"{MAIL}/v1/messages/17")
                denied = s.post(f"{MAIL}/v1/send", json={"to": "eve@evil.example"})
            assert ok.status_code == 200, ok.text
            assert denied.status_code == 403
            assert [s.raw_path for s in api.seen] == ["/v1/messages/17"]
            assert load_key_file  # the CLI wrote owner-only keys (checked elsewhere)
        finally:
            proc.terminate()
            out = proc.communicate(timeout=30)[0].decode()
    assert MAIL_SECRET not in out
    assert MAIL_SECRET.encode() not in (tmp_path / "lineage.db").read_bytes()


def test_the_readme_gateway_example_runs(tmp_path, monkeypatch):
    """The README's agent lines, as written but for the gateway's address."""
    import re

    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## The gateway") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = [
        {
            "type": "email",
            "actions": ["read"],
            "locations": [MAIL],
            "resources": [f"{MAIL}/v3/messages/*"],
        },
        {
            "type": "email",
            "actions": ["send"],
            "locations": [MAIL],
            "resources": [f"{MAIL}/v3/send"],
            "constraints": {"to": {"eq": "bob@corp.example"}},
        },
    ]
    with stack(tmp_path, scope) as w:
        code = code.replace("http://127.0.0.1:8000/gateway", w.base)
        exec(compile(code, "README", "exec"), {"agent": w.agent, "credential": w.handle})
        assert w.reached() == ["/v3/messages/17", "/v3/send"]


def _results(srv) -> dict[str, Any]:
    """access id -> its result entry's body, as the log holds them."""
    out = {}
    for i in range(srv.log.size):
        body = srv.log.leaf(i).entry.obj
        if body["kind"] == "result":
            out[body["access"]] = body
    return out


def test_every_forwarded_request_gets_a_result_entry_with_the_upstream_status(world):
    with world.session() as s:
        ok = s.get(f"{MAIL}/v1/messages/17")
        broken = s.get(f"{MAIL}/v1/messages/fail")
        slow = s.get(f"{MAIL}/v1/messages/slow")
        denied = s.delete(f"{MAIL}/v1/messages/17")
    assert (ok.status_code, broken.status_code, slow.status_code) == (200, 500, 504)
    deadline = time.monotonic() + 10
    while len(_results(world.srv)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # results are written in batches, a moment after the answer
    results = _results(world.srv)
    assert results[ok.headers["lineage-access"]]["upstream_status"] == 200
    assert results[broken.headers["lineage-access"]]["upstream_status"] == 500
    assert [r.get("failure") for r in results.values()].count("timeout") == 1
    assert denied.json()["id"] not in results  # a deny has no result
    assert all(r["enforcement"] == "enforcement-1" for r in results.values())


def test_results_of_many_requests_share_group_commits(world):
    """POST /v1/results: a batch is judged item by item and written together."""
    from lineage.client import LineageClient

    with world.session() as s:
        accesses = [s.get(f"{MAIL}/v1/messages/{i}").headers["lineage-access"] for i in range(3)]
    ep = LineageClient(
        world.srv.base, token=world.srv.enforcement, log_key=world.srv.log.log_key.vkey
    )
    time.sleep(0.5)  # the gateway's own results are in
    answers = ep.results(
        [
            {"access": accesses[0], "upstream_status": 200},  # the same answer: the same entry
            {"access": accesses[1], "upstream_status": 201},  # another: refused
            {"access": "ab" * 32, "failure": "timeout"},  # no such access
        ]
    )
    assert answers[0]["id"] == _id_of_result(world.srv, accesses[0])
    assert answers[1]["error"] == "conflict"
    assert answers[2]["error"] == "not_found"


def _id_of_result(srv, access: str) -> str:
    for i in range(srv.log.size):
        e = srv.log.leaf(i).entry
        if e.obj["kind"] == "result" and e.obj["access"] == access:
            return e.id
    raise AssertionError("no result")


def test_lineage_gateway_runs_as_its_own_process(tmp_path, monkeypatch):
    """`lineage gateway --config`: a process of its own, asking `lineage serve` with an
    enforcement token read from the environment; the log names the token's name."""
    import subprocess
    import sys

    exe = str(Path(sys.executable).parent / "lineage")
    env = {**__import__("os").environ, "LINEAGE_TEST_MAIL_KEY": MAIL_SECRET}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [exe, *args], cwd=tmp_path, env=env, check=True, capture_output=True, text=True
        )
        return done.stdout.strip()

    alice = Agent.ephemeral()
    cli("init", "--origin", "gw-process.example/log")
    cli("principal", "add", "alice@corp", "--public-key", alice.key.public.b64)
    env["LINEAGE_GATEWAY_TOKEN"] = cli("token", "create", "--role", "enforcement", "--name", "gw-9")
    auditor = cli("token", "create", "--role", "auditor", "--name", "audit-1")
    sport, gport = free_port(), free_port()
    service = f"http://127.0.0.1:{sport}"
    procs = []
    with Upstream.serving() as (api, upstream):
        (tmp_path / "gateway.toml").write_text(
            f"""
[gateway]
service = "{service}"
token = {{from = "env", name = "LINEAGE_GATEWAY_TOKEN"}}
port = {gport}

[gateway.upstreams.mail]
url = "{upstream}"
type = "email"
location = "{MAIL}"
actions = {{GET = "read"}}
secret = {{from = "env", name = "LINEAGE_TEST_MAIL_KEY"}}
attach = "header:X-Api-Key"
"""
        )
        try:
            for args, url in (
                (["serve", "--port", str(sport)], service),
                (["gateway", "--config", "gateway.toml"], f"http://127.0.0.1:{gport}"),
            ):
                procs.append(
                    subprocess.Popen(
                        [exe, *args],
                        cwd=tmp_path,
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                    )
                )
                wait_until_serving(url, procs[-1])
            client = LineageClient(service, log_key=httpx.get(service + "/v1/log/key").text)
            agent = Agent.ephemeral()
            handle = client.grant(alice.key, "alice@corp", agent, task="mail", scope=SCOPE)
            base = f"http://127.0.0.1:{gport}"
            with gateway_session(base, agent, handle, timeout=10) as s:
                ok = s.get(f"{MAIL}/v1/messages/17")
            assert ok.status_code == 200, ok.text
            access = httpx.get(
                f"{service}/v1/entries/{ok.headers['lineage-access']}",
                headers={"Authorization": f"Bearer {auditor}"},
                timeout=10,
            )
            assert [s.raw_path for s in api.seen] == ["/v1/messages/17"]
        finally:
            outputs = []
            for p in procs:
                p.terminate()
                outputs.append(p.communicate(timeout=30)[0].decode())
    assert access.status_code == 200, access.text
    body = access.json()
    body = body.get("entry", body)
    assert body["kind"] == "access" and body["enforcement"] == "gw-9"
    assert body["context"]["upstream"] == "mail"
    for out in outputs:
        assert MAIL_SECRET not in out and env["LINEAGE_GATEWAY_TOKEN"] not in out


def test_asserted_fields_are_the_gateways_word_under_the_policy(tmp_path, monkeypatch):
    """`asserts`: the gateway states what it read from the request in the access entry's
    context.attributes, and the policy's enforcement_points section bounds what it may
    assert (POLICY.md): allowed to assert `to`, the request is decided; allowed only
    `sender`, denied."""
    from lineage.verifier.entry import sign_entry

    monkeypatch.setenv("LINEAGE_TEST_MAIL_KEY", MAIL_SECRET)

    def policy(may: list[str]):
        def set_it(srv):
            doc = {"rules": [], "enforcement_points": {"enforcement-1": {"may_assert": may}}}
            version = srv.log.state().policy_version + 1
            body = {
                "kind": "policy",
                "v": 1,
                "log": srv.log.origin,
                "version": version,
                "document": doc,
            }
            srv.log.append(sign_entry(body, [srv.log.keys.operator]))

        return set_it

    for may, status in ((["to"], 200), (["sender"], 403)):
        with stack(tmp_path / str(status), mangle=policy(may), asserts=["to"]) as w:
            with w.session() as s:
                r = s.post(f"{MAIL}/v1/send", json={"to": "bob@corp.example"})
            assert r.status_code == status, r.text
            access_id = r.headers.get("lineage-access") or r.json()["id"]
            access = w.srv.log.leaf(w.srv.log.state().index_of(access_id)).entry.obj
            assert access["context"]["attributes"] == {"to": "bob@corp.example"}
