"""Replay: who was entitled to sign each entry, and does every chain of authority hold?

FORMAT.md §8. ``Replay`` applies leaves in index order, as a monitor replays a
whole log or as a bundle's subset is replayed, and raises ``ChainError`` naming
the entry and the check at the first fault. The checks, per kind:

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
            and nonce budgets the replayed entries show.

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
``invocation_window`` seconds of the leaf's time, and its nonce never to have
appeared in an earlier access of the same credential: what the ledger's
decision point enforces before it logs a decision.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .attenuation import check_covers
from .entry import Entry, Leaf
from .errors import AttenuationError, ChainError, SignatureError
from .keys import PublicKey
from .kinds import Access, Delegation, Genesis, Grant, KeyChange, Policy, Revocation
from .note import Verifier
from .request import Request, permits
from .scope import Credential

__all__ = ["DEFAULT_INVOCATION_WINDOW", "CredentialRecord", "KeyRecord", "Replay"]

# FORMAT.md §8, complete mode: how far (in seconds, either way) an invocation's iat may be
# from its access's integrated time, unless the log states another window (the ledger's
# ``invocation_window`` setting, whose default this is).
DEFAULT_INVOCATION_WINDOW = 60


@dataclass
class KeyRecord:
    key: PublicKey
    roles: tuple[str, ...]  # operator roles, or a principal's organisational roles
    principal: str | None
    added: int
    retired: int | None = None

    def active(self, index: int) -> bool:
        return self.added < index and (self.retired is None or index < self.retired)


@dataclass
class CredentialRecord:
    """A grant or delegation as replayed: where it sits and what it has spent."""

    entry: Entry
    index: int
    time: int
    principal: str  # the human at the root of its chain
    holder: PublicKey
    credential: Credential
    parent: CredentialRecord | None
    children: int = 0
    uses: list[int] = field(default_factory=list)  # integrated times of allowed accesses

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


class Replay:
    """The state of a log replayed from its genesis, one leaf at a time."""

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

        ``complete``: the leaves are the whole log from its genesis (FORMAT.md §8, complete
        mode), so policy versions, ``iat`` and nonces are checked as the decision point does.
        """
        if type(invocation_window) is not int or invocation_window < 0:
            raise ValueError("invocation_window is a non-negative number of seconds")
        self.verified = verified or set()
        self.complete = complete
        self.invocation_window = invocation_window
        self.ids: dict[str, int] = {}  # entry id -> its index: an entry appears once
        self.log_key = log_key
        self.origin = log_key.name
        self.size = 0
        self.time = 0  # integrated time of the last leaf: times never go backwards
        self.keys: dict[str, KeyRecord] = {}
        self.credentials: dict[str, CredentialRecord] = {}
        self.revoked: dict[str, int] = {}  # credential id -> index of its revocation
        self.revoked_holders: dict[str, int] = {}  # holder kid -> index of the revocation
        self.policy_version = 0
        self.nonces: set[tuple[str, str]] = set()  # (credential, nonce) of allowed accesses
        self.invocations: set[tuple[str, str]] = set()  # (credential, nonce) of every access
        self.policy: Policy | None = None
        self.accesses: list[tuple[int, Entry]] = []
        self.revocations: list[tuple[int, Entry]] = []
        self.anchors: list[int] = []  # indexes of genesis, key and policy entries
        self.holders: set[str] = set()  # kids of every key a credential was bound to

    # -- helpers ---------------------------------------------------------------------------

    def _signed(self, entry: Entry, key: PublicKey) -> bool:
        return (entry.id, key.kid) in self.verified or entry.signed_by(key)

    def _fail(self, entry: Entry, check: str, message: str, field: str | None = None) -> ChainError:
        return ChainError(
            f"entry {entry.id[:16]} ({entry.kind}): {check}: {message}", entry.id, check, field
        )

    def _signer(
        self, entry: Entry, index: int, *, role: str | None = None, principal: str | None = None
    ) -> KeyRecord:
        """The active key with the given role or principal binding whose signature verifies."""
        for sig in entry.sigs:
            rec = self.keys.get(sig.kid)
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

    def _is_revoked(self, rec: CredentialRecord, index: int) -> bool:
        at = self.revoked.get(rec.id)
        held = self.revoked_holders.get(rec.holder.kid)
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
            if self._is_revoked(node, index):
                return "revoked", f"{what} {node.id[:16]} was revoked"
        return None

    def _check_valid(
        self, entry: Entry, rec: CredentialRecord, index: int, time: int, what: str
    ) -> None:
        fault = self.validity_fault(rec, index, time, what)
        if fault is not None:
            raise self._fail(entry, *fault)

    # -- the replay ------------------------------------------------------------------------

    def apply_all(self, leaves: Iterable[tuple[int, Leaf]]) -> None:
        for index, leaf in leaves:
            self.apply(index, leaf)

    def apply(self, index: int, leaf: Leaf) -> None:
        """Apply the leaf at ``index``; leaves must come in increasing index order."""
        entry, body = leaf.entry, leaf.entry.body
        if leaf.time < self.time:
            raise self._fail(entry, "order", f"time {leaf.time} is before the previous {self.time}")
        if index < self.size:
            raise self._fail(entry, "order", f"index {index} after index {self.size - 1}")
        earlier = self.ids.get(entry.id)
        if earlier is not None:
            raise self._fail(
                entry,
                "duplicate",
                f"index {index} repeats the entry at index {earlier}: an entry appears once",
            )
        if self.size == 0 and not (index == 0 and isinstance(body, Genesis)):
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
        }[type(body)]
        handler(entry, body, index, leaf.time)
        if isinstance(body, Genesis | KeyChange | Policy):
            self.anchors.append(index)
        elif isinstance(body, Grant | Delegation):
            self.holders.add(body.holder.kid)
        self.ids[entry.id] = index
        self.size = index + 1
        self.time = leaf.time

    def _genesis(self, entry: Entry, body: Genesis, index: int, time: int) -> None:
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
        for k in body.keys:
            self.keys[k.key.kid] = KeyRecord(k.key, k.roles, None, added=-1)

    def _key(self, entry: Entry, body: KeyChange, index: int, time: int) -> None:
        self._signer(entry, index, role="operator")
        current = self.keys.get(body.key.kid)
        if body.op == "retire":
            if current is None or not current.active(index):
                raise self._fail(entry, "key", "retires a key that is not active")
            if (
                current.principal is None
                and "operator" in current.roles
                and not any(
                    r is not current
                    and r.principal is None
                    and "operator" in r.roles
                    and r.active(index)
                    for r in self.keys.values()
                )
            ):
                raise self._fail(entry, "key", "would retire the last operator key")
            current.retired = index
            return
        if current is not None and (current.retired is None or current.retired > index):
            raise self._fail(entry, "key", "adds a key that is already active")
        self.keys[body.key.kid] = KeyRecord(body.key, body.roles, body.principal, index)

    def _policy(self, entry: Entry, body: Policy, index: int, time: int) -> None:
        self._signer(entry, index, role="operator")
        if body.version <= self.policy_version:
            raise self._fail(
                entry,
                "policy",
                f"version {body.version} does not follow version {self.policy_version}",
            )
        self.policy_version = body.version
        self.policy = body

    def _grant(self, entry: Entry, body: Grant, index: int, time: int) -> None:
        self._signer(entry, index, principal=body.principal)
        if time >= body.credential.limits.expires_at:
            raise self._fail(entry, "expired", "granted after its own expiry")
        self.credentials[entry.id] = CredentialRecord(
            entry, index, time, body.principal, body.holder, body.credential, None
        )

    def _delegation(self, entry: Entry, body: Delegation, index: int, time: int) -> None:
        parent = self.credentials.get(body.parent)
        if parent is None:
            raise self._fail(
                entry, "link", f"parent {body.parent[:16]} is not an earlier credential in this log"
            )
        if not self._signed(entry, parent.holder):
            raise self._fail(entry, "signature", "not signed by the parent's holder key")
        self._check_valid(entry, parent, index, time, "parent")
        try:
            check_covers(parent.credential, body.credential)
        except AttenuationError as exc:
            err = self._fail(entry, "attenuation", f"widens its parent: {exc}")
            err.field = exc.field
            raise err from None
        if time >= body.credential.limits.expires_at:
            raise self._fail(entry, "expired", "delegated after its own expiry")
        limit = parent.credential.limits.max_children
        if limit is not None and parent.children >= limit:
            raise self._fail(
                entry, "budget", f"parent's max_children {limit} exhausted", "max_children"
            )
        parent.children += 1
        self.credentials[entry.id] = CredentialRecord(
            entry, index, time, parent.principal, body.holder, body.credential, parent
        )

    def _revocation(self, entry: Entry, body: Revocation, index: int, time: int) -> None:
        if body.holder is not None:
            if self._signed(entry, body.holder):
                if body.holder.kid not in self.holders:  # nothing to revoke: no free log growth
                    raise self._fail(entry, "link", "the key holds no earlier credential")
            else:
                self._signer(entry, index, role="operator")
            self.revoked_holders.setdefault(body.holder.kid, index)
            self.revocations.append((index, entry))
            return
        target = self.credentials.get(body.credential)
        if target is None:
            raise self._fail(
                entry,
                "link",
                f"revokes {body.credential[:16]}, which is not an earlier credential in this log",
            )
        chain = target.chain()
        if not any(self._signed(entry, node.holder) for node in chain):
            try:
                self._signer(entry, index, principal=chain[0].principal)
            except ChainError:
                try:
                    self._signer(entry, index, role="operator")
                except ChainError:
                    raise self._fail(
                        entry,
                        "signature",
                        "not signed by an operator, the "
                        "chain's principal, or a holder at or above the target",
                    ) from None
        self.revoked.setdefault(target.id, index)
        self.revocations.append((index, entry))

    def _access(self, entry: Entry, body: Access, index: int, time: int) -> None:
        self._signer(entry, index, role="decision")
        inv = body.invocation
        rec = self.credentials.get(inv.credential)
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
        if self.complete:
            skew = abs(time - inv.iat)
            if skew > self.invocation_window:
                raise self._fail(
                    entry,
                    "freshness",
                    f"invocation iat {inv.iat} is {skew} s from the leaf's time {time}; "
                    f"the window is {self.invocation_window} s",
                )
            if (inv.credential, inv.nonce) in self.invocations:
                raise self._fail(
                    entry, "replay", "the invocation nonce was in an earlier access of this log"
                )
            if body.policy != self.policy_version:
                raise self._fail(
                    entry,
                    "policy",
                    f"names policy {body.policy}, but version {self.policy_version} was in force",
                )
        elif body.policy < self.policy_version:
            raise self._fail(
                entry,
                "policy",
                f"names policy {body.policy}, but version "
                f"{self.policy_version} was already in force",
            )
        if body.decision == "allow":
            fault = self.access_fault(rec, body.request, inv.nonce, index, time)
            if fault is not None:
                raise self._fail(entry, fault[0], f"allowed, but {fault[1]}")
            self.nonces.add((inv.credential, inv.nonce))
            for node in rec.chain():
                node.uses.append(time)
        self.invocations.add((inv.credential, inv.nonce))
        self.accesses.append((index, entry))

    def access_fault(
        self, rec: CredentialRecord, request: Request, nonce: str, index: int, time: int
    ) -> tuple[str, str] | None:
        """Why ``rec`` may not be used for ``request`` at (index, time): (check, reason), or None.

        The decision point asks this before it allows; replay asks it of every allow.
        """
        fault = self.validity_fault(rec, index, time, "credential")
        if fault is not None:
            return fault
        chain = rec.chain()
        for node in chain:
            reason = permits(node.credential, request)
            if reason is not None:
                return "scope", f"credential {node.id[:16]} does not permit the request: {reason}"
        if (rec.id, nonce) in self.nonces:
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
            if limits.max_uses is not None and len(node.uses) + 1 > limits.max_uses:
                reason = f"credential {node.id[:16]} has used all {limits.max_uses} uses"
                return "spent", reason, node.id
            if limits.rate is not None:
                recent = 1 + sum(1 for t in node.uses if t > time - limits.rate.window)
                if recent > limits.rate.count:
                    reason = (
                        f"credential {node.id[:16]} allows {limits.rate.count} uses "
                        f"in {limits.rate.window} s"
                    )
                    return "rate-limited", reason, node.id
        return None
