"""OAuth 2.1 authorisation state (docs/CONSENT.md §5): registered clients (RFC 7591),
consents waiting for a person, and one-time authorisation codes. Outside the log, in the
ledger's database, so every process serving it shares them; secrets stored hashed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from .errors import LedgerError
from .store import SQLiteStore

__all__ = ["AuthzError", "AuthzStore", "Code"]

PENDING_TTL = 600  # seconds a person has to answer a consent page
CODE_TTL = 60  # seconds a code may wait for the token request (RFC 6749 §4.1.2: short)


class AuthzError(LedgerError):
    """Unknown, expired or used client, consent or code; ``error`` is the OAuth code."""

    def __init__(self, message: str, error: str = "invalid_grant"):
        super().__init__(message)
        self.error = error


@dataclass(frozen=True)
class Code:
    grant_id: str
    client_id: str
    redirect: str
    challenge: str
    holder: str  # the holder key's kid: the DPoP key at the token endpoint must be it


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class AuthzStore:
    def __init__(self, store: SQLiteStore, clock=time.time):
        self.store, self.clock = store, clock

    # --- clients ---------------------------------------------------------------------

    def register(self, metadata: dict[str, Any]) -> str:
        client_id = "lc_" + secrets.token_urlsafe(18)
        with self.store.transaction():
            self.store._write(
                [
                    (
                        "INSERT INTO oauth_clients (id, metadata, created) VALUES (?, ?, ?)",
                        (client_id, json.dumps(metadata), int(self.clock())),
                    )
                ]
            )
        return client_id

    def client(self, client_id: str) -> dict[str, Any] | None:
        rows = self.store._query("SELECT metadata FROM oauth_clients WHERE id = ?", (client_id,))
        return json.loads(rows[0][0]) if rows else None

    # --- consents waiting for the person -------------------------------------------

    def pend(self, request: dict[str, Any]) -> tuple[str, str]:
        """Keep an authorisation request until the person answers: (its id, a CSRF token
        the consent page must send back)."""
        pending_id, csrf = secrets.token_urlsafe(18), secrets.token_urlsafe(32)
        expires = int(self.clock()) + PENDING_TTL
        with self.store.transaction():
            self.store._write(
                [
                    (
                        "INSERT INTO oauth_pending (id, request, csrf, expires) "
                        "VALUES (?, ?, ?, ?)",
                        (pending_id, json.dumps(request), _hash(csrf), expires),
                    )
                ]
            )
        return pending_id, csrf

    def pending(self, pending_id: str, csrf: str | None) -> dict[str, Any]:
        """The waiting request, if ``csrf`` is its token and it is unanswered and fresh."""
        rows = self.store._query(
            "SELECT request, csrf, expires, done FROM oauth_pending WHERE id = ?", (pending_id,)
        )
        if not rows:
            raise AuthzError("no such authorisation request", "invalid_request")
        request, digest, expires, done = rows[0]
        if not csrf or not hmac.compare_digest(digest, _hash(csrf)):
            raise AuthzError("the form's CSRF token is missing or wrong", "access_denied")
        if done is not None:
            raise AuthzError("this request was answered already", "invalid_request")
        if int(self.clock()) >= expires:
            raise AuthzError("this request has expired: start again", "invalid_request")
        return json.loads(request)

    def answer(self, pending_id: str) -> None:
        """Mark the request answered; AuthzError if it already was (one answer each)."""
        with self.store.transaction():
            rows = self.store._query("SELECT done FROM oauth_pending WHERE id = ?", (pending_id,))
            if not rows or rows[0][0] is not None:
                raise AuthzError("this request was answered already", "invalid_request")
            self.store._write(
                [
                    (
                        "UPDATE oauth_pending SET done = ? WHERE id = ?",
                        (int(self.clock()), pending_id),
                    )
                ]
            )

    # --- codes ---------------------------------------------------------------------

    def issue(self, code: Code) -> str:
        secret = secrets.token_urlsafe(32)
        with self.store.transaction():
            self.store._write(
                [
                    (
                        "INSERT INTO oauth_codes (hash, grant_id, client_id, redirect, challenge, "
                        "holder, expires) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            _hash(secret),
                            code.grant_id,
                            code.client_id,
                            code.redirect,
                            code.challenge,
                            code.holder,
                            int(self.clock()) + CODE_TTL,
                        ),
                    )
                ]
            )
        return secret

    def redeem(self, secret: str) -> Code:
        """The code's binding, once: it is marked used in the same write transaction."""
        with self.store.transaction():
            rows = self.store._query(
                "SELECT grant_id, client_id, redirect, challenge, holder, expires, used "
                "FROM oauth_codes WHERE hash = ?",
                (_hash(secret or ""),),
            )
            if not rows:
                raise AuthzError("unknown authorisation code")
            *fields, expires, used = rows[0]
            if used is not None:
                raise AuthzError("this authorisation code was used already")
            if int(self.clock()) >= expires:
                raise AuthzError("this authorisation code has expired")
            self.store._write(
                [
                    (
                        "UPDATE oauth_codes SET used = ? WHERE hash = ?",
                        (int(self.clock()), _hash(secret)),
                    )
                ]
            )
        return Code(*fields)
