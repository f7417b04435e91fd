"""The decision point: is this invocation allowed, now, under its whole chain?

``decide`` runs inside the log's writer, in the write transaction, on the log's
replayed state (so every earlier use, from any process sharing the database,
is counted), and appends the decision as an ``access`` entry signed by the
ledger's decision key. In order:

1. The invocation must be a valid proof of possession: its credential exists,
   the credential's holder signed it, its ``iat`` is within
   ``invocation_window`` of the log's time, and its nonce was never used with
   that credential. Otherwise ``InvalidInvocation`` is raised: counted, not
   logged (no one proved they hold the credential).
2. Every credential from the grant down must be in its time window and
   unrevoked, permit the request (with the attributes the enforcement point
   asserts), and have use and rate budget left (subtree totals).
3. The current policy must agree.
4. If a policy rule holds the call for its principal's approval (``require_approval``),
   an ``approval`` of this exact invocation must be given (``ApprovalRequired`` is
   raised otherwise: nothing logged; ``lineage.ledger.approvals`` keeps the call until
   the person answers). The access entry then carries the approval, and the
   invocation may be as old as the approval allows (FORMAT.md §5.1). A call the
   principal ``refused`` is a logged deny.

Anything failing step 2, 3 or 4 is a logged ``deny`` with the reason.

``record_result`` logs what the upstream then answered a request an ``allow``
let through, as a ``result`` entry signed by the decision key (FORMAT.md §4.8):
the access entry is written before the request is forwarded, and entries are
immutable, so the answer is an entry of its own. One per access: the same
answer again is the entry already there; a different one is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lineage.verifier.approval import Approval, fresh, invocation_digest, parse_approval
from lineage.verifier.bodies import result_body
from lineage.verifier.chain import ChainView, CredentialRecord
from lineage.verifier.entry import Entry, sign_entry
from lineage.verifier.errors import EntryFormatError, FormatError, SignatureError
from lineage.verifier.invocation import SignedInvocation, effective_request, parse_signed_invocation
from lineage.verifier.jcs import canonical
from lineage.verifier.kinds import Access, Result
from lineage.verifier.receipt import Receipt

from .errors import LedgerError, RejectedEntry
from .log import Built, Log
from .policy import PolicyDocument, parse_policy

__all__ = [
    "ApprovalRequired",
    "Decision",
    "InvalidInvocation",
    "Recorded",
    "Standing",
    "decide",
    "parsed_policy",
    "record_result",
    "record_results",
    "standing",
]

MAX_CONTEXT = 8192


class InvalidInvocation(LedgerError):
    """Not a valid proof of possession: counted in metrics, not logged."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason  # unknown-credential, signature, stale, replayed


class ApprovalRequired(LedgerError):
    """The chain and the policy allow the call, but a rule holds it for the approval of
    the principal at the root of the chain: nothing is logged until the person answers."""

    def __init__(self, rules: Sequence[str], principal: str, ttl: int, digest: str):
        super().__init__(f"policy: rule {rules[0]}: {principal} must approve this call (step-up)")
        self.rules, self.principal, self.ttl, self.digest = tuple(rules), principal, ttl, digest


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    check: str | None  # the rule that denied (FORMAT.md §8 names, or "policy")
    policy: int
    id: str
    index: int
    entry: Entry
    receipt: Receipt | None = None  # the access entry's, when the log signs (FORMAT.md §9.4)

    def to_json(self) -> dict[str, Any]:
        out = {
            "decision": "allow" if self.allowed else "deny",
            "reason": self.reason,
            "policy": self.policy,
            "id": self.id,
            "index": self.index,
        }
        if self.receipt is not None:
            out["receipt"] = self.receipt.to_json()
        return out


@dataclass(frozen=True)
class Standing:
    """Whether a credential could be used at all now, and if not, which rule says no.

    ``status`` is ``active``, ``expired``, ``not-yet-valid``, ``revoked``, ``spent``
    (``max_uses`` used up) or ``rate-limited`` (the ``rate`` window is full); ``check``
    is the FORMAT.md §8 check name a decision would give (``budget`` for the last two);
    ``credential`` is the credential in the chain the rule is about (it, or an ancestor).
    """

    status: str
    check: str | None
    reason: str
    credential: str | None

    @property
    def active(self) -> bool:
        return self.check is None


ACTIVE = Standing("active", None, "within its window, unrevoked, with budget left", None)


def standing(state: ChainView, rec: CredentialRecord, index: int, time: int) -> Standing:
    """The rules every decision applies before it looks at the request: every credential
    from the grant down to ``rec`` within its window and unrevoked (``validity_fault``),
    and with use and rate budget left for one more use (subtree totals, as
    ``ChainView.access_fault`` counts them). ``decide`` denies on these first, and
    ``/oauth/introspect`` answers from them, so the two cannot disagree.
    """
    fault = state.validity_fault(rec, index, time, "credential")
    if fault is not None:
        culprit = next(
            (n.id for n in rec.chain() if state.validity_fault(n, index, time, "") is not None),
            rec.id,
        )
        return Standing(fault[0], fault[0], fault[1], culprit)
    spent = state.budget_fault(rec, time)
    if spent is not None:
        return Standing(spent[0], "budget", spent[1], spent[2])
    return ACTIVE


