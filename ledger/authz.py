"""OAuth 2.1 authorisation state (docs/CONSENT.md §5): registered clients (RFC 7591),
consents waiting for a person, and one-time authorisation codes. Outside the log, in the
ledger's database, so every process serving it shares them; secrets stored hashed.

A client that cannot sign (no ``holder_key``, CONSENT.md §6) gets a holder key the service
makes for it. Its seed is kept only sealed (``nacl.secret.SecretBox``) under a key derived
from a secret the database never holds: the consent's CSRF token while the person decides
(the page has it, the database only its hash), then the authorisation code (the client has
it, the database only its hash). Seals live in ``oauth_seals``, each deleted when it is
opened (or once expired), so once the code is redeemed the database holds nothing of the
seed, sealed or not.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import nacl.exceptions
import nacl.secret

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
    # a client that cannot sign: the holder key's seed, opened from the code's seal when the
    # code is redeemed (never printed: repr=False)
    seed: bytes | None = field(default=None, repr=False)

    @property
    def custodial(self) -> bool:
        return self.seed is not None


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _box(secret: str, purpose: bytes) -> nacl.secret.SecretBox:
    """The seal for a holder seed under ``secret`` (a CSRF token or a code: 32 random bytes,
    so one SHA-256 over a fixed context is a sound key derivation)."""
    key = hashlib.sha256(b"lineage-holder-seal-v1\0" + purpose + b"\0" + secret.encode()).digest()
    return nacl.secret.SecretBox(key)


def seal(secret: str, purpose: bytes, seed: bytes) -> bytes:
    return bytes(_box(secret, purpose).encrypt(seed))


def _pending_ref(pending_id: str) -> str:
    return "pending:" + pending_id


def _code_ref(secret: str) -> str:
    return "code:" + _hash(secret).hex()


def unseal(secret: str, purpose: bytes, sealed: bytes) -> bytes:
    try:
        seed = _box(secret, purpose).decrypt(sealed)
    except nacl.exceptions.CryptoError:
        raise AuthzError("the holder key's seal does not open") from None
    if len(seed) != 32:
        raise AuthzError("the holder key's seal holds no seed")
    return seed


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

    def pend(self, request: dict[str, Any], seed: bytes | None = None) -> tuple[str, str]:
        """Keep an authorisation request until the person answers: (its id, a CSRF token
        the consent page must send back). ``seed``: the holder key made for a client that
        cannot sign, kept sealed under the CSRF token."""
        pending_id, csrf = secrets.token_urlsafe(18), secrets.token_urlsafe(32)
        now = int(self.clock())
        writes: list[tuple[str, tuple]] = [
            (
                "INSERT INTO oauth_pending (id, request, csrf, expires) VALUES (?, ?, ?, ?)",
                (pending_id, json.dumps(request), _hash(csrf), now + PENDING_TTL),
            )
        ]
        if seed is not None:
            writes += self._sealing(_pending_ref(pending_id), seal(csrf, b"pending", seed), now)
        with self.store.transaction():
            self.store._write(writes)
        return pending_id, csrf

    @staticmethod
    def _sealing(ref: str, sealed: bytes, now: int) -> list[tuple[str, tuple]]:
        """Keep ``sealed`` as ``ref`` for as long as a consent lives (a code lives less),
        deleting the seals nobody opened in time."""
        return [
            ("DELETE FROM oauth_seals WHERE expires <= ?", (now,)),
            (
                "INSERT INTO oauth_seals (ref, sealed, expires) VALUES (?, ?, ?)",
                (ref, sealed, now + PENDING_TTL),
            ),
        ]

    def _take_seal(self, ref: str) -> bytes | None:
        """The seal kept as ``ref``, deleted; inside the caller's write transaction."""
        rows = self.store._query("SELECT sealed FROM oauth_seals WHERE ref = ?", (ref,))
        if not rows:
            return None
        self.store._write([("DELETE FROM oauth_seals WHERE ref = ?", (ref,))])
        return bytes(rows[0][0])

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

    def answer(self, pending_id: str, csrf: str | None = None) -> bytes | None:
        """Mark the request answered; AuthzError if it already was (one answer each). The
        holder seed sealed with it is cleared, and returned opened with ``csrf`` if given."""
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
            sealed = self._take_seal(_pending_ref(pending_id))
        if sealed is None or csrf is None:
            return None
        return unseal(csrf, b"pending", sealed)

    # --- codes ---------------------------------------------------------------------

    def issue(self, code: Code) -> str:
        """A one-time code for ``code``'s binding; its holder seed, if any, sealed under it."""
        secret = secrets.token_urlsafe(32)
        now = int(self.clock())
        writes: list[tuple[str, tuple]] = [
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
                    now + CODE_TTL,
                ),
            )
        ]
        if code.seed is not None:
            writes += self._sealing(_code_ref(secret), seal(secret, b"code", code.seed), now)
        with self.store.transaction():
            self.store._write(writes)
        return secret

    def redeem(self, secret: str, *, bearer: bool = False) -> Code:
        """The code's binding, once: it is marked used (and its seal cleared) in the same
        write transaction. ``bearer``: the token request has no DPoP proof, which only a
        code for a client that cannot sign may lack; any other code is then refused
        (``invalid_dpop_proof``) without being spent, as when a proof is refused before the
        code is looked at."""
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
            ref = _code_ref(secret)
            if bearer and not self.store._query("SELECT 1 FROM oauth_seals WHERE ref = ?", (ref,)):
                raise AuthzError(
                    "a DPoP proof by the grant's holder key is required", "invalid_dpop_proof"
                )
            self.store._write(
                [
                    (
                        "UPDATE oauth_codes SET used = ? WHERE hash = ?",
                        (int(self.clock()), _hash(secret)),
                    )
                ]
            )
            sealed = self._take_seal(ref)
        seed = unseal(secret, b"code", sealed) if sealed is not None else None
        return Code(*fields, seed=seed)
