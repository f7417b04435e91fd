"""The eight entry kinds: their bodies, strictly parsed (FORMAT.md §4).

A body is the entry object without its ``sigs``. Every body has ``kind``,
``v`` (1) and ``log`` (the origin of the log it belongs to, so that an entry
signed for one log cannot be replayed into another). Unknown kinds, missing
or extra fields, wrong types and out-of-range values raise ``EntryFormatError``
naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .approval import Approval, parse_approval
from .errors import EntryFormatError, FormatError
from .fields import HEX_ID, Fields, expect_str
from .invocation import SignedInvocation, effective_request, parse_signed_invocation
from .jcs import canonical
from .keys import PublicKey
from .note import parse_vkey
from .request import Request
from .scope import Credential, parse_credential

__all__ = [
    "AGENT_LABEL",
    "CREDENTIAL_FIELDS",
    "FAILURES",
    "KINDS",
    "OPERATOR_ROLES",
    "PRINCIPAL_NAME",
    "Access",
    "Body",
    "Delegation",
    "Genesis",
    "Grant",
    "KeyChange",
    "Policy",
    "Result",
    "Revocation",
    "parse_body",
]

VERSION = 1
KINDS = ("genesis", "key", "policy", "grant", "delegation", "revocation", "access", "result")
OPERATOR_ROLES = ("operator", "decision")
ORIGIN = re.compile(r"[\x21-\x2a\x2c-\x7e]{1,255}")  # printable ASCII, no '+' or space
PRINCIPAL_NAME = re.compile(r"[a-z0-9][a-z0-9._+-]{0,63}(@[a-z0-9][a-z0-9.-]{0,190})?")
LABEL = re.compile(r"[a-z0-9][a-z0-9._:-]{0,63}")
# FORMAT.md §4.4: an agent label is printed wherever a chain is shown, so it is printable
# ASCII only (U+0020 to U+007E): no control, separator, invisible or look-alike character
# can make one label read as another, or move an auditor's cursor.
AGENT_LABEL = re.compile(r"[\x20-\x7e]*")
MAX_AGENT = 128
MAX_ENFORCEMENT = 128
# FORMAT.md §4.8: why a forwarded (or attempted) request brought no HTTP status back.
FAILURES = ("timeout", "unreachable", "bad_response", "cancelled")
CREDENTIAL_FIELDS = (
    "scope",
    "expires_at",
    "not_before",
    "max_uses",
    "rate",
    "max_depth",
    "max_children",
    "task",
)


def _key(value: Any) -> PublicKey:
    return PublicKey.from_b64(expect_str(value, "", max_len=43), what="key")


def _roles(value: Any, allowed: tuple[str, ...] | None, path: str = "") -> tuple[str, ...]:
    if not isinstance(value, list) or not value or len(value) > 16:
        raise EntryFormatError("must be a non-empty list of at most 16 roles", path)
    roles = tuple(expect_str(r, f"{path}[{i}]", pattern=LABEL) for i, r in enumerate(value))
    if list(roles) != sorted(set(roles)):
        raise EntryFormatError("must be sorted and without duplicates", path)
    if allowed is not None:
        for i, role in enumerate(roles):
            if role not in allowed:
                raise EntryFormatError(f"must be one of {', '.join(allowed)}", f"{path}[{i}]")
    return roles


def _agent(f: Fields) -> str | None:
    agent = f.str("agent", required=False, max_len=MAX_AGENT)
    if agent is not None and not AGENT_LABEL.fullmatch(agent):
        bad = next(c for c in agent if not " " <= c <= "~")
        raise EntryFormatError(
            f"holds printable ASCII only (U+0020 to U+007E), not U+{ord(bad):04X}", "agent"
        )
    return agent


def _header(obj: Any, kind: str) -> tuple[Fields, str]:
    f = Fields(obj)
    f.const("kind", kind)
    f.const("v", VERSION)
    return f, f.str("log", pattern=ORIGIN)


@dataclass(frozen=True)
class OperatorKey:
    key: PublicKey
    roles: tuple[str, ...]


@dataclass(frozen=True)
class Genesis:
    """Index 0: the trust anchors. Signed by the log key itself."""

    log: str
    log_key: str  # the log's C2SP verifier-key string; its name is the origin
    keys: tuple[OperatorKey, ...]

    @classmethod
    def parse(cls, obj: Any) -> Genesis:
        f, log = _header(obj, "genesis")
        vkey = f.parsed("log_key", lambda v: parse_vkey(expect_str(v, "", max_len=512)))
        if vkey.name != log:
            raise EntryFormatError("key name must equal the log origin", "log_key")
        raw = f.raw("keys")
        if not isinstance(raw, list) or not 1 <= len(raw) <= 64:
            raise EntryFormatError("must be a list of 1 to 64 keys", "keys")
        keys = []
        for i, item in enumerate(raw):
            k = Fields(item, f"keys[{i}]")
            keys.append(OperatorKey(k.parsed("key", _key), k.parsed("roles", _operator_roles)))
            k.done()
        if not any("operator" in k.roles for k in keys):
            raise EntryFormatError("needs at least one operator key", "keys")
        if len({k.key for k in keys}) != len(keys):
            raise EntryFormatError("lists a key twice", "keys")
        f.done()
        return cls(log, vkey.vkey, tuple(keys))


def _operator_roles(value: Any) -> tuple[str, ...]:
    return _roles(value, OPERATOR_ROLES)


@dataclass(frozen=True)
class KeyChange:
    """``add`` an operator-role key, ``bind`` a principal's name to a key, or ``retire`` a key.

    Signed by an operator key that is active at the entry's index.
    """

    log: str
    op: str
    key: PublicKey
    roles: tuple[str, ...]  # add: operator roles; bind: the principal's organisational roles
    principal: str | None  # bind only

    @classmethod
    def parse(cls, obj: Any) -> KeyChange:
        f, log = _header(obj, "key")
        op = f.choice("op", ("add", "bind", "retire"))
        key = f.parsed("key", _key)
        principal, roles = None, ()
        if op == "add":
            roles = f.parsed("roles", _operator_roles)
        elif op == "bind":
            principal = f.str("principal", pattern=PRINCIPAL_NAME)
            if f.has("roles"):
                roles = f.parsed("roles", lambda v: _roles(v, None))
        f.done()
        return cls(log, op, key, roles, principal)


@dataclass(frozen=True)
class Policy:
    """The organisation's policy document, version numbers strictly increasing. Operator-signed."""

    log: str
    version: int
    document: Mapping[str, Any]

    @classmethod
    def parse(cls, obj: Any) -> Policy:
        f, log = _header(obj, "policy")
        version = f.int("version", 1)
        document = f.object("document")
        f.done()
        return cls(log, version, document)


