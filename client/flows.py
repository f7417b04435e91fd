"""The agent client's protocol, written once as request generators (sans-I/O):
each method of ``_Flows`` yields ``httpx.Request`` objects and is sent back the
responses. The two drivers over it (``clients.py``: ``LineageClient`` on
httpx.Client, ``AsyncLineageClient`` on httpx.AsyncClient) only send, so the two
cannot drift.

Trust in the log is pinned, never taken from the server being checked: pass the
log's verifier key (``lineage log key`` prints it) as ``log_key=``, or choose
``trust_on_first_use=True``, which pins the first key the server shows and refuses
any other after that (``pinned_log_key`` is the key to save and pin next time).
Without either, ``verify_lineage`` and ``checkpoint`` raise ``LogKeyError``.

Every answer that appended an entry (a token exchange, a decision, a result, a
revocation) carries its receipt (FORMAT.md §9.4); with a log key pinned, the client verifies
it before returning and raises ``ReceiptError`` if it does not verify. Keep the
receipt: ``still_included(receipt)`` later proves the log still holds the entry.

DPoP requests answer one ``use_dpop_nonce`` challenge (RFC 9449 §8) by retrying
with the nonce the server gave, and keep using the latest nonce it sent.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from lineage.verifier.bodies import delegation_body, grant_body, revocation_body
from lineage.verifier.bundle import verify_bundle
from lineage.verifier.checkpoint import SignedCheckpoint, open_checkpoint
from lineage.verifier.entry import Entry, sign_entry
from lineage.verifier.errors import FormatError, LineageError
from lineage.verifier.fields import HEX_ID
from lineage.verifier.invocation import SignedInvocation, sign_invocation
from lineage.verifier.keys import SigningKey, b64u_encode
from lineage.verifier.merkle import verify_consistency
from lineage.verifier.note import parse_vkey
from lineage.verifier.receipt import VerifiedReceipt, verify_receipt, verify_receipt_still_included

from .dpop import make_proof

APPROVAL_ID = re.compile(r"apr_[A-Za-z0-9_-]{24}")

__all__ = ["Agent", "Flow", "LineageHTTPError", "LogKeyError", "ReceiptError"]

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
SIGNED_ENTRY = "urn:lineage:params:oauth:token-type:signed-entry"

Flow = Generator[httpx.Request, httpx.Response, Any]


class LineageHTTPError(Exception):
    """The service refused: ``status``, ``error`` (OAuth/problem code) and ``description``."""

    def __init__(self, status: int, error: str, description: str):
        super().__init__(f"{status} {error}: {description}")
        self.status, self.error, self.description = status, error, description


class LogKeyError(Exception):
    """No log key is pinned, or the server shows a key other than the pinned one."""


class ReceiptError(Exception):
    """The service's receipt for an append does not verify under the pinned log key, or
    the log no longer holds an entry it gave a receipt for."""


@dataclass(frozen=True)
class Agent:
    """An agent's key. Ephemeral by default: generate one per task, never store it."""

    key: SigningKey

    @classmethod
    def ephemeral(cls) -> Agent:
        return cls(SigningKey.generate())

    def invoke(
        self, credential: str, request: Mapping[str, Any], iat: int | None = None
    ) -> SignedInvocation:
        """Sign an invocation: this agent's proof of possession for one request."""
        return sign_invocation(
            self.key, credential, request, int(time.time()) if iat is None else iat
        )


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = {}
        error = body.get("error", "error")
        raise LineageHTTPError(
            response.status_code, error, body.get("error_description") or body.get("detail") or ""
        )
    ctype = response.headers.get("content-type", "")
    return response.json() if "json" in ctype else response.text


