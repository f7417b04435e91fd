"""Black-box attacks on step-up (POLICY.md "Approval", FORMAT.md §5.1 and §8 step 6,
CONSENT.md §7, API.md, GATEWAY.md §4/§5/§8), written from the documents alone.

Every test names what it guards and asserts the secure outcome: a test that fails is an
attack that worked. A real service runs (uvicorn on 127.0.0.1, ``tests/api_server.py``);
the person's page is answered the way its script does (prepare, sign the bytes, answer),
and forged approvals are signed by hand from FORMAT.md §5.1's rules.
"""

from __future__ import annotations

import base64
import hashlib
import html
import itertools
import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from lineage.client import Agent
from lineage.client.dpop import make_proof
from lineage.client.gateway import INVOCATION_HEADER, GatewayTransport
from lineage.ledger.export import credential_bundle
from lineage.ledger.issuance import binding_body
from lineage.ledger.tokens import TokenStore
from lineage.verifier.bodies import grant_body, revocation_body
from lineage.verifier.bundle import verify_bundle
from lineage.verifier.checkpoint import Checkpoint, sign_checkpoint
from lineage.verifier.entry import sign_entry
from lineage.verifier.errors import FormatError
from lineage.verifier.invocation import sign_invocation
from lineage.verifier.jcs import canonical
from lineage.verifier.keys import SigningKey
from lineage.verifier.merkle import MemoryTree, inclusion_proof, leaf_hash, tree_root

from .api_server import MAIL, ORIGIN, Server, key, running

APPROVAL_CONTEXT = b"lineage.approval.v1\x00"
TTL = 300
POLICY = {
    "rules": [
        {
            "id": "deletes-need-the-owner",
            "match": {"actions": ["delete"]},
            "require_approval": True,
            "approval_ttl": TTL,
        }
    ]
}
_n = itertools.count()


# --- helpers: what a client, the page's script and a forger do ------------------------------


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical(obj)).hexdigest()


def scope(owner: str = "alice") -> list[dict[str, Any]]:
    return [
        {
            "type": "email",
            "actions": ["delete", "read"],
            "locations": [MAIL],
            "resources": [f"mailbox:{owner}/*"],
        }
    ]


def req(msg: str | None = None, owner: str = "alice", action: str = "delete", **attrs) -> dict:
    out: dict[str, Any] = {
        "type": "email",
        "action": action,
        "location": MAIL,
        "resource": f"mailbox:{owner}/inbox/{msg or f'm{next(_n)}'}",
    }
    if attrs:
        out["attributes"] = attrs
    return out


def sign_approval(signer: SigningKey, body: dict[str, Any]) -> dict[str, Any]:
    """FORMAT.md §5.1: Ed25519 over "lineage.approval.v1" 0x00 || JCS(approval without sigs).
    (A value outside the canonical subset, a float or a huge integer, is signed over sorted
    compact JSON: a forger signs whatever it likes.)"""
    try:
        message = canonical(body)
    except Exception:
        message = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    sig = signer.sign(b"", APPROVAL_CONTEXT + message)
    return {**body, "sigs": [{"kid": signer.kid, "sig": b64u(sig)}]}


def sane(r: httpx.Response) -> httpx.Response:
    """Never a server error, never a traceback, whatever was sent."""
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert "Traceback" not in r.text and 'File "' not in r.text, r.text[:500]
    return r


@dataclass
class Held:
    inv: Any  # SignedInvocation
    context: dict[str, Any]
    approval: dict[str, Any]  # the 202's "approval"
    handle: str
    holder: SigningKey

    @property
    def url(self) -> str:
        return self.approval["url"]

    @property
    def id(self) -> str:
        return self.approval["id"]


@dataclass
class World:
    srv: Server
    bob: SigningKey  # bound to bob@corp: another principal
    alice_old: SigningKey  # bound to alice@corp, then retired
    ep2: str  # a second enforcement point's token

    # -- credentials ------------------------------------------------------------------------

    def grant(
        self,
        holder: SigningKey | None = None,
        principal: str = "alice@corp",
        signer: SigningKey | None = None,
        owner: str = "alice",
        agent: str | None = None,
        description: str = "Triage the inbox",
        ttl: int = 3000,
        **limits: Any,
    ) -> tuple[SigningKey, str]:
        holder = holder or SigningKey.generate()
        extra = {"agent": agent} if agent is not None else {}
        body = grant_body(
            ORIGIN,
            principal,
            holder.public,
            task={"id": "inbox-triage", "description": f"{description} ({next(_n)})"},
            scope=scope(owner),
            expires_at=self.srv.now + ttl,
            max_depth=1,
            **extra,
            **limits,
        )
        return holder, self.srv.log.append(sign_entry(body, [signer or self.srv.alice])).id

    # -- the enforcement point ----------------------------------------------------------------

    def ask(self, inv, context: dict | None = None, token: str | None = None) -> httpx.Response:
        body = {"invocation": dict(inv.obj), "context": dict(context or {})}
        return sane(
            httpx.post(
                self.srv.url("/v1/access"),
                json=body,
                headers=self.srv.bearer(token or self.srv.enforcement),
                timeout=10,
            )
        )

    def hold(
        self,
        holder: SigningKey | None = None,
        handle: str | None = None,
        request: dict | None = None,
        context: dict | None = None,
        nonce: str | None = None,
    ) -> Held:
        if handle is None:
            holder, handle = self.grant(holder)
        inv = sign_invocation(holder, handle, request or req(), self.srv.now, nonce=nonce)
        ctx = dict(context or {"source_ip": "192.0.2.10"})
        r = self.ask(inv, ctx)
        assert r.status_code == 202, r.text
        assert r.json()["decision"] == "pending"
        return Held(inv, ctx, r.json()["approval"], handle, holder)

    def status(self, held: Held) -> str:
        return sane(httpx.get(held.approval["poll"], timeout=10)).json()["status"]

    # -- the person's page ----------------------------------------------------------------

    def csrf(self, held: Held) -> str:
        page = sane(httpx.get(held.url, timeout=10))
        assert page.status_code == 200, page.text
        return html.unescape(re.search(r'data-csrf="([^"]+)"', page.text).group(1))

    def body(self, held: Held, decision: str = "approve", **over: Any) -> dict[str, Any]:
        """An approval of ``held`` as FORMAT.md §5.1 defines it, before signing."""
        now = self.srv.now
        out = {
            "log": ORIGIN,
            "invocation": digest(held.inv.obj),
            "context": digest(held.context),
            "decision": decision,
            "iat": now,
            "expires_at": now + TTL,
        }
        out.update(over)
        return out

    def post(self, held: Held, what: str, body: Any, **kw: Any) -> httpx.Response:
        if "content" not in kw:
            kw["json"] = body
        return sane(httpx.post(f"{held.url}/{what}", timeout=10, **kw))

    def answer(self, held: Held, approval: Any, csrf: str | None = None, **kw) -> httpx.Response:
        csrf = self.csrf(held) if csrf is None else csrf
        return self.post(held, "answer", {"csrf": csrf, "approval": approval}, **kw)

    def approve(self, held: Held, decision: str = "approve", signer=None) -> None:
        signer = signer or self.srv.alice
        r = self.answer(held, sign_approval(signer, self.body(held, decision)))
        assert r.status_code == 200, r.text
        assert self.status(held) == ("approved" if decision == "approve" else "refused")

    def policy(self, version: int, rules: list[dict[str, Any]]) -> None:
        body = {
            "kind": "policy",
            "v": 1,
            "log": ORIGIN,
            "version": version,
            "document": {"rules": rules},
        }
        self.srv.log.append(sign_entry(body, [self.srv.log.keys.operator]))

    def allowed(self, r: httpx.Response) -> bool:
        return r.status_code == 200 and r.json().get("decision") == "allow"

    def accesses(self) -> list[dict[str, Any]]:
        return [
            leaf.entry.obj
            for _, leaf in self.srv.log.leaves()
            if leaf.entry.obj.get("kind") == "access"
        ]