def _credential(f: Fields) -> Credential:
    for name in CREDENTIAL_FIELDS:
        f.raw(name, required=False)  # mark as read: parse_credential owns these
    return parse_credential(f.obj)


@dataclass(frozen=True)
class Grant:
    """A principal authorises an agent key (``holder``). Signed by a key bound to ``principal``."""

    log: str
    principal: str
    holder: PublicKey
    agent: str | None  # a human-readable label for the holder; carries no authority
    credential: Credential

    @classmethod
    def parse(cls, obj: Any) -> Grant:
        f, log = _header(obj, "grant")
        principal = f.str("principal", pattern=PRINCIPAL_NAME)
        holder = f.parsed("holder", _key)
        agent = _agent(f)
        credential = _credential(f)
        f.done()
        return cls(log, principal, holder, agent, credential)


@dataclass(frozen=True)
class Delegation:
    """A holder derives a narrower credential for another key. Signed by the parent's holder."""

    log: str
    parent: str  # the parent credential's entry id
    holder: PublicKey
    agent: str | None
    credential: Credential

    @classmethod
    def parse(cls, obj: Any) -> Delegation:
        f, log = _header(obj, "delegation")
        parent = f.str("parent", pattern=HEX_ID)
        holder = f.parsed("holder", _key)
        agent = _agent(f)
        credential = _credential(f)
        f.done()
        return cls(log, parent, holder, agent, credential)


@dataclass(frozen=True)
class Revocation:
    """Revokes a credential and its subtree, or every credential bound to a holder key.

    Exactly one of ``credential`` and ``holder`` is set (the ``target`` object).
    """

    log: str
    credential: str | None
    holder: PublicKey | None
    reason: str

    @classmethod
    def parse(cls, obj: Any) -> Revocation:
        f, log = _header(obj, "revocation")
        target = Fields(f.object("target"), "target")
        credential = target.str("credential", required=False, pattern=HEX_ID)
        holder = target.parsed("holder", _key, required=False)
        target.done()
        if (credential is None) == (holder is None):
            raise EntryFormatError("must name exactly one of credential, holder", "target")
        reason = f.str("reason", max_len=512)
        f.done()
        return cls(log, credential, holder, reason)


