"""The organisation's policy: a small declarative document, logged as a ``policy`` entry.

    {"rules": [
       {"id": "payments-shallow", "match": {"type": "payments"}, "max_chain_depth": 2},
       {"id": "fresh-deletes", "match": {"actions": ["delete"]}, "max_grant_age": 600},
       {"id": "finance-only", "match": {"type": "payments"}, "require_role": "finance"}],
     "enforcement_points": {"gateway-1": {"may_assert": ["received_at", "sender"]}}}

A rule applies to a request when every ``match`` field it names matches
(``type`` equal, ``action`` among ``actions``, each of ``attributes`` present and
within its constraint, as a scope's constraints test: ``{"amount": {"gte": 1001}}``);
an applicable rule denies when:

- ``max_chain_depth``: the chain (grant = 1, each delegation + 1) is deeper;
- ``max_grant_age``: the grant was logged more than that many seconds ago;
- ``require_role``: the principal's identity binding lacks the role;

and with ``require_approval: true`` it holds the call until the principal at the root
of the chain approves that exact invocation in a browser (step-up, POLICY.md
"Approval"); the approval may be used for ``approval_ttl`` seconds (default 300).

``enforcement_points`` names which request attributes each enforcement point
may assert in ``context.attributes``; when the section is present, an
enforcement point not listed may assert none. Every decision names the policy
version it applied (0 when no policy was ever logged). Examples: POLICY.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lineage.verifier.approval import MAX_APPROVAL_TTL
from lineage.verifier.chain import ChainView, CredentialRecord
from lineage.verifier.errors import EntryFormatError
from lineage.verifier.fields import Fields, expect_str
from lineage.verifier.request import Request, constraint_fails
from lineage.verifier.scope import Constraint, _parse_constraint

__all__ = ["APPROVAL_TTL", "PolicyDocument", "Rule", "parse_policy"]

NAME = re.compile(r"[a-z0-9][a-z0-9._:-]{0,63}")
ATTRIBUTE = re.compile(r"[a-z0-9_.:-]{1,64}")  # an attribute name, as scopes spell them
APPROVAL_TTL = 300  # seconds an approval stays usable, unless a rule says otherwise
MAX_MATCH_ATTRIBUTES = 16


@dataclass(frozen=True)
class Rule:
    id: str
    type: str | None
    actions: tuple[str, ...] | None
    max_chain_depth: int | None
    max_grant_age: int | None
    require_role: str | None
    attributes: tuple[tuple[str, Constraint], ...] = ()
    require_approval: bool = False
    approval_ttl: int = APPROVAL_TTL

    def applies(self, request: Request) -> bool:
        if self.type is not None and self.type != request.type:
            return False
        if self.actions is not None and request.action not in self.actions:
            return False
        values = dict(request.attributes)
        return all(
            name in values and constraint_fails(c, values[name]) is None
            for name, c in self.attributes
        )


@dataclass(frozen=True)
class PolicyDocument:
    rules: tuple[Rule, ...]
    enforcement_points: Mapping[str, frozenset[str]] | None

    def asserting_fault(self, enforcement: str, context: Mapping[str, Any]) -> str | None:
        """Why ``enforcement`` may not assert these attributes, or None."""
        asserted = context.get("attributes") or {}
        if self.enforcement_points is None or not asserted:
            return None
        allowed = self.enforcement_points.get(enforcement, frozenset())
        for name in sorted(asserted):
            if name not in allowed:
                return f"enforcement point {enforcement!r} may not assert attribute {name!r}"
        return None

    def approvals(self, request: Request) -> tuple[Rule, ...]:
        """The rules that hold this request for its principal's approval of the call."""
        return tuple(r for r in self.rules if r.require_approval and r.applies(request))

    def fault(
        self, state: ChainView, rec: CredentialRecord, request: Request, index: int, time: int
    ) -> str | None:
        """The first rule this access breaks, as a reason naming the rule, or None."""
        chain = rec.chain()
        for rule in self.rules:
            if not rule.applies(request):
                continue
            if rule.max_chain_depth is not None and len(chain) > rule.max_chain_depth:
                return (
                    f"rule {rule.id}: the chain is {len(chain)} deep, more than "
                    f"{rule.max_chain_depth}"
                )
            if rule.max_grant_age is not None and time - chain[0].time > rule.max_grant_age:
                return (
                    f"rule {rule.id}: the grant is {time - chain[0].time} s old, more than "
                    f"{rule.max_grant_age} s"
                )
            if rule.require_role is not None and rule.require_role not in state.principal_roles(
                chain[0].principal, index
            ):
                return (
                    f"rule {rule.id}: principal {chain[0].principal} lacks role "
                    f"{rule.require_role!r}"
                )
        return None