def parsed_policy(entry: Any) -> PolicyDocument:
    """The parsed document of a policy entry, parsed once per version."""
    key = (entry.version, canonical(entry.document))
    found = _POLICIES.get(key)
    if found is None:
        found = parse_policy(entry.document)
        if len(_POLICIES) > 64:
            _POLICIES.clear()
        _POLICIES[key] = found
    return found


_POLICIES: dict[tuple[int, bytes], PolicyDocument] = {}


def decide(
    log: Log,
    invocation: SignedInvocation | Mapping[str, Any],
    context: Mapping[str, Any],
    enforcement: str,
    *,
    window: int = 60,
    upstream_status: int | None = None,
    approval: Approval | Mapping[str, Any] | None = None,
    refused: bool = False,
) -> Decision:
    """Decide one invocation and log the decision (see the module's docstring).

    ``approval``: the principal's signed approval of this invocation, which the access
    entry then carries (the log's rules check it at append); ``refused``: the principal
    refused this call, so a rule that holds it for approval denies it.
    """
    if not log.has_keys:
        raise LedgerError("deciding needs the ledger's decision key")
    if not isinstance(invocation, SignedInvocation):
        invocation = parse_signed_invocation(invocation)
    if not isinstance(context, Mapping) or len(canonical(dict(context))) > MAX_CONTEXT:
        raise RejectedEntry(
            f"context must be an object of at most {MAX_CONTEXT} bytes", "format", "context"
        )
    try:
        request = effective_request(invocation, context)
    except FormatError as exc:
        raise RejectedEntry(f"context: {exc}", "format", "context") from None
    if approval is not None and not isinstance(approval, Approval):
        try:
            approval = parse_approval(approval)
        except FormatError as exc:
            raise RejectedEntry(f"approval: {exc}", "format", "approval") from None
    outcome: dict[str, Any] = {}
    # The invocation's signature is checked here, in the caller's thread, against the
    # holder of the credential as committed (a credential's holder never changes); the
    # writer checks only what depends on the state at the decision's index.
    known = log.state().credential(invocation.credential)
    holder_checked = None
    if known is not None:
        try:
            invocation.verify(known.holder)
        except SignatureError as exc:
            log.count("invalid_invocations")
            raise InvalidInvocation(str(exc), "signature") from None
        holder_checked = known.holder.kid

    # What this function parsed already: the entry's parse reuses it where equal.
    parsed = Access(
        log.origin, invocation, dict(context), enforcement, "allow", "", 0, None, request, approval
    )

    def judge(state: ChainView, index: int, time: int) -> tuple[str | None, str, int, Any]:
        """(check or None, the reason logged, policy version, decision key) at (index, time);
        raises ``InvalidInvocation`` for what is never logged."""
        inv = invocation
        rec = state.credential(inv.credential)
        if rec is None:
            raise InvalidInvocation(f"no credential {inv.credential[:16]}", "unknown-credential")
        if rec.holder.kid != holder_checked:
            try:
                inv.verify(rec.holder)
            except SignatureError as exc:
                raise InvalidInvocation(str(exc), "signature") from None
        if not fresh(inv.iat, time, window, approval):
            raise InvalidInvocation(f"iat {inv.iat} is not within {window} s of {time}", "stale")
        if approval is not None and time > approval.expires_at:
            raise InvalidInvocation(f"the approval expired at {approval.expires_at}", "stale")
        if state.nonce_seen(inv.credential, inv.nonce, allowed_only=False):
            raise InvalidInvocation("the invocation nonce was used before", "replayed")
        check, reason = None, "permitted by every credential in the chain"
        now = standing(state, rec, index, time)  # the rules introspection answers from
        fault = (now.check, now.reason) if not now.active else None
        fault = fault or state.access_fault(rec, request, inv.nonce, index, time)
        if fault is not None:
            check, reason = fault
        elif state.policy is not None:
            policy = parsed_policy(state.policy)
            denial = policy.asserting_fault(enforcement, context) or policy.fault(
                state, rec, request, index, time
            )
            if denial is not None:
                check, reason = "policy", denial
            else:
                held = policy.approvals(request)
                principal = rec.chain()[0].principal
                if held and refused:
                    check, reason = "policy", f"rule {held[0].id}: {principal} refused this call"
                elif held and approval is None:
                    raise ApprovalRequired(
                        [r.id for r in held],
                        principal,
                        min(r.approval_ttl for r in held),
                        invocation_digest(inv),
                    )
        logged = reason if check is None else f"{check}: {reason}"[:512]
        return check, logged, state.policy_version, log.keys_for(state).decision

    def sign(verdict: tuple[str | None, str, int, Any]) -> Built:
        check, reason, version, key = verdict
        body: dict[str, Any] = {
            "kind": "access",
            "v": 1,
            "log": log.origin,
            "invocation": dict(invocation.obj),
            "context": dict(context),
            "enforcement": enforcement,
            "decision": "allow" if check is None else "deny",
            "reason": reason,
            "policy": version,
        }
        if upstream_status is not None:
            body["upstream_status"] = upstream_status
        if approval is not None:
            body["approval"] = dict(approval.obj)
        entry = sign_entry(body, [key], parsed)  # signed here, so verified here
        holder = "inv:" + invocation.sig.kid  # verified against the holder by judge()
        return Built(entry, frozenset({(entry.id, key.kid), (entry.id, holder)}))

    def build(state: ChainView, index: int, time: int) -> Built:
        verdict = judge(state, index, time)
        outcome.update(check=verdict[0], reason=verdict[1], policy=verdict[2])
        return sign(verdict)

    try:
        appended = log.build(build)
    except InvalidInvocation:
        log.count("invalid_invocations")
        raise
    allowed = outcome["check"] is None
    log.count("decisions_allow" if allowed else "decisions_deny")
    return Decision(
        allowed,
        outcome["reason"],
        outcome["check"],
        outcome["policy"],
        appended.id,
        appended.index,
        appended.entry,
        appended.receipt,
    )