def _world(tmp_path: Path) -> Iterator[World]:
    with running(tmp_path) as srv:
        log, op = srv.log, srv.log.keys.operator
        log.append(
            sign_entry(
                {"kind": "policy", "v": 1, "log": ORIGIN, "version": 1, "document": POLICY}, [op]
            )
        )
        bob, old = key("bob@corp"), key("alice-old-laptop")
        log.append(sign_entry(binding_body(ORIGIN, "bob@corp", bob.public), [op]))
        log.append(sign_entry(binding_body(ORIGIN, "alice@corp", old.public), [op]))
        retire = {"kind": "key", "v": 1, "log": ORIGIN, "op": "retire", "key": old.public.b64}
        log.append(sign_entry(retire, [op]))
        ep2 = TokenStore(log.store).create("enforcement", "gateway-2")[1]
        yield World(srv, bob, old, ep2)


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> Iterator[World]:
    yield from _world(tmp_path_factory.mktemp("step-up-attacks"))


@pytest.fixture
def fresh(tmp_path) -> Iterator[World]:
    """A world of its own, for tests that move the log's clock."""
    yield from _world(tmp_path)


# --- 0. the documented bytes are the bytes the page is asked to sign ------------------------


def test_prepare_offers_exactly_the_documented_approval_bytes(w):
    held = w.hold()
    csrf = w.csrf(held)
    r = w.post(held, "prepare", {"csrf": csrf, "kid": w.srv.alice.kid, "decision": "approve"})
    assert r.status_code == 200, r.text
    offered = r.json()["approval"]
    assert offered["invocation"] == digest(held.inv.obj)
    assert offered["context"] == digest(held.context)
    assert offered["log"] == ORIGIN and offered["decision"] == "approve"
    assert offered["expires_at"] - offered["iat"] <= TTL
    signing_input = base64.urlsafe_b64decode(r.json()["signing_input"] + "==")
    assert signing_input == APPROVAL_CONTEXT + canonical(offered)


# --- 1. forged or misbound approvals: refused, nothing logged, the call still waits -------


def _other_invocation(w: World, held: Held) -> dict:
    return dict(sign_invocation(SigningKey.generate(), held.handle, req(), w.srv.now).obj)


def _mutations(w: World) -> dict[str, Callable[[Held], Any]]:
    """name -> build a hostile approval for ``held``. Each is refused."""
    alice, now = w.srv.alice, w.srv.now
    ops = w.srv.log.keys

    def signed(**over):
        return lambda h: sign_approval(alice, w.body(h, **over))

    def by(k):
        return lambda h: sign_approval(k, w.body(h))

    def relabel_refusal(h):
        refusal = sign_approval(alice, w.body(h, "refuse"))
        return {**refusal, "decision": "approve"}

    def flip_sig(h):
        a = sign_approval(alice, w.body(h))
        s = a["sigs"][0]["sig"]
        a["sigs"][0]["sig"] = ("B" if s[0] == "A" else "A") + s[1:]
        return a

    def sig_of(sig: str):
        def f(h):
            a = sign_approval(alice, w.body(h))
            a["sigs"][0]["sig"] = sig
            return a

        return f

    def kid_swap(h):  # alice's signature under bob's kid
        a = sign_approval(alice, w.body(h))
        a["sigs"][0]["kid"] = w.bob.kid
        return a

    def bob_sig_under_alice_kid(h):
        a = sign_approval(w.bob, w.body(h))
        a["sigs"][0]["kid"] = alice.kid
        return a

    def two_sigs(h):
        a = sign_approval(alice, w.body(h))
        b = sign_approval(w.bob, w.body(h))
        return {**a, "sigs": a["sigs"] + b["sigs"]}

    def same_sig_twice(h):
        a = sign_approval(alice, w.body(h))
        return {**a, "sigs": a["sigs"] * 2}

    def without(field):
        def f(h):
            body = w.body(h)
            del body[field]
            return sign_approval(alice, body)

        return f

    def unsigned_extra(h):
        return {**sign_approval(alice, w.body(h)), "note": "hi"}

    def entry_signature(h):  # the same body signed under the entry context
        body = w.body(h)
        sig = alice.sign(b"", b"lineage.entry.v1\x00" + canonical(body))
        return {**body, "sigs": [{"kid": alice.kid, "sig": b64u(sig)}]}

    def whitespace_signed(h):  # signature over non-canonical bytes of the same object
        body = w.body(h)
        sig = alice.sign(b"", APPROVAL_CONTEXT + json.dumps(body).encode())
        return {**body, "sigs": [{"kid": alice.kid, "sig": b64u(sig)}]}

    fullwidth = str.maketrans("0123456789", "０１２３４５６７８９")
    return {
        "another_invocation": lambda h: sign_approval(
            alice, w.body(h, invocation=digest(_other_invocation(w, h)))
        ),
        "invocation_without_sigs": lambda h: sign_approval(
            alice, w.body(h, invocation=digest({k: v for k, v in h.inv.obj.items() if k != "sigs"}))
        ),
        "another_log": signed(log="evil.example/log"),
        "log_with_zero_width_space": signed(log=ORIGIN + "\u200b"),
        "log_with_cyrillic_a": signed(log=ORIGIN.replace("a", "\u0430", 1)),
        "another_context": signed(context=digest({"source_ip": "203.0.113.9"})),
        "empty_context": signed(context=digest({})),
        "upper_case_digest": lambda h: sign_approval(
            alice, w.body(h, invocation=digest(h.inv.obj).upper())
        ),
        "fullwidth_digits_digest": lambda h: sign_approval(
            alice, w.body(h, invocation=digest(h.inv.obj).translate(fullwidth))
        ),
        "short_digest": lambda h: sign_approval(
            alice, w.body(h, invocation=digest(h.inv.obj)[:63])
        ),
        "by_another_principal": by(w.bob),
        "by_a_retired_key": by(w.alice_old),
        "by_the_operator": by(ops.operator),
        "by_the_decision_key": by(ops.decision),
        "by_the_agent_holding_the_credential": lambda h: sign_approval(h.holder, w.body(h)),
        "by_an_unbound_key": by(SigningKey.generate()),
        "iat_an_hour_ago": signed(iat=now - 3600, expires_at=now - 3600 + TTL),
        "iat_200s_ago_still_unexpired": signed(iat=now - 200, expires_at=now + 100),
        "iat_an_hour_ahead": signed(iat=now + 3600, expires_at=now + 3600 + TTL),
        "iat_200s_ahead": signed(iat=now + 200, expires_at=now + 200 + TTL),
        "expires_beyond_approval_ttl": signed(expires_at=now + TTL + 1),
        "expires_an_hour": signed(expires_at=now + 3600),
        "expires_at_iat": signed(expires_at=now),
        "expires_before_iat": signed(expires_at=now - 1),
        "iat_zero": signed(iat=0, expires_at=TTL),
        "iat_negative": signed(iat=-5),
        "iat_huge": signed(iat=2**60, expires_at=2**60 + 10),
        "iat_float": signed(iat=now + 0.5),
        "iat_string": signed(iat=str(now)),
        "iat_bool": signed(iat=True),
        "decision_upper": signed(decision="APPROVE"),
        "decision_padded": signed(decision="approve "),
        "decision_nul": signed(decision="approve\u0000"),
        "decision_cyrillic": signed(decision="\u0430pprove"),
        "decision_yes": signed(decision="yes"),
        "decision_true": signed(decision=True),
        "decision_null": signed(decision=None),
        "refusal_relabelled_as_approval": relabel_refusal,
        "tampered_signature": flip_sig,
        "signature_of_zeros": sig_of(b64u(bytes(64))),
        "signature_too_short": sig_of(b64u(bytes(63))),
        "signature_padded": lambda h: sig_of(
            sign_approval(alice, w.body(h))["sigs"][0]["sig"] + "=="
        )(h),
        "signature_under_another_kid": kid_swap,
        "another_signature_under_alices_kid": bob_sig_under_alice_kid,
        "two_signatures": two_sigs,
        "the_same_signature_twice": same_sig_twice,
        "no_signatures": lambda h: {**w.body(h), "sigs": []},
        "sigs_missing": lambda h: w.body(h),
        "sigs_an_object": lambda h: {
            **w.body(h),
            "sigs": sign_approval(alice, w.body(h))["sigs"][0],
        },
        "missing_log": without("log"),
        "missing_invocation": without("invocation"),
        "missing_context": without("context"),
        "missing_decision": without("decision"),
        "missing_iat": without("iat"),
        "missing_expires_at": without("expires_at"),
        "signed_extra_field": signed(note="also approve the next one"),
        "unsigned_extra_field": unsigned_extra,
        "signed_under_the_entry_context": entry_signature,
        "signed_over_non_canonical_bytes": whitespace_signed,
        "approval_a_string": lambda h: json.dumps(sign_approval(alice, w.body(h))),
        "approval_a_list": lambda h: [sign_approval(alice, w.body(h))],
        "approval_null": lambda h: None,
        "approval_nested_deep": lambda h: _nested(40),
    }