def _names(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or len(value) > 64:
        raise EntryFormatError("must be a non-empty list of at most 64 names", path)
    return tuple(expect_str(v, f"{path}[{i}]", pattern=NAME) for i, v in enumerate(value))


def _attributes(value: Any, path: str) -> tuple[tuple[str, Constraint], ...]:
    """``match.attributes``: attribute name -> constraint (``eq``, ``in``, ``lte``, ``gte``)."""
    if value is None:
        return ()
    if not isinstance(value, dict) or not value or len(value) > MAX_MATCH_ATTRIBUTES:
        raise EntryFormatError(
            f"must be an object of 1 to {MAX_MATCH_ATTRIBUTES} attribute constraints", path
        )
    out = []
    for name in sorted(value):
        expect_str(name, path, pattern=ATTRIBUTE)
        try:
            out.append((name, _parse_constraint(value[name])))
        except EntryFormatError as exc:
            inner = f".{exc.field}" if exc.field else ""
            message = str(exc)[len(exc.field) + 2 :] if exc.field else str(exc)
            raise EntryFormatError(message, f"{path}.{name}{inner}") from None
    return tuple(out)


def parse_policy(document: Any) -> PolicyDocument:
    """Parse and check a policy document; errors name the field (``rules[0].match``)."""
    f = Fields(document, "document")
    raw_rules = f.raw("rules", required=False) or []
    if not isinstance(raw_rules, list) or len(raw_rules) > 256:
        raise EntryFormatError("must be a list of at most 256 rules", "document.rules")
    rules = []
    for i, raw in enumerate(raw_rules):
        r = Fields(raw, f"document.rules[{i}]")
        rule_id = r.str("id", pattern=NAME)
        match = Fields(r.object("match"), r.at("match"))
        rtype = match.str("type", required=False, pattern=NAME)
        actions = match.raw("actions", required=False)
        actions = _names(actions, match.at("actions")) if actions is not None else None
        attributes = _attributes(match.raw("attributes", required=False), match.at("attributes"))
        match.done()
        depth = r.int("max_chain_depth", 1, 64, required=False)
        age = r.int("max_grant_age", 1, 10**9, required=False)
        role = r.str("require_role", required=False, pattern=NAME)
        approval = r.raw("require_approval", required=False)
        if approval is not None and approval is not True:
            raise EntryFormatError("must be true (or be left out)", r.at("require_approval"))
        ttl = r.int("approval_ttl", 30, MAX_APPROVAL_TTL, required=False)
        r.done()
        if ttl is not None and not approval:
            raise EntryFormatError("needs require_approval", r.at("approval_ttl"))
        if depth is None and age is None and role is None and not approval:
            raise EntryFormatError(
                "a rule needs max_chain_depth, max_grant_age, require_role or require_approval",
                f"document.rules[{i}]",
            )
        rules.append(
            Rule(
                rule_id,
                rtype,
                actions,
                depth,
                age,
                role,
                attributes,
                bool(approval),
                ttl or APPROVAL_TTL,
            )
        )
    eps = f.object("enforcement_points", required=False)
    points = None
    if eps is not None:
        points = {}
        for name, spec in eps.items():
            expect_str(name, "document.enforcement_points", max_len=128)
            s = Fields(spec, f"document.enforcement_points.{name}")
            points[name] = frozenset(_names(s.raw("may_assert"), s.at("may_assert")))
            s.done()
    f.done()
    return PolicyDocument(tuple(rules), points)