class _Flows:
    """The protocol, as request generators; ``base`` is the service URL."""

    def __init__(
        self,
        base: str,
        token: str | None,
        log_key: str | None = None,
        trust_on_first_use: bool = False,
    ):
        self.base = base.rstrip("/")
        self.token = token
        self._origin: str | None = None
        self._nonce: str | None = None  # the latest DPoP-Nonce the server sent
        self.tofu = trust_on_first_use
        self.pinned: str | None = None
        if log_key is not None:
            self.pinned = _vkey(log_key)

    def _req(self, method: str, path: str, **kw: Any) -> httpx.Request:
        headers = dict(kw.pop("headers", {}))
        if self.token and "authorization" not in {k.lower() for k in headers}:
            headers["Authorization"] = f"Bearer {self.token}"
        return httpx.Request(method, self.base + path, headers=headers, **kw)

    def _dpop(
        self, method: str, path: str, key: SigningKey, token: str | None = None, **kw: Any
    ) -> Flow:
        """Send a request with a DPoP proof by ``key``; on a ``use_dpop_nonce`` challenge,
        once more with the nonce given (RFC 9449 §8). Returns the response."""
        response = None
        for _ in range(2):
            proof = make_proof(
                key.seed, method, self.base + path, access_token=token, nonce=self._nonce
            )
            headers = {"DPoP": proof}
            if token is not None:
                headers["Authorization"] = f"DPoP {token}"
            response = yield self._req(method, path, headers=headers, **dict(kw))
            fresh = response.headers.get("DPoP-Nonce")
            if fresh:
                retry = _error_code(response) == "use_dpop_nonce" and fresh != self._nonce
                self._nonce = fresh
                if retry:
                    continue
            break
        return response

    def origin(self) -> Flow:
        if self._origin is None:
            meta = _check((yield self._req("GET", "/.well-known/oauth-authorization-server")))
            self._origin = meta["lineage_log_origin"]
        return self._origin

    def log_key(self) -> Flow:
        """The key the server shows now; ``LogKeyError`` if one is pinned and this differs."""
        shown = _vkey(_check((yield self._req("GET", "/v1/log/key"))))
        if self.pinned is not None and shown != self.pinned:
            raise LogKeyError(
                f"the server shows log key {shown!r}, not the pinned {self.pinned!r}: refusing"
            )
        return shown

    def trusted_key(self, log_key: str | None = None) -> Flow:
        """The key to verify with: ``log_key`` if given, else the pinned one, else (trust on
        first use) the server's, pinned from now on. Never silently the server's."""
        if log_key is not None:
            return _vkey(log_key)
        if self.pinned is None:
            if not self.tofu:
                raise LogKeyError(
                    "no log key is pinned: pass LineageClient(url, log_key=...) with the key "
                    "the operator publishes (`lineage log key`), or trust_on_first_use=True"
                )
            self.pinned = yield from self.log_key()
        return self.pinned

    def exchange(self, entry: Entry, holder: Agent) -> Flow:
        """RFC 8693 token exchange of a signed grant or delegation; returns the response."""
        data = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token_type": SIGNED_ENTRY,
            "subject_token": b64u_encode(entry.raw),
        }
        answer = _check((yield from self._dpop("POST", "/oauth/token", holder.key, data=data)))
        return (yield from self._checked_receipt(answer, "lineage_receipt", entry.id))

    def _checked_receipt(self, answer: Any, field: str, entry_id: str | None) -> Flow:
        """``answer``, once its receipt verifies under the pinned key (skipped, the receipt
        kept, when no key is pinned and trust on first use is off)."""
        receipt = answer.get(field) if isinstance(answer, dict) else None
        if receipt is None or (self.pinned is None and not self.tofu):
            return answer
        key = yield from self.trusted_key()
        try:
            verify_receipt(receipt, key, entry_id)
        except LineageError as exc:
            raise ReceiptError(f"the service's receipt does not verify: {exc}") from None
        return answer

    def still_included(self, receipt: Mapping[str, Any], log_key: str | None = None) -> Flow:
        """Prove that the log still holds the entry of ``receipt``: the latest checkpoint,
        once a consistency proof from the receipt's shows it extends it. ``ReceiptError``
        (with both checkpoints as evidence) if the log dropped or changed the entry."""
        trusted = yield from self.trusted_key(log_key)
        try:
            verified: VerifiedReceipt = verify_receipt(receipt, trusted)
        except LineageError as exc:
            raise ReceiptError(f"the receipt does not verify: {exc}") from None
        later = yield from self.checkpoint(trusted)
        first, second = verified.checkpoint.checkpoint.size, later.checkpoint.size
        proof = []
        if first < second:
            proof = yield from self.consistency_proof(first, second)
        try:
            verify_receipt_still_included(verified, later, proof)
        except LineageError as exc:
            raise ReceiptError(
                f"the log no longer holds entry {verified.leaf.entry.id} at index "
                f"{verified.index}: {exc}; the receipt and this checkpoint are the evidence:\n"
                + later.raw.decode("utf-8", "replace")
            ) from None
        return later

    def _issue(
        self,
        make_body: Any,
        signer: SigningKey,
        holder: Agent,
        *,
        task: str,
        scope: Sequence[Mapping[str, Any]],
        ttl: int,
        description: str,
        limits: dict[str, Any],
    ) -> Flow:
        """Build a credential body, sign it client-side, exchange it as ``holder``."""
        origin = yield from self.origin()
        body = make_body(
            origin,
            holder.key.public,
            task={"id": task, "description": description},
            scope=scope,
            expires_at=int(time.time()) + ttl,
            **limits,
        )
        answer = yield from self.exchange(sign_entry(body, [signer]), holder)
        return answer["access_token"]

    def grant(
        self,
        principal_key: SigningKey,
        principal: str,
        holder: Agent,
        *,
        task: str,
        scope: Sequence[Mapping[str, Any]],
        ttl: int = 900,
        description: str = "",
        **limits: Any,
    ) -> Flow:
        limits.setdefault("max_depth", 1)
        return (
            yield from self._issue(
                lambda origin, key, **kw: grant_body(origin, principal, key, **kw),
                principal_key,
                holder,
                task=task,
                scope=scope,
                ttl=ttl,
                description=description,
                limits=limits,
            )
        )

    def delegate(
        self,
        parent_holder: Agent,
        parent: str,
        holder: Agent,
        *,
        task: str,
        scope: Sequence[Mapping[str, Any]],
        ttl: int = 600,
        description: str = "",
        **limits: Any,
    ) -> Flow:
        limits.setdefault("max_depth", 0)
        return (
            yield from self._issue(
                lambda origin, key, **kw: delegation_body(origin, parent, key, **kw),
                parent_holder.key,
                holder,
                task=task,
                scope=scope,
                ttl=ttl,
                description=description,
                limits=limits,
            )
        )

    def access(self, invocation: SignedInvocation, context: Mapping[str, Any]) -> Flow:
        """(Enforcement point) ask for a decision; needs an enforcement token.

        ``{"decision": "allow" | "deny", ...}`` with the access entry's receipt, or, when a
        policy rule holds the call for its principal (step-up), ``{"decision": "pending",
        "approval": {"url", "poll", ...}}`` and nothing logged: give the principal the
        ``url``, wait for the answer (``approval``), then send the *same* invocation again.
        """
        body = {"invocation": dict(invocation.to_json()), "context": dict(context)}
        answer = _check((yield self._req("POST", "/v1/access", json=body)))
        if isinstance(answer, dict) and answer.get("decision") == "pending":
            return answer
        return (yield from self._checked_receipt(answer, "receipt", answer.get("id")))

    def approval(self, call_id: str) -> Flow:
        """The status of a call held for approval: ``pending``, ``approved``, ``refused``
        or ``expired`` (``GET /v1/approvals/{id}``)."""
        if not isinstance(call_id, str) or not APPROVAL_ID.fullmatch(call_id):
            raise ValueError("a held call's id is apr_ and 24 base64url characters")
        return _check((yield self._req("GET", f"/v1/approvals/{call_id}")))

    def result(
        self,
        access_id: str,
        *,
        upstream_status: int | None = None,
        failure: str | None = None,
    ) -> Flow:
        """(Enforcement point) record what the upstream answered the request access entry
        ``access_id`` allowed: its HTTP status, or a ``failure`` (``timeout``,
        ``unreachable``, ``bad_response``, ``cancelled``); exactly one. Recording the same
        answer again is answered with the entry already logged; another answer is a 409."""
        if not isinstance(access_id, str) or not HEX_ID.fullmatch(access_id):
            raise ValueError("access_id is an entry id: 64 lower-case hex digits")
        if (upstream_status is None) == (failure is None):
            raise ValueError("give exactly one of upstream_status and failure")
        body: dict[str, Any] = (
            {"upstream_status": upstream_status}
            if upstream_status is not None
            else {"failure": failure}
        )
        path = f"/v1/access/{access_id}/result"
        answer = _check((yield self._req("POST", path, json=body)))
        return (yield from self._checked_receipt(answer, "receipt", answer.get("id")))

    def results(self, results: Sequence[Mapping[str, Any]]) -> Flow:
        """(Enforcement point) record up to 256 results at once, sharing the log's group
        commits: each ``{"access": id, "upstream_status": n}`` or ``{"access": id,
        "failure": why}``. Answers, in order, ``{id, index, receipt}`` (the receipt
        verified when a log key is pinned) or ``{error, error_description}`` for a result
        that is not in the log."""
        answer = _check((yield self._req("POST", "/v1/results", json={"results": list(results)})))
        out = []
        for item in answer.get("results", []) if isinstance(answer, dict) else []:
            if isinstance(item, dict) and "id" in item:
                item = yield from self._checked_receipt(item, "receipt", item.get("id"))
            out.append(item)
        return out

    def introspect(
        self,
        credential: str,
        *,
        holder: Agent | None = None,
        principal: str | None = None,
        principal_key: SigningKey | None = None,
    ) -> Flow:
        """RFC 7662 introspection: with the client's token (enforcement point, operator,
        auditor); as ``holder`` of ``credential`` (DPoP); or as the ``principal`` who
        authorised it, proving ``principal_key`` (DPoP)."""
        data = {"token": credential}
        path = "/oauth/introspect"
        if holder is not None:
            response = yield from self._dpop("POST", path, holder.key, credential, data=data)
        elif principal is not None:
            if principal_key is None:
                raise ValueError("introspecting as a principal needs its key (principal_key=)")
            response = yield from self._dpop("POST", path, principal_key, principal, data=data)
        else:
            response = yield self._req("POST", path, data=data)
        return _check(response)

    def revoke(self, credential: str, *, holder: Agent | None = None, reason: str = "") -> Flow:
        """RFC 7009 revocation of ``credential`` and its subtree: with the client's token
        (operator, enforcement point), or as ``holder`` of it, signing the revocation entry
        with the holder's own key (DPoP)."""
        data = {"token": credential}
        path = "/oauth/revoke"
        if holder is None:
            answer = _check((yield self._req("POST", path, data=data)))
            return (yield from self._checked_receipt(answer, "lineage_receipt", None))
        origin = yield from self.origin()
        entry = sign_entry(
            revocation_body(origin, credential=credential, reason=reason), [holder.key]
        )
        data["revocation"] = b64u_encode(entry.raw)
        answer = _check((yield from self._dpop("POST", path, holder.key, credential, data=data)))
        return (yield from self._checked_receipt(answer, "lineage_receipt", entry.id))

    def lineage(self, holder: Agent, credential: str) -> Flow:
        """The credential's evidence bundle, fetched as its holder (DPoP)."""
        path = f"/v1/credentials/{credential}/lineage"
        return _check((yield from self._dpop("GET", path, holder.key, credential)))

    def verify_lineage(self, holder: Agent, credential: str, log_key: str | None = None) -> Flow:
        """Fetch the bundle and verify it offline, under the pinned log key (or ``log_key``)."""
        trusted = yield from self.trusted_key(log_key)
        bundle = yield from self.lineage(holder, credential)
        return verify_bundle(bundle, trusted)

    def checkpoint(self, log_key: str | None = None) -> Flow:
        """The latest checkpoint, verified under the pinned log key (or ``log_key``)."""
        trusted = yield from self.trusted_key(log_key)
        response = yield self._req("GET", "/v1/log/checkpoint")
        _check(response)
        return open_checkpoint(response.content, parse_vkey(trusted))

    def inclusion_proof(self, index: int, tree_size: int) -> Flow:
        """RFC 9162 §2.1.3 audit path of leaf ``index`` in the tree of ``tree_size``."""
        params = {"index": index, "tree_size": tree_size}
        body = _check((yield self._req("GET", "/v1/log/proof/inclusion", params=params)))
        return _hashes(body, "audit_path")

    def consistency_proof(self, first: int, second: int) -> Flow:
        """RFC 9162 §2.1.4 proof that the tree of ``second`` leaves extends that of ``first``."""
        params = {"first": first, "second": second}
        body = _check((yield self._req("GET", "/v1/log/proof/consistency", params=params)))
        return _hashes(body, "consistency")

    def grew_from(self, old: SignedCheckpoint, log_key: str | None = None) -> Flow:
        """The latest checkpoint, once proved (RFC 9162 §2.1.4.2) to extend ``old``;
        ProofError if the log did not only grow since."""
        new = yield from self.checkpoint(log_key)
        first, second = old.checkpoint.size, new.checkpoint.size
        if first:  # every tree extends the empty one
            proof = yield from self.consistency_proof(first, second)
            verify_consistency(
                first, second, old.checkpoint.root_hash, new.checkpoint.root_hash, proof
            )
        return new


def _vkey(text: str) -> str:
    """A verifier-key string, checked (FormatError if it is not one)."""
    vkey = str(text).strip()
    parse_vkey(vkey)
    return vkey


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) else None


def _hashes(body: Any, field: str) -> list[bytes]:
    try:
        return [base64.b64decode(h, validate=True) for h in body[field]]
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise FormatError(f"the server's {field} is not a list of base64 hashes") from None
