"""Step-up: calls a policy holds for a person's approval (docs/POLICY.md "Approval").

When a rule says ``require_approval``, ``decide`` raises ``ApprovalRequired`` instead of
logging. ``decide_or_hold`` then keeps the call here (outside the log, in the ledger's
database, so every process serving it shares it) and answers ``Held``: a link for the
principal and an address to poll. The principal opens the link in the browser that
holds their enrolled key, sees the exact request, and signs an approval of that
invocation's digest, or a refusal (FORMAT.md §5.1). The caller then sends the *same*
signed invocation again: it is decided with the approval, which the access entry
carries, or denied as refused. Nothing is logged while the call waits, and a refusal
is logged only when the call is sent again, as a deny.

Each held call is one row keyed by its invocation's digest, so asking again answers
the same link, and one approval can never answer another invocation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lineage.verifier.approval import Approval, context_digest, invocation_digest, parse_approval
from lineage.verifier.invocation import SignedInvocation, parse_signed_invocation

from .decide import ApprovalRequired, Decision, decide, parsed_policy
from .errors import LedgerError
from .log import Log
from .store import SQLiteStore

__all__ = [
    "HOLD_TTL",
    "MAX_HELD",
    "ApprovalError",
    "ApprovalStore",
    "Held",
    "HeldCall",
    "decide_or_hold",
]

HOLD_TTL = 600  # seconds a person has to answer before the held call lapses
MAX_HELD = 16  # calls one credential may have waiting at once
POLL_INTERVAL = 2  # seconds between polls the service asks for (CIBA's ``interval``)


_ASKED_OTHERWISE = (
    "this invocation is held for approval as asked by another enforcement point or with "
    "another context: send it as it was asked"
)


class ApprovalError(LedgerError):
    """An answer that cannot be taken: unknown, lapsed or answered call, bad CSRF token,
    or too many calls waiting. ``error`` is the code the API answers with."""

    def __init__(self, message: str, error: str = "invalid_request"):
        super().__init__(message)
        self.error = error


@dataclass(frozen=True)
class HeldCall:
    id: str
    digest: str
    credential: str
    principal: str
    rules: tuple[str, ...]
    invocation: Mapping[str, Any]
    context: Mapping[str, Any]
    enforcement: str
    ttl: int  # how long an approval of it may be used, once signed
    created: int
    expires: int  # when the held call lapses unanswered
    status: str  # pending, approved, refused
    answer: Approval | None

    def status_at(self, now: int) -> str:
        """pending, approved, refused, or expired (lapsed unanswered, or approved and
        the approval no longer usable)."""
        if self.status == "pending" and now >= self.expires:
            return "expired"
        if self.status == "approved" and self.answer and now > self.answer.expires_at:
            return "expired"
        return self.status

    def to_json(self, now: int, base: str = "") -> dict[str, Any]:
        status = self.status_at(now)
        out: dict[str, Any] = {
            "id": self.id,
            "status": status,
            "principal": self.principal,
            "rules": list(self.rules),
            "url": f"{base}/approve/{self.id}",
            "poll": f"{base}/v1/approvals/{self.id}",
            "expires_at": self.answer.expires_at if self.answer else self.expires,
            "interval": POLL_INTERVAL,
        }
        return out


@dataclass(frozen=True)
class Held:
    """``decide_or_hold``'s answer when the call waits for its principal."""

    call: HeldCall
    reason: str