@dataclass(frozen=True)
class Recorded:
    """A ``result`` entry in the log: the one ``record_result`` wrote, or (``existing``)
    the same answer, recorded before."""

    id: str
    index: int
    entry: Entry
    receipt: Receipt | None = None  # when the log signs (FORMAT.md §9.4)
    existing: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "index": self.index}
        if self.receipt is not None:
            out["receipt"] = self.receipt.to_json()
        return out


def _result_builder(
    log: Log,
    access_id: str,
    enforcement: str,
    upstream_status: int | None,
    failure: str | None,
):
    """Check a result's arguments (``RejectedEntry``, before the writer) and return the
    builder that signs it against the state at its own index."""
    if not log.has_keys:
        raise LedgerError("recording a result needs the ledger's decision key")
    body = result_body(
        log.origin, access_id, enforcement, upstream_status=upstream_status, failure=failure
    )
    try:
        Result.parse(body)  # bad arguments: refused here, named, before the writer
    except EntryFormatError as exc:
        raise RejectedEntry(str(exc), "format", exc.field) from None
    wanted = canonical(body)

    def build(state: ChainView, index: int, time: int) -> Entry | Built:
        earlier = state.result_of(access_id)
        if earlier is not None and earlier < log.store.size():
            # (an earlier result of this same batch is not stored yet: the same answer
            # signed by the same key is the same entry, which the writer finds itself)
            stored = log.leaf(earlier).entry
            if canonical({k: v for k, v in stored.obj.items() if k != "sigs"}) == wanted:
                return stored  # the same answer, logged before (maybe under a retired key)
        key = log.keys_for(state).decision
        entry = sign_entry(body, [key])  # signed here, so verified here
        return Built(entry, frozenset({(entry.id, key.kid)}))

    return build


def _recorded(log: Log, appended: Any) -> Recorded:
    entry = appended.entry
    if entry is None:
        entry = appended.receipt.leaf.entry if appended.receipt else log.leaf(appended.index).entry
    if not appended.existing:
        log.count("results")
    return Recorded(appended.id, appended.index, entry, appended.receipt, appended.existing)


def record_result(
    log: Log,
    access_id: str,
    enforcement: str,
    *,
    upstream_status: int | None = None,
    failure: str | None = None,
) -> Recorded:
    """Log what the upstream answered the request access entry ``access_id`` allowed:
    its HTTP status (``upstream_status``, 100-599) or why none came back (``failure``:
    ``timeout``, ``unreachable``, ``bad_response``, ``cancelled``), exactly one.

    Signed with the ledger's decision key in the writer, against the state at the
    entry's own index. Retrying the same call answers the entry already logged
    (``existing``); ``RejectedEntry`` names the check otherwise: ``format`` (bad
    arguments), ``link`` (no such access entry), ``denied`` (the access was a deny),
    ``enforcement`` (not the access's enforcement point), ``duplicate-result`` (the
    access has another result). A refusal writes nothing.
    """
    build = _result_builder(log, access_id, enforcement, upstream_status, failure)
    return _recorded(log, log.build(build))


def record_results(
    log: Log, results: Sequence[Mapping[str, Any]], enforcement: str
) -> list[Recorded | LedgerError]:
    """Many results at once, sharing group commits: each ``{"access": id,
    "upstream_status": n}`` or ``{"access": id, "failure": why}``. In order, each the
    ``Recorded`` or the ``LedgerError`` that refused it (as ``record_result`` would)."""
    builders: list[Any] = []
    out: list[Recorded | LedgerError | None] = []
    for item in results:
        try:
            builders.append(
                _result_builder(
                    log,
                    item["access"],
                    enforcement,
                    item.get("upstream_status"),
                    item.get("failure"),
                )
            )
            out.append(None)
        except LedgerError as exc:
            out.append(exc)
    done = iter(log.build_many(builders))
    final: list[Recorded | LedgerError] = []
    for slot in out:
        if slot is not None:
            final.append(slot)
            continue
        appended = next(done)
        if isinstance(appended, LedgerError):
            final.append(appended)
        elif isinstance(appended, Exception):
            raise appended
        else:
            final.append(_recorded(log, appended))
    return final