def _nested(depth: int) -> Any:
    out: Any = []
    for _ in range(depth):
        out = [out]
    return out


def _names() -> list[str]:
    class _Stub:  # only the names are needed at collection time
        srv = type(
            "S",
            (),
            {
                "alice": key("x"),
                "now": 10**9,
                "log": type(
                    "L", (), {"keys": type("K", (), {"operator": key("o"), "decision": key("d")})}
                ),
            },
        )()
        bob = alice_old = key("y")

    return list(_mutations(_Stub()))  # type: ignore[arg-type]


@pytest.mark.parametrize("attack", _names())
def test_a_hostile_approval_is_refused_and_changes_nothing(w, attack):
    held = w.hold()
    forged = _mutations(w)[attack](held)
    size = w.srv.size()
    r = w.answer(held, forged)
    assert 400 <= r.status_code < 500, (attack, r.status_code, r.text)
    assert w.status(held) == "pending"
    assert w.srv.size() == size
    # and the call, sent again, is still only held: never allowed
    again = w.ask(held.inv, held.context)
    assert again.status_code == 202 and again.json()["approval"]["id"] == held.id, again.text


REFUSAL_ATTACKS = [
    "another_invocation",
    "another_context",
    "another_log",
    "by_another_principal",
    "by_a_retired_key",
    "by_the_operator",
    "by_the_agent_holding_the_credential",
    "by_an_unbound_key",
    "tampered_signature",
    "iat_an_hour_ago",
    "expires_beyond_approval_ttl",
    "no_signatures",
]


@pytest.mark.parametrize("attack", REFUSAL_ATTACKS)
def test_a_forged_refusal_cannot_refuse_for_the_person(w, attack):
    """CONSENT.md §7: refusals are checked the same way, so a leaked link cannot refuse."""
    held = w.hold()
    approval = _mutations(w)[attack](held)
    refusal = {**approval, "decision": "refuse"}
    if attack not in ("tampered_signature", "no_signatures"):  # re-sign as a refusal
        signer = {
            "by_another_principal": w.bob,
            "by_a_retired_key": w.alice_old,
            "by_the_operator": w.srv.log.keys.operator,
            "by_the_agent_holding_the_credential": held.holder,
        }.get(attack, w.srv.alice if attack != "by_an_unbound_key" else SigningKey.generate())
        refusal = sign_approval(signer, {k: v for k, v in refusal.items() if k != "sigs"})
    size = w.srv.size()
    r = w.answer(held, refusal)
    assert 400 <= r.status_code < 500, (attack, r.text)
    assert w.status(held) == "pending" and w.srv.size() == size


def test_hostile_answers_do_not_lock_the_person_out(w):
    """A leaked link lets a stranger post garbage; the person can still answer after it."""
    held = w.hold()
    csrf = w.csrf(held)
    for name, build in list(_mutations(w).items())[:12]:
        r = w.answer(held, build(held), csrf=csrf)
        assert 400 <= r.status_code < 500, name
    for decision in ("refuse", "approve", "refuse"):  # a stranger asks for bytes to sign
        w.post(held, "prepare", {"csrf": csrf, "kid": w.bob.kid, "decision": decision})
        w.post(held, "prepare", {"csrf": csrf, "kid": w.srv.alice.kid, "decision": decision})
    ok = w.answer(held, sign_approval(w.srv.alice, w.body(held)), csrf=csrf)
    assert ok.status_code == 200, ok.text
    assert w.status(held) == "approved"


def test_someone_else_opening_the_link_does_not_void_the_persons_open_page(w):
    """The link travels (chat, a link preview, the agent itself): anyone may GET the page.
    The person who has it open must still be able to answer from it."""
    held = w.hold()
    persons_csrf = w.csrf(held)  # the person opens the page
    for _ in range(3):
        w.csrf(held)  # a stranger, a link unfurler, the agent: each GETs it too
    r = w.answer(held, sign_approval(w.srv.alice, w.body(held)), csrf=persons_csrf)
    assert r.status_code == 200, r.text
    assert w.status(held) == "approved"


def test_prepare_refuses_a_key_that_is_not_the_principals_and_unknown_decisions(w):
    held = w.hold()
    csrf = w.csrf(held)
    for kid in (w.bob.kid, w.alice_old.kid, w.srv.log.keys.operator.kid, "A" * 43):
        r = w.post(held, "prepare", {"csrf": csrf, "kid": kid, "decision": "approve"})
        assert r.status_code == 403, (kid, r.text)
    for decision in ("maybe", "APPROVE", "", None, 1, ["approve"]):
        r = w.post(held, "prepare", {"csrf": csrf, "kid": w.srv.alice.kid, "decision": decision})
        assert 400 <= r.status_code < 500, (decision, r.text)
    assert w.status(held) == "pending"


