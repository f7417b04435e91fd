"""Replay: who was entitled to sign each entry, and does every chain of authority hold?

FORMAT.md §8. The rules are pure: ``Rules.check(view, index, leaf)`` reads the
chain state through a read-only ``ChainView`` and returns the entry's
``Effects`` (a key added or retired, a credential added, a use spent, ...), or
raises ``ChainError`` naming the entry and the check. A refused entry has no
effects, so it changes nothing, by construction. ``Replay`` is the in-memory
state a bundle or an audit replays into; the ledger keeps the same state in its
database (``lineage.ledger.state``) and runs the same rules over it.

The checks, per kind:

- genesis   index 0; signed by the log key; names the trusted log key and origin.
- key       signed by an operator key active at this index; add/bind a key not
            already active; retire an active key, never the last operator key.
- policy    operator-signed; versions strictly increase.
- grant     signed by a key bound to ``principal``; not already expired.
- delegation  parent present earlier; signed by the parent's holder; the parent
            valid and unrevoked at the integrated time; ``covers(parent, child)``
            (which bounds the depth); the parent's ``max_children`` not exceeded.
- revocation  signed by an operator, the chain's principal, or a holder at or
            above the target (a holder revocation: operator or the key itself).
- access    signed by a ``decision`` key; the invocation signed by the
            credential's holder; an ``allow`` consistent with every credential in
            the chain (time windows, revocation, scope) and with the use, rate
            and nonce budgets the replayed entries show; an ``approval`` it carries
            answers this invocation, in this log, signed by an active key of the
            chain's principal, and unexpired (``approval``).
- result    signed by a ``decision`` key; answers an earlier ``allow`` access
            (``link``, ``denied``), names its enforcement point (``enforcement``),
            and is the only result for that access (``duplicate-result``).

Every leaf: indexes increase, times never decrease (``order``), and no entry
appears twice (``duplicate``): a repeated grant or delegation would otherwise
start a second record of the same credential with nothing spent.

Two modes (FORMAT.md §8). A *partial* replay (a bundle, any subset of the log)
takes what it is given: counts (uses, children, rate) are lower bounds of the
true counts, so every budget fault found is real, but it cannot prove that
nothing was left out (§9.3), and an access may name a policy version newer than
any it saw. A *complete* replay (``complete=True``: an audit or a monitor
reading every leaf from the genesis) also requires each access to name exactly
the policy version in force, its invocation's ``iat`` to be within
``invocation_window`` seconds of the leaf's time (or, for an approved call, no later
than its approval's ``expires_at``), and its nonce never to have
appeared in an earlier access of the same credential: what the ledger's
decision point enforces before it logs a decision.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

from .approval import context_digest, fresh, invocation_digest
from .attenuation import check_covers
from .entry import Entry, Leaf
from .errors import AttenuationError, ChainError, SignatureError
from .keys import PublicKey
from .kinds import Access, Delegation, Genesis, Grant, KeyChange, Policy, Result, Revocation
from .note import Verifier
from .request import Request, permits
from .scope import Credential

__all__ = [
    "DEFAULT_INVOCATION_WINDOW",
    "AccessRecord",
    "ChainView",
    "CredentialRecord",
    "Effects",
    "KeyRecord",
    "Replay",
    "Rules",
]

# FORMAT.md §8, complete mode: how far (in seconds, either way) an invocation's iat may be
# from its access's integrated time, unless the log states another window (the ledger's
# ``invocation_window`` setting, whose default this is).
DEFAULT_INVOCATION_WINDOW = 60


@dataclass(frozen=True)
class KeyRecord:
    key: PublicKey
    roles: tuple[str, ...]  # operator roles, or a principal's organisational roles
    principal: str | None
    added: int
    retired: int | None = None

    def active(self, index: int) -> bool:
        return self.added < index and (self.retired is None or index < self.retired)


@dataclass(frozen=True, eq=False)
class CredentialRecord:
    """A grant or delegation as replayed: where it sits in the log and in its chain.

    Immutable: what changes (uses, children, revocation) is asked of the ``ChainView``.
    """

    entry: Entry
    index: int
    time: int
    principal: str  # the human at the root of its chain
    holder: PublicKey
    credential: Credential
    parent: CredentialRecord | None

    @property
    def id(self) -> str:
        return self.entry.id

    def chain(self) -> list[CredentialRecord]:
        """The chain from the grant (human first) down to this credential."""
        out, node = [], self
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CredentialRecord) and other.entry.id == self.entry.id

    def __hash__(self) -> int:
        return hash(self.entry.id)


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """An access entry as replayed: what a ``result`` entry is checked against."""

    index: int
    allowed: bool  # its decision was ``allow``
    enforcement: str  # the enforcement point that asked
    credential: str  # the credential its invocation used


@dataclass(frozen=True)
class Effects:
    """What one accepted entry changes in the chain state (``Rules.check``'s answer)."""

    index: int
    time: int
    entry: Entry
    keys: tuple[KeyRecord, ...] = ()  # keys added (a genesis adds several)
    retired: str | None = None  # kid of the key retired at ``index``
    policy: Policy | None = None  # the policy now in force
    credential: CredentialRecord | None = None  # a grant or delegation added
    revoked: str | None = None  # credential revoked at ``index``
    revoked_holder: str | None = None  # kid of the holder key revoked at ``index``
    uses: tuple[str, ...] = ()  # credentials (an allowed access's chain) spending one use
    invocation: tuple[str, str] | None = None  # (credential, nonce) of an access
    allowed: bool = False  # whether that access was an allow
    access: AccessRecord | None = None  # an access entry added
    result: str | None = None  # the access id a result entry answers


class ChainView(ABC):
    """What the rules ask of the chain state: read-only, at the state's current size.

    Subclasses answer the primitives (``Replay`` from memory; the ledger from its
    database); the faults below are derived from them, so every state applies the
    same rules.
    """

    size: int  # leaves applied
    time: int  # integrated time of the last leaf applied (times never go backwards)
    policy_version: int
    policy: Policy | None

    # -- primitives ------------------------------------------------------------------------

    @abstractmethod
    def index_of(self, entry_id: str) -> int | None: ...

    @abstractmethod
    def key(self, kid: str) -> KeyRecord | None: ...

    @abstractmethod
    def other_operator_active(self, kid: str, index: int) -> bool:
        """Is an operator key other than ``kid`` active at ``index``?"""
        ...

    @abstractmethod
    def principal_keys(self, principal: str) -> list[KeyRecord]: ...

    @abstractmethod
    def credential(self, cid: str) -> CredentialRecord | None: ...

    @abstractmethod
    def revoked_at(self, cid: str) -> int | None:
        """Index of the first revocation of credential ``cid``, or None."""
        ...

    @abstractmethod
    def holder_revoked_at(self, kid: str) -> int | None:
        """Index of the first revocation of holder key ``kid``, or None."""
        ...

    @abstractmethod
    def holds(self, kid: str) -> bool:
        """Was ``kid`` the holder of an earlier credential?"""
        ...

    @abstractmethod
    def children(self, cid: str) -> int: ...

    @abstractmethod
    def use_count(self, cid: str) -> int:
        """Allowed accesses so far by ``cid`` or a credential derived from it."""
        ...

    @abstractmethod
    def uses_after(self, cid: str, time: int) -> int:
        """Of those, how many at an integrated time later than ``time``."""
        ...

    @abstractmethod
    def nonce_seen(self, cid: str, nonce: str, *, allowed_only: bool) -> bool:
        """Did an earlier access (only an allowed one, with ``allowed_only``) of ``cid``
        carry this invocation nonce?"""
        ...

    @abstractmethod
    def access(self, entry_id: str) -> AccessRecord | None:
        """The earlier ``access`` entry with this id; None if there is no earlier entry
        with it, or the entry is of another kind."""
        ...

    @abstractmethod
    def result_of(self, access_id: str) -> int | None:
        """Index of the ``result`` entry that answers access ``access_id``, or None."""
        ...

    # -- derived -----------------------------------------------------------------------------

    def principal_roles(self, principal: str, index: int) -> set[str]:
        """Organisational roles of ``principal``'s keys active at ``index``."""
        roles: set[str] = set()
        for rec in self.principal_keys(principal):
            if rec.active(index):
                roles.update(rec.roles)
        return roles

    def is_revoked(self, rec: CredentialRecord, index: int) -> bool:
        at = self.revoked_at(rec.id)
        held = self.holder_revoked_at(rec.holder.kid)
        return (at is not None and at < index) or (held is not None and held < index)

    def validity_fault(
        self, rec: CredentialRecord, index: int, time: int, what: str
    ) -> tuple[str, str] | None:
        """Every credential from the root to ``rec`` within its window and unrevoked?"""
        for node in rec.chain():
            limits = node.credential.limits
            if time >= limits.expires_at:
                return (
                    "expired",
                    f"{what} {node.id[:16]} expired at {limits.expires_at} (time {time})",
                )
            if limits.not_before is not None and time < limits.not_before:
                return (
                    "not-yet-valid",
                    f"{what} {node.id[:16]} not valid before {limits.not_before}",
                )
            if self.is_revoked(node, index):
                return "revoked", f"{what} {node.id[:16]} was revoked"
        return None

    def access_fault(
        self, rec: CredentialRecord, request: Request, nonce: str, index: int, time: int
    ) -> tuple[str, str] | None:
        """Why ``rec`` may not be used for ``request`` at (index, time): (check, reason), or None.

        The decision point asks this before it allows; replay asks it of every allow.
        """
        fault = self.validity_fault(rec, index, time, "credential")
        if fault is not None:
            return fault
        for node in rec.chain():
            reason = permits(node.credential, request)
            if reason is not None:
                return "scope", f"credential {node.id[:16]} does not permit the request: {reason}"
        if self.nonce_seen(rec.id, nonce, allowed_only=True):
            return "replay", "the invocation nonce was used before"
        spent = self.budget_fault(rec, time)
        return ("budget", spent[1]) if spent is not None else None

    def budget_fault(self, rec: CredentialRecord, time: int) -> tuple[str, str, str] | None:
        """Why one more use of ``rec`` at ``time`` would exceed a budget of its chain:
        (``spent`` or ``rate-limited``, reason, the credential whose budget it is), or None.

        Uses are counted over each credential's subtree; the check name is ``budget``.
        """
        for node in rec.chain():
            limits = node.credential.limits
            if limits.max_uses is not None and self.use_count(node.id) + 1 > limits.max_uses:
                reason = f"credential {node.id[:16]} has used all {limits.max_uses} uses"
                return "spent", reason, node.id
            if limits.rate is not None:
                recent = 1 + self.uses_after(node.id, time - limits.rate.window)
                if recent > limits.rate.count:
                    reason = (
                        f"credential {node.id[:16]} allows {limits.rate.count} uses "
                        f"in {limits.rate.window} s"
                    )
                    return "rate-limited", reason, node.id
        return None


class Rules:
    """FORMAT.md §8 as a pure function of (state, index, leaf): ``check``."""

    def __init__(
        self,
        log_key: Verifier,
        verified: set[tuple[str, str]] | None = None,
        *,
        complete: bool = False,
        invocation_window: int = DEFAULT_INVOCATION_WINDOW,
    ):
        """``verified`` optionally holds (entry id, kid) pairs whose signatures were already
        checked (``"inv:" + kid`` for an access entry's invocation), e.g. in parallel.
        A kid is the hash of its key, so a pair names one key whatever the state."""
        if type(invocation_window) is not int or invocation_window < 0:
            raise ValueError("invocation_window is a non-negative number of seconds")
        self.log_key = log_key
        self.origin = log_key.name
        self.verified = verified if verified is not None else set()
        self.complete = complete
        self.invocation_window = invocation_window

    # -- helpers ---------------------------------------------------------------------------

    def _signed(self, entry: Entry, key: PublicKey) -> bool:
        return (entry.id, key.kid) in self.verified or entry.signed_by(key)

    @staticmethod
    def _fail(entry: Entry, check: str, message: str, field: str | None = None) -> ChainError:
        return ChainError(
            f"entry {entry.id[:16]} ({entry.kind}): {check}: {message}", entry.id, check, field
        )

    def _signer(
        self,
        view: ChainView,
        entry: Entry,
        index: int,
        *,
        role: str | None = None,
        principal: str | None = None,
    ) -> KeyRecord:
        """The active key with the given role or principal binding whose signature verifies."""
        for sig in entry.sigs:
            rec = view.key(sig.kid)
            if rec is None or not rec.active(index):
                continue
            if role is not None and (rec.principal is not None or role not in rec.roles):
                continue
            if principal is not None and rec.principal != principal:
                continue
            if self._signed(entry, rec.key):
                return rec
        want = f"role {role}" if role else f"principal {principal}"
        raise self._fail(entry, "signature", f"no valid signature by an active key of {want}")

    # -- the rules -------------------------------------------------------------------------

    def check(self, view: ChainView, index: int, leaf: Leaf) -> Effects:
        """The effects of applying ``leaf`` at ``index`` to ``view``; raises ``ChainError``."""
        entry, body = leaf.entry, leaf.entry.body
        if leaf.time < view.time:
            raise self._fail(entry, "order", f"time {leaf.time} is before the previous {view.time}")
        if index < view.size:
            raise self._fail(entry, "order", f"index {index} after index {view.size - 1}")
        earlier = view.index_of(entry.id)
        if earlier is not None:
            raise self._fail(
                entry,
                "duplicate",
                f"index {index} repeats the entry at index {earlier}: an entry appears once",
            )
        if view.size == 0 and not (index == 0 and isinstance(body, Genesis)):
            raise self._fail(entry, "genesis", "a log begins with its genesis entry at index 0")
        if body.log != self.origin:
            raise self._fail(entry, "origin", f"entry is for log {body.log!r}, not {self.origin!r}")
        handler = {
            Genesis: self._genesis,
            KeyChange: self._key,
            Policy: self._policy,
            Grant: self._grant,
            Delegation: self._delegation,
            Revocation: self._revocation,
            Access: self._access,
            Result: self._result,
        }[type(body)]
        return handler(view, entry, body, index, leaf.time)

    def _genesis(
        self, view: ChainView, entry: Entry, body: Genesis, index: int, time: int
    ) -> Effects:
        if index != 0:
            raise self._fail(entry, "genesis", f"a genesis entry at index {index}")
        if body.log_key != self.log_key.vkey:
            raise self._fail(
                entry,
                "log-key",
                f"genesis names log key {body.log_key}, not the trusted {self.log_key.vkey}",
            )
        if not self._signed(entry, PublicKey(self.log_key.public_key)):
            raise self._fail(entry, "signature", "genesis is not signed by the log key")
        keys = tuple(KeyRecord(k.key, k.roles, None, added=-1) for k in body.keys)
        return Effects(index, time, entry, keys=keys)

    def _key(
        self, view: ChainView, entry: Entry, body: KeyChange, index: int, time: int
    ) -> Effects:
        self._signer(view, entry, index, role="operator")
        current = view.key(body.key.kid)
        if body.op == "retire":
            if current is None or not current.active(index):
                raise self._fail(entry, "key", "retires a key that is not active")
            if (
                current.principal is None
                and "operator" in current.roles
                and not view.other_operator_active(current.key.kid, index)
            ):
                raise self._fail(entry, "key", "would retire the last operator key")
            return Effects(index, time, entry, retired=current.key.kid)
        if current is not None and (current.retired is None or current.retired > index):
            raise self._fail(entry, "key", "adds a key that is already active")
        added = KeyRecord(body.key, body.roles, body.principal, index)
        return Effects(index, time, entry, keys=(added,))

    def _policy(
        self, view: ChainView, entry: Entry, body: Policy, index: int, time: int
    ) -> Effects:
        self._signer(view, entry, index, role="operator")
        if body.version <= view.policy_version:
            raise self._fail(
                entry,
                "policy",
                f"version {body.version} does not follow version {view.policy_version}",
            )
        return Effects(index, time, entry, policy=body)

    def _grant(self, view: ChainView, entry: Entry, body: Grant, index: int, time: int) -> Effects:
        self._signer(view, entry, index, principal=body.principal)
        if time >= body.credential.limits.expires_at:
            raise self._fail(entry, "expired", "granted after its own expiry")
        rec = CredentialRecord(
            entry, index, time, body.principal, body.holder, body.credential, None
        )
        return Effects(index, time, entry, credential=rec)

    def _delegation(
        self, view: ChainView, entry: Entry, body: Delegation, index: int, time: int
    ) -> Effects:
        parent = view.credential(body.parent)
        if parent is None:
            raise self._fail(
                entry, "link", f"parent {body.parent[:16]} is not an earlier credential in this log"
            )
        if not self._signed(entry, parent.holder):
            raise self._fail(entry, "signature", "not signed by the parent's holder key")
        fault = view.validity_fault(parent, index, time, "parent")
        if fault is not None:
            raise self._fail(entry, *fault)
        try:
            check_covers(parent.credential, body.credential)
        except AttenuationError as exc:
            raise self._fail(entry, "attenuation", f"widens its parent: {exc}", exc.field) from None
        if time >= body.credential.limits.expires_at:
            raise self._fail(entry, "expired", "delegated after its own expiry")
        limit = parent.credential.limits.max_children
        if limit is not None and view.children(parent.id) >= limit:
            raise self._fail(
                entry, "budget", f"parent's max_children {limit} exhausted", "max_children"
            )
        rec = CredentialRecord(
            entry, index, time, parent.principal, body.holder, body.credential, parent
        )
        return Effects(index, time, entry, credential=rec)

    def _revocation(
        self, view: ChainView, entry: Entry, body: Revocation, index: int, time: int
    ) -> Effects:
        if body.holder is not None:
            if self._signed(entry, body.holder):
                if not view.holds(body.holder.kid):  # nothing to revoke: no free log growth
                    raise self._fail(entry, "link", "the key holds no earlier credential")
            else:
                self._signer(view, entry, index, role="operator")
            return Effects(index, time, entry, revoked_holder=body.holder.kid)
        target = view.credential(body.credential)
        if target is None:
            raise self._fail(
                entry,
                "link",
                f"revokes {body.credential[:16]}, which is not an earlier credential in this log",
            )
        chain = target.chain()
        if not any(self._signed(entry, node.holder) for node in chain):
            try:
                self._signer(view, entry, index, principal=chain[0].principal)
            except ChainError:
                try:
                    self._signer(view, entry, index, role="operator")
                except ChainError:
                    raise self._fail(
                        entry,
                        "signature",
                        "not signed by an operator, the "
                        "chain's principal, or a holder at or above the target",
                    ) from None
        return Effects(index, time, entry, revoked=target.id)

    def _access(
        self, view: ChainView, entry: Entry, body: Access, index: int, time: int
    ) -> Effects:
        self._signer(view, entry, index, role="decision")
        inv = body.invocation
        rec = view.credential(inv.credential)
        if rec is None:
            raise self._fail(
                entry,
                "link",
                f"invokes {inv.credential[:16]}, which is not an earlier credential in this log",
            )
        if (entry.id, "inv:" + rec.holder.kid) not in self.verified:
            try:
                inv.verify(rec.holder)
            except SignatureError as exc:
                raise self._fail(entry, "invocation", str(exc)) from None
        if body.approval is not None:
            self._approval(view, entry, body, rec, index, time)
        if self.complete:
            # An approved call may wait for its person: until the approval expires (§5.1).
            if not fresh(inv.iat, time, self.invocation_window, body.approval):
                raise self._fail(
                    entry,
                    "freshness",
                    f"invocation iat {inv.iat} is {abs(time - inv.iat)} s from the leaf's "
                    f"time {time}; "
                    f"the window is {self.invocation_window} s",
                )
            if view.nonce_seen(inv.credential, inv.nonce, allowed_only=False):
                raise self._fail(
                    entry, "replay", "the invocation nonce was in an earlier access of this log"
                )
            if body.policy != view.policy_version:
                raise self._fail(
                    entry,
                    "policy",
                    f"names policy {body.policy}, but version {view.policy_version} was in force",
                )
        elif body.policy < view.policy_version:
            raise self._fail(
                entry,
                "policy",
                f"names policy {body.policy}, but version "
                f"{view.policy_version} was already in force",
            )
        allowed = body.decision == "allow"
        uses: tuple[str, ...] = ()
        if allowed:
            fault = view.access_fault(rec, body.request, inv.nonce, index, time)
            if fault is not None:
                raise self._fail(entry, fault[0], f"allowed, but {fault[1]}")
            uses = tuple(node.id for node in rec.chain())
        record = AccessRecord(index, allowed, body.enforcement, inv.credential)
        return Effects(
            index,
            time,
            entry,
            uses=uses,
            invocation=(inv.credential, inv.nonce),
            allowed=allowed,
            access=record,
        )

    def _approval(
        self,
        view: ChainView,
        entry: Entry,
        body: Access,
        rec: CredentialRecord,
        index: int,
        time: int,
    ) -> None:
        """FORMAT.md §5.1: the approval answers this invocation, in this log, was signed by
        a key bound to the chain's principal and active here, and had not expired."""
        approval, principal = body.approval, rec.chain()[0].principal
        assert approval is not None
        if approval.log != body.log:
            raise self._fail(entry, "approval", f"approves a call in log {approval.log!r}")
        if approval.invocation != invocation_digest(body.invocation):
            raise self._fail(
                entry,
                "approval",
                f"approves invocation {approval.invocation[:16]}, not this one "
                f"({invocation_digest(body.invocation)[:16]})",
            )
        if approval.context != context_digest(body.context):
            raise self._fail(entry, "approval", "approves the call asked with another context")
        signer = view.key(approval.sig.kid)
        if signer is None or signer.principal != principal or not signer.active(index):
            raise self._fail(
                entry,
                "approval",
                f"signed by {approval.sig.kid}, not an active key of principal {principal}",
            )
        try:
            approval.verify(signer.key)
        except SignatureError as exc:
            raise self._fail(entry, "approval", str(exc)) from None
        if time > approval.expires_at:
            raise self._fail(
                entry,
                "approval",
                f"the approval expired at {approval.expires_at}, before the leaf's time {time}",
            )
        if approval.iat > time + self.invocation_window:
            raise self._fail(
                entry, "approval", f"the approval's iat {approval.iat} is after the leaf's time"
            )

    def _result(
        self, view: ChainView, entry: Entry, body: Result, index: int, time: int
    ) -> Effects:
        self._signer(view, entry, index, role="decision")
        answered = view.access(body.access)
        if answered is None:
            where = view.index_of(body.access)
            what = (
                "is not an earlier entry in this log"
                if where is None
                else f"is the entry at index {where}, not an access entry"
            )
            raise self._fail(entry, "link", f"answers {body.access[:16]}, which {what}", "access")
        if not answered.allowed:
            raise self._fail(
                entry,
                "denied",
                f"answers access {body.access[:16]} (index {answered.index}), which was "
                "denied: a denied request is never forwarded",
                "access",
            )
        if body.enforcement != answered.enforcement:
            raise self._fail(
                entry,
                "enforcement",
                f"names enforcement point {body.enforcement!r}, but access "
                f"{body.access[:16]} was asked for by {answered.enforcement!r}",
                "enforcement",
            )
        earlier = view.result_of(body.access)
        if earlier is not None:
            raise self._fail(
                entry,
                "duplicate-result",
                f"access {body.access[:16]} already has its result at index {earlier}: "
                "an access has at most one result",
                "access",
            )
        return Effects(index, time, entry, result=body.access)


class Replay(ChainView):
    """The state of a log replayed from its genesis, one leaf at a time, in memory."""

    def __init__(
        self,
        log_key: Verifier,
        verified: set[tuple[str, str]] | None = None,
        *,
        complete: bool = False,
        invocation_window: int = DEFAULT_INVOCATION_WINDOW,
        keep_entries: bool = True,
    ):
        """``verified``, ``complete`` and ``invocation_window``: see ``Rules``.

        ``keep_entries``: keep every access, revocation and result entry (``accesses``,
        ``revocations``, ``result_entries``), as a bundle's reader wants; an audit of a
        whole log only counts them (``access_count``), so its memory follows the
        credentials, not the accesses (it keeps a small record of each access, which a
        later result is checked against, and the index of each result).
        """
        self.rules = Rules(
            log_key, verified, complete=complete, invocation_window=invocation_window
        )
        self.log_key = log_key
        self.origin = log_key.name
        self.size = 0
        self.time = 0
        self.ids: dict[str, int] = {}  # entry id -> its index: an entry appears once
        self.keys: dict[str, KeyRecord] = {}
        self.credentials: dict[str, CredentialRecord] = {}
        self.revoked: dict[str, int] = {}  # credential id -> index of its revocation
        self.revoked_holders: dict[str, int] = {}  # holder kid -> index of the revocation
        self.policy_version = 0
        self.policy: Policy | None = None
        self.child_counts: dict[str, int] = {}
        self.use_times: dict[str, list[int]] = {}  # credential -> times of its uses, in order
        self.nonces: set[tuple[str, str]] = set()  # (credential, nonce) of allowed accesses
        self.invocations: set[tuple[str, str]] = set()  # (credential, nonce) of every access
        self.access_records: dict[str, AccessRecord] = {}  # access entry id -> its record
        self.results: dict[str, int] = {}  # access entry id -> index of its result entry
        self.keep_entries = keep_entries
        self.access_count = 0
        self.accesses: list[tuple[int, Entry]] = []
        self.revocations: list[tuple[int, Entry]] = []
        self.result_entries: list[tuple[int, Entry]] = []
        self.anchors: list[int] = []  # indexes of genesis, key and policy entries
        self.holders: set[str] = set()  # kids of every key a credential was bound to

    @property
    def verified(self) -> set[tuple[str, str]]:
        return self.rules.verified

    @property
    def complete(self) -> bool:
        return self.rules.complete

    @property
    def invocation_window(self) -> int:
        return self.rules.invocation_window

    # -- the view ----------------------------------------------------------------------------

    def index_of(self, entry_id: str) -> int | None:
        return self.ids.get(entry_id)

    def key(self, kid: str) -> KeyRecord | None:
        return self.keys.get(kid)

    def other_operator_active(self, kid: str, index: int) -> bool:
        return any(
            r.key.kid != kid and r.principal is None and "operator" in r.roles and r.active(index)
            for r in self.keys.values()
        )

    def principal_keys(self, principal: str) -> list[KeyRecord]:
        return [r for r in self.keys.values() if r.principal == principal]

    def credential(self, cid: str) -> CredentialRecord | None:
        return self.credentials.get(cid)

    def revoked_at(self, cid: str) -> int | None:
        return self.revoked.get(cid)

    def holder_revoked_at(self, kid: str) -> int | None:
        return self.revoked_holders.get(kid)

    def holds(self, kid: str) -> bool:
        return kid in self.holders

    def children(self, cid: str) -> int:
        return self.child_counts.get(cid, 0)

    def use_count(self, cid: str) -> int:
        return len(self.use_times.get(cid, ()))

    def uses_after(self, cid: str, time: int) -> int:
        times = self.use_times.get(cid, [])
        return len(times) - bisect_right(times, time)  # times never go backwards: sorted

    def nonce_seen(self, cid: str, nonce: str, *, allowed_only: bool) -> bool:
        return (cid, nonce) in (self.nonces if allowed_only else self.invocations)

    def access(self, entry_id: str) -> AccessRecord | None:
        return self.access_records.get(entry_id)

    def result_of(self, access_id: str) -> int | None:
        return self.results.get(access_id)

    # -- applying ------------------------------------------------------------------------------

    def apply_all(self, leaves: Iterable[tuple[int, Leaf]]) -> None:
        for index, leaf in leaves:
            self.apply(index, leaf)

    def apply(self, index: int, leaf: Leaf) -> None:
        """Apply the leaf at ``index``; leaves must come in increasing index order."""
        self.apply_effects(self.rules.check(self, index, leaf))

    def apply_effects(self, fx: Effects) -> None:
        entry = fx.entry
        for k in fx.keys:
            self.keys[k.key.kid] = k
        if fx.retired is not None:
            rec = self.keys[fx.retired]
            self.keys[fx.retired] = KeyRecord(
                rec.key, rec.roles, rec.principal, rec.added, fx.index
            )
        if fx.policy is not None:
            self.policy_version, self.policy = fx.policy.version, fx.policy
        if fx.credential is not None:
            rec = fx.credential
            self.credentials[rec.id] = rec
            self.holders.add(rec.holder.kid)
            if rec.parent is not None:
                self.child_counts[rec.parent.id] = self.child_counts.get(rec.parent.id, 0) + 1
        if fx.revoked is not None:
            self.revoked.setdefault(fx.revoked, fx.index)
        if fx.revoked_holder is not None:
            self.revoked_holders.setdefault(fx.revoked_holder, fx.index)
        if self.keep_entries and (fx.revoked is not None or fx.revoked_holder is not None):
            self.revocations.append((fx.index, entry))
        for cid in fx.uses:
            self.use_times.setdefault(cid, []).append(fx.time)
        if fx.invocation is not None:
            if fx.allowed:
                self.nonces.add(fx.invocation)
            self.invocations.add(fx.invocation)
            self.access_count += 1
            if self.keep_entries:
                self.accesses.append((fx.index, entry))
        if fx.access is not None:
            a = fx.access  # one string per enforcement point, however many accesses name it
            self.access_records[entry.id] = AccessRecord(
                a.index, a.allowed, sys.intern(a.enforcement), a.credential
            )
        if fx.result is not None:
            self.results[fx.result] = fx.index
            if self.keep_entries:
                self.result_entries.append((fx.index, entry))
        if entry.kind in ("genesis", "key", "policy"):
            self.anchors.append(fx.index)
        self.ids[entry.id] = fx.index
        self.size = fx.index + 1
        self.time = fx.time