def _page_token(key: bytes, call_id: str) -> str:
    mac = hmac.new(key, b"lineage approval page\n" + call_id.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


_COLUMNS = "id, digest, credential, principal, rule, request, created, expires, status, answer"


class ApprovalStore:
    def __init__(self, store: SQLiteStore, clock=time.time):
        self.store, self.clock = store, clock  # the table is the store's (migration 8)

    def _row(self, row: tuple) -> HeldCall:
        cid, digest, credential, principal, rules, request, created, expires, status, answer = row
        req = json.loads(request)
        return HeldCall(
            cid,
            digest,
            credential,
            principal,
            tuple(json.loads(rules)),
            req["invocation"],
            req["context"],
            req["enforcement"],
            req["ttl"],
            created,
            expires,
            status,
            parse_approval(json.loads(answer)) if answer else None,
        )

    def by_digest(self, digest: str) -> HeldCall | None:
        rows = self.store._query(f"SELECT {_COLUMNS} FROM approvals WHERE digest = ?", (digest,))
        return self._row(rows[0]) if rows else None

    def get(self, call_id: str) -> HeldCall | None:
        rows = self.store._query(f"SELECT {_COLUMNS} FROM approvals WHERE id = ?", (call_id,))
        return self._row(rows[0]) if rows else None

    def hold(
        self,
        invocation: SignedInvocation,
        context: Mapping[str, Any],
        enforcement: str,
        need: ApprovalRequired,
    ) -> HeldCall:
        """Keep the call for its principal; the same invocation asked again answers the
        row already there while it waits. ``ApprovalError`` (``too_many_requests``) when
        the credential has ``MAX_HELD`` calls waiting already."""
        now = int(self.clock())
        request = {
            "invocation": dict(invocation.obj),
            "context": dict(context),
            "enforcement": enforcement,
            "ttl": need.ttl,
        }
        with self.store.transaction():
            rows = self.store._query(
                f"SELECT {_COLUMNS} FROM approvals WHERE digest = ?", (need.digest,)
            )
            if rows:
                found = self._row(rows[0])
                if found.status_at(now) != "expired":
                    if context_digest(found.context) != context_digest(context) or (
                        found.enforcement != enforcement
                    ):  # raced with the same invocation asked another way: one is held
                        raise ApprovalError(_ASKED_OTHERWISE)
                    return found
            waiting = self.store._query(
                "SELECT count(*) FROM approvals WHERE credential = ? AND status = 'pending' "
                "AND expires > ?",
                (invocation.credential, now),
            )[0][0]
            if waiting >= MAX_HELD:
                raise ApprovalError(
                    f"credential {invocation.credential[:16]} has {waiting} calls waiting "
                    "for approval already",
                    "too_many_requests",
                )
            call_id = "apr_" + secrets.token_urlsafe(18)
            self.store._write(
                [
                    # lapsed rows go, so the table holds what is waiting or recently answered
                    (
                        "DELETE FROM approvals WHERE digest = ? OR expires < ?",
                        (need.digest, now - 86400),
                    ),
                    (
                        "INSERT INTO approvals (id, digest, credential, principal, rule, "
                        "request, csrf, created, expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            call_id,
                            need.digest,
                            invocation.credential,
                            need.principal,
                            json.dumps(list(need.rules)),
                            json.dumps(request),
                            secrets.token_bytes(32),  # the key of its page's CSRF token
                            now,
                            now + HOLD_TTL,
                        ),
                    ),
                ]
            )
        found = self.get(call_id)
        assert found is not None
        return found

    def page_token(self, call_id: str) -> str:
        """The CSRF token of the page showing this call: the same on every page shown (a
        MAC of the call's id under a key made for the call), so opening the link again,
        in another tab or by someone else, voids no page already open, and showing the
        page writes nothing."""
        rows = self.store._query("SELECT csrf FROM approvals WHERE id = ?", (call_id,))
        if not rows:
            raise ApprovalError("no such call waiting for approval", "not_found")
        return _page_token(rows[0][0], call_id)

    def waiting(self, call_id: str, csrf: str | None) -> HeldCall:
        """The call, if ``csrf`` is its page's token and it still waits for an answer."""
        rows = self.store._query("SELECT csrf FROM approvals WHERE id = ?", (call_id,))
        if not rows:
            raise ApprovalError("no such call waiting for approval", "not_found")
        expected = _page_token(rows[0][0], call_id)
        if not csrf or not hmac.compare_digest(expected.encode(), str(csrf).encode()):
            raise ApprovalError("the form's CSRF token is missing or wrong", "access_denied")
        call = self.get(call_id)
        assert call is not None
        status = call.status_at(int(self.clock()))
        if status != "pending":
            raise ApprovalError(f"this call is {status}: it cannot be answered now")
        return call

    def answer(self, call_id: str, csrf: str | None, signed: Approval) -> HeldCall:
        """Record the principal's signed answer (checked by the caller against the log's
        keys); one answer per call, taken in one write transaction."""
        with self.store.transaction():
            self.waiting(call_id, csrf)
            status = "approved" if signed.decision == "approve" else "refused"
            self.store._write(
                [
                    (
                        "UPDATE approvals SET status = ?, answer = ?, answered = ? "
                        "WHERE id = ? AND status = 'pending'",
                        (status, json.dumps(dict(signed.obj)), int(self.clock()), call_id),
                    )
                ]
            )
        found = self.get(call_id)
        assert found is not None
        return found


def decide_or_hold(
    log: Log,
    approvals: ApprovalStore,
    invocation: SignedInvocation | Mapping[str, Any],
    context: Mapping[str, Any],
    enforcement: str,
    *,
    window: int = 60,
    upstream_status: int | None = None,
) -> Decision | Held:
    """``decide``, with step-up: a call a rule holds is kept for its principal (``Held``);
    the same invocation sent again is decided with the principal's answer."""
    if not isinstance(invocation, SignedInvocation):
        invocation = parse_signed_invocation(invocation)
    # Only a policy with a require_approval rule holds calls: otherwise no lookup at all,
    # so step-up costs the decisions of a ledger that does not use it nothing. (A policy
    # logged after this read is met in decide, which raises ApprovalRequired.)
    current = log.state().policy
    holds = current is not None and any(r.require_approval for r in parsed_policy(current).rules)
    call = approvals.by_digest(invocation_digest(invocation)) if holds else None
    now = int(approvals.clock())
    if call is not None and (
        context_digest(call.context) != context_digest(context) or call.enforcement != enforcement
    ):
        raise ApprovalError(_ASKED_OTHERWISE)
    approval = None
    refused = False
    if call is not None and call.status_at(now) == "approved":
        approval = call.answer
    elif call is not None and call.status == "refused":
        refused = True
    try:
        return decide(
            log,
            invocation,
            context,
            enforcement,
            window=window,
            upstream_status=upstream_status,
            approval=approval,
            refused=refused,
        )
    except ApprovalRequired as need:
        held = approvals.hold(invocation, context, enforcement, need)
        log.count("approvals_held")
        return Held(held, str(need))