@pytest.mark.parametrize(
    "raw,content_type",
    [
        (b"", "application/json"),
        (b"not json", "application/json"),
        (b"[]", "application/json"),
        (b'"approve"', "application/json"),
        (b"null", "application/json"),
        (b'{"csrf": 1, "approval": {}}', "application/json"),
        (b'{"csrf": null}', "application/json"),
        (b'{"csrf": "\\ud800", "approval": {}}', "application/json"),
        (b'{"csrf": "x", "approval": {"iat": 1e400}}', "application/json"),
        (b'{"csrf": "x", "approval": {"iat": NaN}}', "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"{" * 100_000, "application/json"),
        (b"[" * 200_000 + b"]" * 200_000, "application/json"),
        (b'{"csrf":"' + b"A" * (2 * 1024 * 1024) + b'"}', "application/json"),
        (b'{"csrf":"x","approval":{}}', "text/plain"),
        (b"csrf=x&approval=y", "application/x-www-form-urlencoded"),
    ],
    ids=lambda v: v if isinstance(v, str) else repr(v[:24]),
)
def test_garbage_bodies_are_4xx_never_5xx_and_change_nothing(w, raw, content_type):
    held = w.hold()
    size = w.srv.size()
    for what in ("prepare", "answer"):
        r = w.post(held, what, None, content=raw, headers={"Content-Type": content_type})
        assert 400 <= r.status_code < 500, (what, r.status_code, r.text[:300])
    assert w.status(held) == "pending" and w.srv.size() == size


# --- 2. CSRF, origin, answering twice, racing ------------------------------------------------


def test_the_answer_needs_this_pages_csrf_token(w):
    held, other = w.hold(), w.hold()
    good = sign_approval(w.srv.alice, w.body(held))
    size = w.srv.size()
    # missing: refused (API.md says 403; a schema 400 is as safe)
    assert w.post(held, "answer", {"approval": good}).status_code in (400, 403)
    body = {"kid": w.srv.alice.kid, "decision": "approve"}
    assert w.post(held, "prepare", body).status_code in (400, 403)
    for csrf in ("", "x", "A" * 43, w.csrf(other), w.csrf(other).upper()):
        r = w.post(held, "answer", {"csrf": csrf, "approval": good})
        assert r.status_code in (400, 403) if len(csrf) != 43 else r.status_code == 403, csrf
        r = w.post(held, "prepare", body | {"csrf": csrf})
        assert r.status_code in (400, 403) if len(csrf) != 43 else r.status_code == 403, csrf
    assert w.status(held) == "pending" and w.srv.size() == size


def test_a_foreign_origin_cannot_answer(w):
    held = w.hold()
    csrf = w.csrf(held)
    good = sign_approval(w.srv.alice, w.body(held))
    for origin in ("https://evil.example", "null", "http://127.0.0.1.evil.example"):
        r = w.answer(held, good, csrf=csrf, headers={"Origin": origin})
        assert r.status_code == 403, (origin, r.status_code, r.text)
        r = w.post(
            held,
            "prepare",
            {"csrf": csrf, "kid": w.srv.alice.kid, "decision": "approve"},
            headers={"Origin": origin},
        )
        assert r.status_code == 403, (origin, r.status_code, r.text)
    # DNS rebinding: a foreign name resolving to 127.0.0.1, naming itself in Host and Origin
    port = httpx.URL(w.srv.base).port
    rebound = {
        "Host": f"rebind.evil.example:{port}",
        "Origin": f"http://rebind.evil.example:{port}",
    }
    r = w.answer(held, good, csrf=csrf, headers=rebound)
    assert r.status_code == 403, (r.status_code, r.text)
    assert w.status(held) == "pending"


def test_a_call_is_answered_once_approve_then_refuse(w):
    held = w.hold()
    csrf = w.csrf(held)
    assert w.answer(held, sign_approval(w.srv.alice, w.body(held)), csrf=csrf).status_code == 200
    size = w.srv.size()
    # the same token replayed, a fresh page's token, the same approval again: all refused
    refusal = sign_approval(w.srv.alice, w.body(held, "refuse"))
    assert 400 <= w.answer(held, refusal, csrf=csrf).status_code < 500
    page = sane(httpx.get(held.url, timeout=10))
    fresh_csrf = re.search(r'data-csrf="([^"]+)"', page.text)
    if fresh_csrf:
        token = html.unescape(fresh_csrf.group(1))
        assert 400 <= w.answer(held, refusal, csrf=token).status_code < 500
    again = sign_approval(w.srv.alice, w.body(held))
    assert 400 <= w.answer(held, again, csrf=csrf).status_code < 500
    assert w.status(held) == "approved" and w.srv.size() == size
    r = w.ask(held.inv, held.context)
    assert r.status_code == 200 and r.json()["decision"] == "allow", r.text


def test_racing_approve_and_refuse_exactly_one_wins(w):
    held = w.hold()
    csrf = w.csrf(held)
    answers = [
        sign_approval(w.srv.alice, w.body(held, "approve" if i % 2 else "refuse"))
        for i in range(10)
    ]
    results: list[tuple[str, int]] = []
    barrier = threading.Barrier(len(answers))

    def go(a):
        barrier.wait()
        r = w.answer(held, a, csrf=csrf)
        results.append((a["decision"], r.status_code))

    threads = [threading.Thread(target=go, args=(a,)) for a in answers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [d for d, code in results if code == 200]
    assert len(results) == len(answers)
    assert len(winners) == 1, results
    assert w.status(held) == ("approved" if winners[0] == "approve" else "refused")


# --- 3. the held call itself -----------------------------------------------------------------


def test_the_held_invocation_with_another_context_is_never_allowed(w):
    held = w.hold()
    other = {"source_ip": "203.0.113.66", "attributes": {"sender": "boss@corp.example"}}
    size = w.srv.size()
    assert w.ask(held.inv, other).status_code == 400  # API.md: another context is 400
    assert w.srv.size() == size
    w.approve(held)
    r = w.ask(held.inv, other)
    assert not (r.status_code == 200 and r.json().get("decision") == "allow"), r.text
    assert not [a for a in w.accesses() if a["context"] == other and a["decision"] == "allow"]


def test_the_held_invocation_from_another_enforcement_point_is_never_allowed(w):
    held = w.hold()
    size = w.srv.size()
    assert w.ask(held.inv, held.context, token=w.ep2).status_code == 400
    assert w.srv.size() == size
    w.approve(held)
    r = w.ask(held.inv, held.context, token=w.ep2)
    assert not (r.status_code == 200 and r.json().get("decision") == "allow"), r.text
    # and the first enforcement point still gets its one allow
    ok = w.ask(held.inv, held.context)
    assert ok.status_code == 200 and ok.json()["decision"] == "allow", ok.text


def test_an_approved_call_sent_concurrently_is_allowed_once(w):
    held = w.hold()
    w.approve(held)
    before = len(w.accesses())
    results: list[httpx.Response] = []
    barrier = threading.Barrier(8)

    def go():
        barrier.wait()
        results.append(w.ask(held.inv, held.context))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    allows = [r for r in results if r.status_code == 200 and r.json()["decision"] == "allow"]
    assert len(allows) == 1, [(r.status_code, r.text[:120]) for r in results]
    new = w.accesses()[before:]
    assert [a["decision"] for a in new].count("allow") == 1
    # sent once more later: the nonce is spent
    assert w.ask(held.inv, held.context).status_code == 401


def test_a_refused_call_is_a_logged_deny_and_never_allowed_later(w):
    held = w.hold()
    w.approve(held, "refuse")
    size = w.srv.size()
    r = w.ask(held.inv, held.context)
    assert r.status_code == 200 and r.json()["decision"] == "deny", r.text
    assert "alice@corp refused this call" in r.json()["reason"]
    assert w.srv.size() == size + 1
    for _ in range(2):
        again = w.ask(held.inv, held.context)
        assert not (again.status_code == 200 and again.json().get("decision") == "allow")
    assert all(
        a["decision"] == "deny"
        for a in w.accesses()
        if a["invocation"]["nonce"] == held.inv.obj["nonce"]
    )


def test_an_approval_does_not_carry_over_to_another_credential_with_the_same_nonce(w):
    holder, cred_a = w.grant()
    _, cred_b = w.grant(holder)  # the same agent key holds a second credential
    request = req("same-message")
    held = w.hold(holder, cred_a, request)
    w.approve(held)
    nonce = held.inv.obj["nonce"]
    replica = sign_invocation(holder, cred_b, request, w.srv.now, nonce=nonce)
    r = w.ask(replica, held.context)
    assert r.status_code == 202, r.text  # held on its own: B's call was never approved
    assert r.json()["approval"]["id"] != held.id
    # the same credential, the same nonce, another message: not the approved call either
    sibling = sign_invocation(holder, cred_a, req("another-message"), w.srv.now, nonce=nonce)
    r = w.ask(sibling, held.context)
    assert not (r.status_code == 200 and r.json().get("decision") == "allow"), r.text
    ok = w.ask(held.inv, held.context)
    assert ok.status_code == 200 and ok.json()["decision"] == "allow", ok.text
    r = w.ask(sibling, held.context)
    assert not (r.status_code == 200 and r.json().get("decision") == "allow"), r.text


def test_an_approval_does_not_outlive_a_revocation(w):
    holder, cred = w.grant()
    held = w.hold(holder, cred)
    w.approve(held)
    w.srv.log.append(
        sign_entry(revocation_body(ORIGIN, credential=cred, reason="stop"), [w.srv.alice])
    )
    r = w.ask(held.inv, held.context)
    assert not (r.status_code == 200 and r.json().get("decision") == "allow"), r.text


def test_an_approval_does_not_revive_a_spent_budget(w):
    holder, cred = w.grant(max_uses=2)
    held = w.hold(holder, cred)
    w.approve(held)
    for _ in range(2):  # both uses, spent on reads
        read = sign_invocation(holder, cred, req(action="read"), w.srv.now)
        assert w.allowed(w.ask(read, {}))
    r = w.ask(held.inv, held.context)
    assert not w.allowed(r), r.text


def test_an_approval_signed_by_a_key_retired_before_the_call_is_sent_is_not_logged(w):
    """FORMAT.md §8 step 6: the approval's signer must be active at the access's index. The
    person approves from a laptop, the laptop's key is retired, then the agent sends the call:
    an allow carrying that approval would be an entry no verifier accepts."""
    laptop = SigningKey.generate()
    log, op = w.srv.log, w.srv.log.keys.operator
    log.append(sign_entry(binding_body(ORIGIN, "alice@corp", laptop.public), [op]))
    holder, cred = w.grant()
    held = w.hold(holder, cred)
    w.approve(held, signer=laptop)
    retire = {"kind": "key", "v": 1, "log": ORIGIN, "op": "retire", "key": laptop.public.b64}
    log.append(sign_entry(retire, [op]))
    r = w.ask(held.inv, held.context)
    assert not w.allowed(r), r.text
    assert r.status_code < 500
    verify_bundle(credential_bundle(w.srv.log, cred), w.srv.log.log_key.vkey)


@pytest.mark.parametrize(
    "context",
    [
        {"x": 1.5},
        {"x": 2**60},
        {"attributes": {"sender": None}},
        {"attributes": {"sender": ["a"]}},
        {"attributes": {}},
        {"attributes": {f"a{i}": i for i in range(65)}},
        {"\u00e9": 1},
        {"deep": _nested(40)},
        {"x": "\ud800"},
        {"x": "A" * 70_000},
    ],
    ids=[
        "float",
        "huge-int",
        "null-attribute",
        "list-attribute",
        "empty-attributes",
        "65-attributes",
        "non-ascii-key",
        "too-deep",
        "lone-surrogate",
        "too-big",
    ],
)
def test_a_hostile_context_is_refused_before_anything_is_held_or_logged(w, context):
    holder, cred = w.grant()
    inv = sign_invocation(holder, cred, req(), w.srv.now)
    size = w.srv.size()
    body = json.dumps({"invocation": dict(inv.obj), "context": context}).encode()
    r = sane(
        httpx.post(
            w.srv.url("/v1/access"),
            content=body,
            timeout=10,
            headers=w.srv.bearer(w.srv.enforcement) | {"Content-Type": "application/json"},
        )
    )
    assert 400 <= r.status_code < 500, r.text[:300]
    assert w.srv.size() == size


def _race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    results: list[Any] = []
    barrier = threading.Barrier(n)

    def go(i):
        barrier.wait()
        results.append(fn(i))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == n
    return results


def test_the_same_invocation_asked_concurrently_is_one_held_call(w):
    holder, cred = w.grant()
    inv = sign_invocation(holder, cred, req(), w.srv.now)
    size = w.srv.size()
    results = _race(10, lambda i: w.ask(inv, {"source_ip": "192.0.2.10"}))
    assert {r.status_code for r in results} == {202}, [r.text[:100] for r in results]
    assert len({r.json()["approval"]["id"] for r in results}) == 1
    assert w.srv.size() == size


def test_the_same_invocation_with_racing_contexts_binds_one_context(w):
    """API.md: the same invocation with another context is 400. Asked at once with eight
    contexts, one context is held and seven are 400: none is told "pending" for a call whose
    page shows another context (and which its context can then never be allowed for)."""
    told_pending_wrongly = []
    for _ in range(4):
        holder, cred = w.grant()
        inv = sign_invocation(holder, cred, req(), w.srv.now)
        ctxs = [{"source_ip": f"192.0.2.{i}"} for i in range(8)]
        results = _race(8, lambda i, inv=inv, ctxs=ctxs: (i, w.ask(inv, ctxs[i])))
        pending = [(i, r.json()["approval"]) for i, r in results if r.status_code == 202]
        assert len({a["id"] for _, a in pending}) == 1  # one call, whatever was answered
        page = sane(httpx.get(pending[0][1]["url"], timeout=10)).text
        shown = json.loads(html.unescape(re.search(r'data-context="([^"]*)"', page).group(1)))
        told_pending_wrongly += [ctxs[i] for i, _ in pending if ctxs[i] != shown]
        # whatever was answered, only the context the person saw can ever be allowed
        held = Held(inv, shown, pending[0][1], cred, holder)
        w.approve(held)
        again = _race(8, lambda i, inv=inv, ctxs=ctxs: (i, w.ask(inv, ctxs[i])))
        allowed = [ctxs[i] for i, r in again if w.allowed(r)]
        assert allowed == [shown], allowed
    assert told_pending_wrongly == [], told_pending_wrongly


def test_the_limit_of_sixteen_held_calls_holds_under_a_race(w):
    holder, cred = w.grant()
    invs = [sign_invocation(holder, cred, req(), w.srv.now) for _ in range(32)]
    size = w.srv.size()
    results = _race(32, lambda i: w.ask(invs[i], {}))
    codes = [r.status_code for r in results]
    assert codes.count(202) == 16 and codes.count(429) == 16, sorted(codes)
    assert w.srv.size() == size


def test_a_stale_invocation_cannot_be_held_for_approval(w):
    """An approval lets a call be older than the invocation window; a call that was already
    stale when first asked (a captured one) must not get a person to approve it."""
    holder, cred = w.grant()
    stale = sign_invocation(holder, cred, req(), w.srv.now - 600)
    size = w.srv.size()
    r = w.ask(stale, {})
    assert r.status_code == 401, r.text
    assert w.srv.size() == size


def test_a_spent_nonce_cannot_come_back_through_an_approval(w):
    holder, cred = w.grant()
    read = sign_invocation(holder, cred, req(action="read"), w.srv.now)
    assert w.allowed(w.ask(read, {}))
    nonce = read.obj["nonce"]
    replay = sign_invocation(holder, cred, req(), w.srv.now, nonce=nonce)
    r = w.ask(replay, {})
    if r.status_code == 202:  # held all the same: then it must never be allowed
        held = Held(replay, {}, r.json()["approval"], cred, holder)
        w.approve(held)
        r = w.ask(replay, {})
    assert not w.allowed(r), r.text
    assert r.status_code == 401, r.text  # API.md: a replayed nonce is 401, not logged


def test_sixteen_held_calls_per_credential_then_429_and_others_unaffected(w):
    holder, cred = w.grant()
    for _ in range(16):
        w.hold(holder, cred)
    size = w.srv.size()
    r = w.ask(sign_invocation(holder, cred, req(), w.srv.now), {})
    assert r.status_code == 429 and r.json()["error"] == "too_many_requests", r.text
    assert w.srv.size() == size
    w.hold()  # another credential (also alice's) is still held normally


def test_an_approval_smuggled_into_the_access_request_is_refused(w):
    held = w.hold()
    forged = sign_approval(w.srv.alice, w.body(held))
    other = w.hold()
    size = w.srv.size()
    r = sane(
        httpx.post(
            w.srv.url("/v1/access"),
            json={"invocation": dict(other.inv.obj), "context": other.context, "approval": forged},
            headers=w.srv.bearer(w.srv.enforcement),
            timeout=10,
        )
    )
    assert r.status_code in (400, 422), r.text
    assert w.srv.size() == size and w.status(other) == "pending"


def test_an_access_entry_with_a_forged_approval_is_not_appended(w):
    """Even with the decision key, POST /v1/entries must not log an access whose approval
    answers another call (FORMAT.md §8 step 6 is checked before anything is logged)."""
    held = w.hold()
    other = w.hold(request=req())
    approval = sign_approval(w.srv.alice, w.body(other))  # alice approved *another* call
    body = {
        "kind": "access",
        "v": 1,
        "log": ORIGIN,
        "invocation": dict(held.inv.obj),
        "context": held.context,
        "enforcement": "enforcement-1",
        "decision": "allow",
        "reason": "permitted by every credential in the chain",
        "policy": 1,
        "approval": approval,
    }
    size = w.srv.size()
    r = sane(
        httpx.post(
            w.srv.url("/v1/entries"),
            json=sign_entry(body, [w.srv.log.keys.decision]).obj,
            timeout=10,
        )
    )
    assert 400 <= r.status_code < 500, r.text
    assert w.srv.size() == size


# --- 4. ids, the page ------------------------------------------------------------------------

HOSTILE_IDS = [
    "apr_" + "A" * 24,
    "apr_",
    "apr_x",
    "x",
    "apr_" + "A" * 5000,
    "apr_%00",
    "apr_%C3%A9",
    "apr_é",
    "..%2F..%2Fhealthz",
    "%2e%2e",
    "apr_AAAAAAAAAAAAAAAAAAAAAAA%27%22%3Cscript%3E",
    "0",
    "-1",
]


@pytest.mark.parametrize("ident", HOSTILE_IDS)
def test_unknown_or_malformed_ids_are_404_or_400_never_5xx(w, ident):
    size = w.srv.size()
    r = sane(httpx.get(w.srv.url(f"/v1/approvals/{ident}"), timeout=10))
    assert r.status_code in (400, 404), r.status_code
    r = sane(httpx.get(w.srv.url(f"/approve/{ident}"), timeout=10))
    assert r.status_code in (400, 404), r.status_code
    assert "<script>" not in r.text.replace('<script src="/static/', "")
    for what, body in (
        ("prepare", {"csrf": "A" * 43, "kid": w.srv.alice.kid, "decision": "approve"}),
        ("answer", {"csrf": "A" * 43, "approval": {}}),
    ):
        r = sane(httpx.post(w.srv.url(f"/approve/{ident}/{what}"), json=body, timeout=10))
        assert r.status_code in (400, 403, 404), (what, r.status_code)
    assert w.srv.size() == size


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))


PAYLOAD = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


def test_the_page_runs_no_injected_script_and_cannot_be_framed(w):
    holder, cred = w.grant(
        agent='x"><script>alert(1)</script><img src=x onerror=alert(2)>',
        description=PAYLOAD + " <svg onload=alert(3)>",
    )
    request = req(f"m{next(_n)}", subject=PAYLOAD, note="</code></td><script>alert(4)</script>")
    context = {"source_ip": PAYLOAD, "attributes": {"sender": PAYLOAD}}
    held = w.hold(holder, cred, request, context)
    page = sane(httpx.get(held.url, timeout=10))
    assert page.status_code == 200
    h = page.headers
    csp = h["content-security-policy"]
    for directive in (
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert h["x-frame-options"] == "DENY"
    assert h["x-content-type-options"] == "nosniff"
    assert "no-store" in h["cache-control"]
    parser = _Tags()
    parser.feed(page.text)
    for tag, attrs in parser.tags:
        names = {k for k, _ in attrs}
        assert not any(n.startswith("on") for n in names), (tag, attrs)
        assert tag not in ("img", "svg", "iframe", "object", "embed", "base", "form"), tag
        if tag == "script":
            src = dict(attrs).get("src") or ""
            assert src.startswith("/static/"), attrs
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    # and what the script reads back (data-invocation, data-context) is the exact call
    data = {k: v for _, attrs in parser.tags for k, v in attrs if k.startswith("data-")}
    assert json.loads(data["data-invocation"]) == dict(held.inv.obj)
    assert json.loads(data["data-context"]) == held.context


def test_the_page_shows_the_effective_value_and_escapes_invisible_characters(w):
    """The person approves what will be decided: an attribute the gateway asserts replaces
    the agent's claim (POLICY.md), so the page must show the asserted value, marked, and no
    bidi override or zero-width character may make a value read as another."""
    holder, cred = w.grant()
    request = req(amount=5, to="bob@corp.example\u202egnp.exe", note="a\u200bb")
    held = w.hold(holder, cred, request, {"attributes": {"amount": 5000}})
    page = sane(httpx.get(held.url, timeout=10)).text
    main = page[page.index("<table>") : page.index("</table>")]
    row = re.search(r"attribute amount</th><td>(.*?)</td>", main).group(1)
    assert "5000" in row and "asserted" in row, row
    assert ">5<" not in row and "5 " not in row.replace("5000", "")
    for invisible in ("\u202e", "\u200b"):
        assert invisible not in main, repr(invisible)


def test_the_answered_and_unknown_pages_keep_their_defences(w):
    held = w.hold()
    w.approve(held)
    for url in (held.url, w.srv.url("/approve/apr_" + "A" * 24)):
        r = sane(httpx.get(url, timeout=10))
        assert "frame-ancestors 'none'" in r.headers.get("content-security-policy", ""), url
        assert r.headers.get("x-frame-options") == "DENY", url
        assert 'data-csrf="' not in r.text  # nothing left to answer


# --- 5. time: expiry of the approval and of the held call ------------------------------------


def test_an_approval_is_not_used_after_it_expires(fresh):
    w = fresh
    held = w.hold()
    csrf = w.csrf(held)
    now = w.srv.now
    short = sign_approval(w.srv.alice, w.body(held, iat=now, expires_at=now + 40))
    assert w.answer(held, short, csrf=csrf).status_code == 200
    w.srv.clock.advance(45)
    assert w.status(held) == "expired"
    r = w.ask(held.inv, held.context)
    assert not (r.status_code == 200 and r.json().get("decision") == "allow"), r.text
    # a full-length approval, also past its end
    held2 = w.hold()
    w.approve(held2)
    w.srv.clock.advance(TTL + 5)
    assert w.status(held2) == "expired"
    r = w.ask(held2.inv, held2.context)
    assert not (r.status_code == 200 and r.json().get("decision") == "allow"), r.text


def test_a_held_call_lapses_after_ten_minutes_and_cannot_be_answered(fresh):
    w = fresh
    held = w.hold()
    csrf = w.csrf(held)
    w.srv.clock.advance(601)
    assert w.status(held) == "expired"
    size = w.srv.size()
    r = w.answer(held, sign_approval(w.srv.alice, w.body(held)), csrf=csrf)
    assert r.status_code == 400, r.text
    assert w.status(held) == "expired" and w.srv.size() == size
    r = w.ask(held.inv, held.context)
    assert not (r.status_code == 200 and r.json().get("decision") == "allow"), r.text


def test_an_approved_call_older_than_the_window_is_allowed_only_within_the_approval(fresh):
    """The legitimate path the expiry tests depend on: an approval lets a call older than
    the 60 s invocation window through, and the entry verifies offline."""
    w = fresh
    held = w.hold()
    w.approve(held)
    w.srv.clock.advance(90)
    r = w.ask(held.inv, held.context)
    assert r.status_code == 200 and r.json()["decision"] == "allow", r.text


def test_an_approval_does_not_outlive_the_credential(fresh):
    w = fresh
    holder, cred = w.grant(ttl=100)
    held = w.hold(holder, cred)
    w.approve(held)
    w.srv.clock.advance(110)  # the approval (300 s) still runs; the credential has ended
    r = w.ask(held.inv, held.context)
    assert not w.allowed(r), r.text


def test_the_strictest_approval_ttl_applies_when_two_rules_hold_a_call(fresh):
    w = fresh
    w.policy(
        2,
        [
            {
                "id": "long",
                "match": {"actions": ["delete"]},
                "require_approval": True,
                "approval_ttl": 3600,
            },
            {
                "id": "short",
                "match": {"type": "email"},
                "require_approval": True,
                "approval_ttl": 60,
            },
        ],
    )
    held = w.hold()
    csrf = w.csrf(held)
    prepared = w.post(
        held, "prepare", {"csrf": csrf, "kid": w.srv.alice.kid, "decision": "approve"}
    )
    assert prepared.status_code == 200, prepared.text
    offered = prepared.json()["approval"]
    assert offered["expires_at"] - offered["iat"] <= 60, offered
    now = w.srv.now
    long = sign_approval(w.srv.alice, w.body(held, iat=now, expires_at=now + 3600))
    r = w.answer(held, long, csrf=csrf)
    assert r.status_code == 400, r.text
    assert w.status(held) == "pending"


def test_a_rule_published_after_the_approval_still_denies(fresh):
    w = fresh
    held = w.hold()
    w.approve(held)
    w.policy(
        2,
        POLICY["rules"]
        + [
            {"id": "no-deletes-today", "match": {"actions": ["delete"]}, "require_role": "nobody"},
        ],
    )
    r = w.ask(held.inv, held.context)
    assert not w.allowed(r), r.text


# --- 6. the offline verifier: a log that skipped its checks ----------------------------------


@pytest.fixture(scope="module")
def approved_log(tmp_path_factory):
    """A small log whose last leaf is a genuine approved access; yields (world, leaves)."""
    gen = _world(tmp_path_factory.mktemp("verifier"))
    w = next(gen)
    held = w.hold()
    w.approve(held)
    r = w.ask(held.inv, held.context)
    assert r.status_code == 200 and r.json()["decision"] == "allow", r.text
    leaves = [leaf for _, leaf in w.srv.log.leaves()]
    assert "approval" in leaves[-1].entry.obj
    yield w, held, leaves
    next(gen, None)


def _bundle(w: World, leaves: list[dict[str, Any]]) -> dict[str, Any]:
    """A complete, correctly proved log of ``leaves`` (JSON leaves), signed by the log key."""
    hashes = [leaf_hash(canonical(leaf)) for leaf in leaves]
    tree = MemoryTree(hashes)
    n = len(leaves)
    cp = sign_checkpoint(Checkpoint(ORIGIN, n, tree_root(n, tree)), w.srv.log.keys.log)
    return {
        "origin": ORIGIN,
        "log_key": w.srv.log.log_key.vkey,
        "checkpoint": cp.decode() if isinstance(cp, bytes) else cp,
        "entries": [
            {
                "index": i,
                "leaf": leaf,
                "inclusion": [base64.b64encode(x).decode() for x in inclusion_proof(i, n, tree)],
            }
            for i, leaf in enumerate(leaves)
        ],
    }


def _raw_entry(body: dict[str, Any], signer: SigningKey) -> dict[str, Any]:
    """An entry signed by hand (FORMAT.md §3), without the library's parse."""
    sig = signer.sign(b"", b"lineage.entry.v1\x00" + canonical(body))
    return {**body, "sigs": [{"kid": signer.kid, "sig": b64u(sig)}]}


def _forge(approved_log, change: Callable[..., SigningKey | None]):
    """The log with its last leaf (the approved access) changed by ``change(entry, approval,
    world, held, leaf, extra)`` (``extra``: leaves to log after it), the approval re-signed
    (by alice unless ``change`` names a key) and the entry re-signed by the decision key:
    what a decision point that skipped its checks would have logged."""
    w, held, leaves = approved_log
    json_leaves = [leaf.to_json() for leaf in leaves]
    last = json.loads(json.dumps(json_leaves[-1]))
    entry = {k: v for k, v in last["entry"].items() if k != "sigs"}
    approval = {k: v for k, v in entry["approval"].items() if k != "sigs"}
    extra: list[dict[str, Any]] = []
    signer = change(entry, approval, w, held, last, extra) or w.srv.alice
    entry["approval"] = sign_approval(signer, approval)
    last["entry"] = _raw_entry(entry, w.srv.log.keys.decision)
    return _bundle(w, [*json_leaves[:-1], last, *extra])


def _check(bundle, w) -> str | None:
    """The check that fails (FORMAT.md §8/§9.1 names), or None if the bundle verifies."""
    try:
        verify_bundle(json.dumps(bundle).encode(), w.srv.log.log_key.vkey)
    except FormatError:
        return "format"  # a schema fault: §9.1 "fails [format] before any of these"
    except Exception as e:
        return getattr(e, "check", repr(e))
    return None


def test_the_rebuilt_genuine_log_verifies(approved_log):
    assert _check(_forge(approved_log, lambda *_: None), approved_log[0]) is None


def _another_invocation(e, a, w, h, leaf, extra=None):
    a["invocation"] = digest(_other_invocation(w, h))


def _another_context(e, a, w, h, leaf, extra=None):
    e["context"] = {"source_ip": "203.0.113.9"}  # the entry's context, not the approved one


def _another_log(e, a, w, h, leaf, extra=None):
    a["log"] = "evil.example/log"


def _expired(e, a, w, h, leaf, extra=None):
    a["expires_at"] = a["iat"] + 30
    leaf["time"] = a["iat"] + 31  # the leaf is integrated after the approval's end


def _iat_in_the_future(e, a, w, h, leaf, extra=None):
    a["iat"] += 3000
    a["expires_at"] = a["iat"] + 300


def _by(name):
    def f(e, a, w, h, leaf, extra=None):
        return {
            "bob": w.bob,
            "retired": w.alice_old,
            "operator": w.srv.log.keys.operator,
            "decision": w.srv.log.keys.decision,
            "agent": SigningKey.generate(),
        }[name]

    return f


@pytest.mark.parametrize(
    "change",
    [_another_invocation, _another_context, _another_log, _expired, _iat_in_the_future]
    + [_by(n) for n in ("bob", "retired", "operator", "decision", "agent")],
    ids=[
        "another-invocation",
        "another-context",
        "another-log",
        "expired",
        "iat-in-the-future",
        "by-another-principal",
        "by-a-retired-key",
        "by-the-operator",
        "by-the-decision-key",
        "by-an-unbound-key",
    ],
)
def test_the_verifier_refuses_a_logged_approval_that_does_not_hold(approved_log, change):
    assert _check(_forge(approved_log, change), approved_log[0]) == "approval"


def _lasting_two_hours(e, a, w, h, leaf, extra=None):
    a["expires_at"] = a["iat"] + 7200


def _upper_case_digest(e, a, w, h, leaf, extra=None):
    a["invocation"] = a["invocation"].upper()


def _by_a_key_bound_only_later(e, a, w, h, leaf, extra):
    later = SigningKey.generate()
    bind = binding_body(ORIGIN, "alice@corp", later.public)
    extra.append({"entry": _raw_entry(bind, w.srv.log.keys.operator), "time": leaf["time"]})
    return later


@pytest.mark.parametrize(
    "change",
    [_lasting_two_hours, _upper_case_digest, _by_a_key_bound_only_later],
    ids=["lasting-two-hours", "upper-case-digest", "by-a-key-bound-only-later"],
)
def test_the_verifier_refuses_a_malformed_or_premature_approval(approved_log, change):
    assert _check(_forge(approved_log, change), approved_log[0]) in ("format", "approval")


def test_the_verifier_refuses_an_approval_with_two_signatures(approved_log):
    w, _, leaves = approved_log
    json_leaves = [leaf.to_json() for leaf in leaves]
    last = json.loads(json.dumps(json_leaves[-1]))
    entry = {k: v for k, v in last["entry"].items() if k != "sigs"}
    approval = {k: v for k, v in entry["approval"].items() if k != "sigs"}
    a, b = sign_approval(w.srv.alice, approval), sign_approval(w.bob, approval)
    entry["approval"] = {**a, "sigs": b["sigs"] + a["sigs"]}
    last["entry"] = _raw_entry(entry, w.srv.log.keys.decision)
    assert _check(_bundle(w, [*json_leaves[:-1], last]), w) in ("format", "approval")


def test_the_verifier_refuses_a_refusal_carried_as_an_approval(approved_log):
    w, _, leaves = approved_log
    json_leaves = [leaf.to_json() for leaf in leaves]
    last = json.loads(json.dumps(json_leaves[-1]))
    entry = {k: v for k, v in last["entry"].items() if k != "sigs"}
    approval = {k: v for k, v in entry["approval"].items() if k != "sigs"}
    entry["approval"] = sign_approval(w.srv.alice, approval | {"decision": "refuse"})
    last["entry"] = _raw_entry(entry, w.srv.log.keys.decision)
    bundle = _bundle(w, [*json_leaves[:-1], last])
    assert _check(bundle, w) == "format"
    assert _cli(bundle, w)["check"] == "format"


def test_the_verifier_refuses_a_tampered_approval_signature(approved_log):
    w, _, leaves = approved_log
    json_leaves = [leaf.to_json() for leaf in leaves]
    last = json.loads(json.dumps(json_leaves[-1]))
    entry = {k: v for k, v in last["entry"].items() if k != "sigs"}
    s = entry["approval"]["sigs"][0]["sig"]
    entry["approval"]["sigs"][0]["sig"] = ("B" if s[0] == "A" else "A") + s[1:]
    last["entry"] = sign_entry(entry, [w.srv.log.keys.decision]).obj
    assert _check(_bundle(w, [*json_leaves[:-1], last]), w) == "approval"


def _cli(bundle: dict[str, Any], w: World) -> dict[str, Any]:
    """``lineage-verify - --log-key K --json`` on ``bundle``: its JSON answer (exit != 0)."""
    cli = Path(sys.executable).with_name("lineage-verify")
    out = subprocess.run(
        [str(cli), "-", "--log-key", w.srv.log.log_key.vkey, "--json"],
        input=json.dumps(bundle),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0, out.stdout
    return json.loads(out.stdout)


def test_lineage_verify_cli_reports_check_approval(approved_log):
    w = approved_log[0]
    assert _cli(_forge(approved_log, _by("bob")), w)["check"] == "approval"


# --- 7. through the gateway --------------------------------------------------------------------

from .test_gateway_step_up import SCOPE as GW_SCOPE  # noqa: E402
from .test_gateway_step_up import world as gw  # noqa: E402,F401  (the fixture)
from .test_mcp_stock_client import LOCATION  # noqa: E402


class _Recorder(httpx.BaseTransport):
    """The transport under the agent's gateway transport: sees what reaches the gateway."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return self.inner.handle_request(request)


def test_gateway_an_approved_invocation_does_not_open_another_path_and_goes_through_once(gw):  # noqa: F811
    from lineage.client import LineageClient

    agent = Agent(SigningKey.generate())
    with LineageClient(gw.srv.base, log_key=gw.srv.log.log_key.vkey) as client:
        handle = client.grant(gw.srv.alice, "alice@corp", agent, task="mail", scope=GW_SCOPE)
    rec = _Recorder()
    url = f"{MAIL}/v1/messages/77"
    with httpx.Client(
        transport=GatewayTransport(gw.gateway, agent, handle, transport=rec), timeout=10
    ) as mail:
        held = mail.delete(url)
    assert held.status_code == 403 and held.json()["error"] == "approval_pending", held.text
    first = rec.sent[-1]
    invocation = first.headers[INVOCATION_HEADER]
    gw.answer(held.json()["approval"])

    def send(path: str) -> httpx.Response:
        target = gw.srv.base + path
        proof = make_proof(agent.key.seed, "DELETE", target, access_token=handle)
        return sane(
            httpx.delete(
                target,
                headers={
                    "Authorization": f"DPoP {handle}",
                    "DPoP": proof,
                    INVOCATION_HEADER: invocation,
                },
                timeout=10,
            )
        )

    gw_path = first.url.raw_path.decode()
    assert gw_path.endswith("/v1/messages/77")
    other = send(gw_path.replace("/77", "/78"))  # the approved invocation, another message
    assert other.status_code == 401, other.text
    assert "DELETE /v1/messages/78" not in gw.reached()
    results: list[httpx.Response] = []
    barrier = threading.Barrier(4)

    def go():
        barrier.wait()
        results.append(send(gw_path))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r.status_code for r in results).count(200) == 1, [
        (r.status_code, r.text[:100]) for r in results
    ]
    assert gw.reached().count("DELETE /v1/messages/77") == 1


def _bearer(gw, tools=("send_email",)) -> str:  # noqa: F811
    from lineage.api.bearer import bearer_token

    seed = SigningKey.generate().seed
    body = grant_body(
        ORIGIN,
        "alice@corp",
        SigningKey(seed).public,
        task={"id": "mail", "description": "mail"},
        scope=[
            {
                "type": "mcp",
                "actions": ["call"],
                "locations": [LOCATION],
                "resources": [f"tool:{t}" for t in tools],
            }
        ],
        expires_at=gw.srv.now + 600,
        max_depth=0,
    )
    grant = gw.srv.log.append(sign_entry(body, [gw.srv.alice]))
    return bearer_token(grant.id, seed)


def _rpc_args(w, token: str, ident: int, arguments: dict) -> httpx.Response:
    from .test_mcp_stock_client import ACCEPT

    message = {
        "jsonrpc": "2.0",
        "id": ident,
        "method": "tools/call",
        "params": {"name": "send_email", "arguments": arguments},
    }
    return sane(
        httpx.post(
            w.gateway + "/mail",
            json=message,
            headers={"Authorization": f"Bearer {token}", "Accept": ACCEPT},
            timeout=10,
        )
    )


def test_gateway_a_bearer_clients_approval_is_for_its_exact_message_and_token_only(gw):  # noqa: F811
    first, second = _bearer(gw), _bearer(gw)
    approved = {"to": "boss@corp.example", "subject": "Q3 numbers"}
    held = _rpc_args(gw, first, 1, approved).json()["error"]
    assert held["code"] == -31402
    gw.answer(held["data"]["approval"])
    # another client (another token, the same person) sends the very same message
    r = _rpc_args(gw, second, 2, approved).json()
    assert "error" in r and r["error"]["code"] == -31402, r
    assert "send_email:boss@corp.example" not in gw.calls
    # the approved client sends a different message to the same person
    r = _rpc_args(gw, first, 3, {"to": "boss@corp.example", "subject": "wire the money"}).json()
    assert "error" in r and r["error"]["code"] == -31402, r
    assert "send_email:boss@corp.example" not in gw.calls
    # the exact approved message goes through, once
    r = _rpc_args(gw, first, 4, approved).json()
    assert "result" in r, r
    assert gw.calls.count("send_email:boss@corp.example") == 1
    r = _rpc_args(gw, first, 5, approved).json()
    assert "error" in r, r
    assert gw.calls.count("send_email:boss@corp.example") == 1