@dataclass(frozen=True)
class Access:
    """A decision on one invocation, signed by a ``decision`` key (the enforcement point's)."""

    log: str
    invocation: SignedInvocation  # the holder's signed request, verbatim
    context: Mapping[str, Any]  # what the enforcement point asserts about the request
    enforcement: str  # which enforcement point asked
    decision: str
    reason: str
    policy: int  # the policy version applied; 0 when no policy was in force
    upstream_status: int | None  # for forwarded requests, the upstream's HTTP status
    request: Request  # the invocation's request, with the context's asserted attributes
    approval: Approval | None = None  # the principal's approval of this very call (§5.1)

    @classmethod
    def parse(cls, obj: Any, known: Access | None = None) -> Access:
        """Parse an access body. ``known``: an access parsed before whose invocation and
        context, where ``obj`` holds equal ones, are taken as parsed (a decision point
        signing the invocation it has just judged); every other field is checked."""
        f, log = _header(obj, "access")
        if known is not None and _same_json(f.raw("invocation"), known.invocation.obj):
            invocation = known.invocation
        else:
            invocation = f.parsed("invocation", parse_signed_invocation)
        context = f.object("context")
        enforcement = f.str("enforcement", max_len=MAX_ENFORCEMENT)
        decision = f.choice("decision", ("allow", "deny"))
        reason = f.str("reason", max_len=512)
        policy = f.int("policy", 0)
        upstream = f.int("upstream_status", 100, 599, required=False)
        approval = f.parsed("approval", parse_approval, required=False)
        if approval is not None and approval.decision != "approve":
            raise EntryFormatError("must be approve in an access entry", "approval.decision")
        f.done()
        if (
            known is not None
            and invocation is known.invocation
            and _same_json(context, known.context)
        ):
            request = known.request
        else:
            request = f.parsed("context", lambda c: effective_request(invocation, c))
        return cls(
            log,
            invocation,
            context,
            enforcement,
            decision,
            reason,
            policy,
            upstream,
            request,
            approval,
        )


@dataclass(frozen=True)
class Result:
    """What the upstream answered after an allowed access, signed by a ``decision`` key.

    An access entry is logged before the request is forwarded, and entries are
    immutable, so the upstream's answer is an entry of its own: exactly one of
    ``upstream_status`` (the HTTP status that came back) and ``failure`` (why none did).
    """

    log: str
    access: str  # the id of the access entry whose forwarded request this answers
    enforcement: str  # the access entry's enforcement point
    upstream_status: int | None  # 100-599
    failure: str | None  # one of FAILURES

    @classmethod
    def parse(cls, obj: Any) -> Result:
        f, log = _header(obj, "result")
        access = f.str("access", pattern=HEX_ID)
        enforcement = f.str("enforcement", max_len=MAX_ENFORCEMENT)
        status = f.int("upstream_status", 100, 599, required=False)
        failure = f.str("failure", required=False, max_len=32)
        if failure is not None and failure not in FAILURES:
            raise EntryFormatError(f"must be one of {', '.join(FAILURES)}", "failure")
        f.done()
        if status is None and failure is None:  # exactly one of the two
            raise EntryFormatError("is required when there is no failure", "upstream_status")
        if status is not None and failure is not None:
            raise EntryFormatError("must not be given with upstream_status", "failure")
        return cls(log, access, enforcement, status, failure)


Body = Genesis | KeyChange | Policy | Grant | Delegation | Revocation | Access | Result
_PARSERS = {
    "genesis": Genesis.parse,
    "key": KeyChange.parse,
    "policy": Policy.parse,
    "grant": Grant.parse,
    "delegation": Delegation.parse,
    "revocation": Revocation.parse,
    "access": Access.parse,
    "result": Result.parse,
}


def _same_json(a: Any, b: Any) -> bool:
    """The same JSON value: equal canonical bytes (Python's ``==`` has 1 == True)."""
    try:
        return canonical(a) == canonical(b)
    except FormatError:
        return False


def parse_body(obj: Any, known: Access | None = None) -> Body:
    """Parse an entry body (the entry object less ``sigs``) by its ``kind``
    (``known``: see ``Access.parse``)."""
    if not isinstance(obj, Mapping):
        raise EntryFormatError("an entry must be an object")
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in _PARSERS:
        raise EntryFormatError(f"unknown kind {kind!r}", "kind")
    if kind == "access" and known is not None:
        return Access.parse(obj, known)
    return _PARSERS[kind](obj)
