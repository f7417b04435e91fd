"""API tokens for operators, auditors and enforcement points, stored hashed.

    lineage token create --role auditor --name alice-audit
    -> lin_<id>_<secret>            shown once; only SHA-256(secret) is stored
    lineage token list              id, role, name, created, revoked: never a secret
    lineage token revoke ID         refused from the next request, by every process

A token is ``lin_`` + a 12-character id + ``_`` + 43 characters of secret.
Lookup is by id; the secret's hash is compared in constant time
(``hmac.compare_digest``). Roles: ``operator`` (everything), ``auditor``
(read every entry, export), ``enforcement`` (ask for access decisions,
introspect, revoke).

A name is held by at most one active (unrevoked) token, since the policy and
the log know an enforcement point by its token's name: the check and the insert
are one write transaction, so two processes cannot both take a name. Nothing
caches tokens: every request reads the row, so a revocation holds from the next
request at every process serving the database.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, replace

from .errors import LedgerError, NotFound
from .store import SQLiteStore

__all__ = ["ROLES", "ApiToken", "NameInUse", "TokenInfo", "TokenStore"]

ROLES = ("operator", "auditor", "enforcement")
TOKEN = re.compile(r"lin_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{43})")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}")


@dataclass(frozen=True)
class ApiToken:
    id: str
    name: str
    role: str


@dataclass(frozen=True)
class TokenInfo:
    """What ``lineage token list`` shows of a token: never its secret or hash."""

    id: str
    name: str
    role: str
    created: int  # Unix seconds
    revoked: int | None  # Unix seconds; None while active


class NameInUse(LedgerError):
    """An active token already has that name."""


class TokenStore:
    def __init__(self, store: SQLiteStore):
        self.store = store

    def create(self, role: str, name: str) -> tuple[ApiToken, str]:
        """A new token; returns it and the secret string, which is never stored.

        Raises ``NameInUse`` (writing nothing) if an active token already has ``name``.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        if not NAME.fullmatch(name):
            raise ValueError("a token name is 1-64 characters: letters, digits, ._@:-")
        token_id = "".join(
            secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789")
            for _ in range(12)
        )
        secret = secrets.token_urlsafe(32)
        digest = hashlib.sha256(secret.encode()).digest()
        with self.store.transaction():  # BEGIN IMMEDIATE: no other writer between check and insert
            held = self.store._query(
                "SELECT id FROM api_tokens WHERE name = ? AND revoked IS NULL", (name,)
            )
            if held:
                raise NameInUse(
                    f"an active token is already named {name} ({held[0][0]}): "
                    f"revoke it first (lineage token revoke {held[0][0]}) or choose another name"
                )
            self.store._write(
                [
                    (
                        "INSERT INTO api_tokens (id, name, role, hash, created) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (token_id, name, role, digest, int(time.time())),
                    )
                ]
            )
        return ApiToken(token_id, name, role), f"lin_{token_id}_{secret}"

    def authenticate(self, presented: str) -> ApiToken | None:
        """The token ``presented`` names, if it is valid and not revoked."""
        m = TOKEN.fullmatch(presented or "")
        if m is None:
            return None
        rows = self.store._query(
            "SELECT id, name, role, hash FROM api_tokens WHERE id = ? AND revoked IS NULL",
            (m.group(1),),
        )
        digest = hashlib.sha256(m.group(2).encode()).digest()
        if not rows or not hmac.compare_digest(rows[0][3], digest):
            return None
        return ApiToken(rows[0][0], rows[0][1], rows[0][2])

    def revoke(self, token_id: str) -> tuple[TokenInfo, bool]:
        """Revoke the token with id ``token_id``: the token, and whether this call revoked
        it (False: it already was, and keeps its first revocation time). ``NotFound`` if
        there is no such token."""
        with self.store.transaction():
            rows = self.store._query(
                "SELECT id, name, role, created, revoked FROM api_tokens WHERE id = ?",
                (token_id,),
            )
            if not rows:
                raise NotFound(f"no token {token_id} (lineage token list shows the ids)")
            token = TokenInfo(*rows[0])
            if token.revoked is not None:
                return token, False
            now = int(time.time())
            self.store._write([("UPDATE api_tokens SET revoked = ? WHERE id = ?", (now, token_id))])
            return replace(token, revoked=now), True

    def list(self) -> list[TokenInfo]:
        """Every token, active and revoked, oldest first."""
        rows = self.store._query(
            "SELECT id, name, role, created, revoked FROM api_tokens ORDER BY created, id"
        )
        return [TokenInfo(*r) for r in rows]

    def remember_jti(self, jti: str, expires: int, now: int) -> bool:
        """Record a DPoP proof's jti; False if it was seen before (a replay)."""
        return self.store.remember_jti(jti, expires, now)
