"""Enrolment invitations: a one-time, short-lived link a principal opens in a browser.

    lineage principal invite alice@corp [--role finance] [--ttl 900]
    -> http://127.0.0.1:8000/enroll#invite=inv_<id>_<secret>    shown once

The browser makes its own Ed25519 key (WebCrypto, not extractable), proves it holds
it, and the service appends the operator's ``key`` entry binding that public key to
the principal (``POST /v1/enroll``). Only SHA-256 of the secret is stored; an
invitation is redeemed at most once (the check and the mark are one write
transaction) and never after it expires. The secret travels in the URL's fragment,
which browsers never send to a server, so it is in no access log or Referer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import LedgerError
from .store import SQLiteStore

__all__ = ["INVITE", "Invite", "InviteError", "InviteStore"]

INVITE = re.compile(r"inv_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{43})")
DEFAULT_TTL = 900
MAX_TTL = 7 * 24 * 3600


class InviteError(LedgerError):
    """An invitation that cannot be redeemed: unknown (``spent`` False), or expired or used
    (``spent`` True)."""

    def __init__(self, message: str, spent: bool = False):
        super().__init__(message)
        self.spent = spent


@dataclass(frozen=True)
class Invite:
    id: str
    principal: str
    roles: tuple[str, ...]
    created: int
    expires: int
    used: int | None
    kid: str | None


class InviteStore:
    def __init__(self, store: SQLiteStore, clock=time.time):
        self.store, self.clock = store, clock  # the table is the store's (migration 6)

    def create(
        self, principal: str, roles: Sequence[str] = (), ttl: int = DEFAULT_TTL
    ) -> tuple[Invite, str]:
        """A new invitation and its secret string (``inv_<id>_<secret>``, never stored)."""
        if not 1 <= ttl <= MAX_TTL:
            raise ValueError(f"an invitation lives 1 s to {MAX_TTL} s")
        invite_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = int(self.clock())
        digest = hashlib.sha256(secret.encode()).digest()
        roles_json = json.dumps(sorted(set(roles)))
        with self.store.transaction():
            self.store._write(
                [
                    (
                        "INSERT INTO invites (id, principal, roles, hash, created, expires) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (invite_id, principal, roles_json, digest, now, now + ttl),
                    )
                ]
            )
        invite = Invite(invite_id, principal, tuple(sorted(set(roles))), now, now + ttl, None, None)
        return invite, f"inv_{invite_id}_{secret}"

    def check(self, presented: str) -> Invite:
        """The unexpired, unused invitation ``presented`` names, or ``InviteError``."""
        return self._check(presented, int(self.clock()))

    def _check(self, presented: str, now: int) -> Invite:
        m = INVITE.fullmatch(presented or "")
        rows = []
        if m is not None:
            rows = self.store._query(
                "SELECT id, principal, roles, hash, created, expires, used, kid FROM invites "
                "WHERE id = ?",
                (m.group(1),),
            )
        digest = hashlib.sha256(m.group(2).encode()).digest() if m else b""
        if not rows or not hmac.compare_digest(rows[0][3], digest):
            raise InviteError("no such invitation")
        r = rows[0]
        invite = Invite(r[0], r[1], tuple(json.loads(r[2])), r[4], r[5], r[6], r[7])
        if invite.used is not None:
            raise InviteError("this invitation was used already: ask for a new one", True)
        if now >= invite.expires:
            raise InviteError("this invitation has expired: ask for a new one", True)
        return invite

    def redeem(self, presented: str, kid: str, bind) -> tuple[Invite, object]:
        """Claim the invitation for ``kid`` (one write transaction: two redemptions cannot
        both claim it), then call ``bind(invite)``, which appends the binding. If that
        fails, the claim is released and the invitation can be used again; if the process
        dies in between, the invitation stays spent (ask for another)."""
        now = int(self.clock())
        with self.store.transaction():
            invite = self._check(presented, now)
            self.store._write(
                [("UPDATE invites SET used = ?, kid = ? WHERE id = ?", (now, kid, invite.id))]
            )
        try:
            bound = bind(invite)
        except BaseException:
            with self.store.transaction():
                self.store._write(
                    [("UPDATE invites SET used = NULL, kid = NULL WHERE id = ?", (invite.id,))]
                )
            raise
        return invite, bound

    def list(self) -> list[Invite]:
        rows = self.store._query(
            "SELECT id, principal, roles, created, expires, used, kid FROM invites "
            "ORDER BY created, id"
        )
        return [Invite(r[0], r[1], tuple(json.loads(r[2])), r[3], r[4], r[5], r[6]) for r in rows]
