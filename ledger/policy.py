"""The organisation's policy: a small declarative document, logged as a ``policy`` entry.

    {"rules": [
       {"id": "payments-shallow", "match": {"type": "payments"}, "max_chain_depth": 2},
       {"id": "fresh-deletes", "match": {"actions": ["delete"]}, "max_grant_age": 600},
       {"id": "finance-only", "match": {"type": "payments"}, "require_role": "finance"}],
     "enforcement_points": {"gateway-1": {"may_assert": ["received_at", "sender"]}}}

A rule applies to a request when every ``match`` field it names matches
(``type`` equal, ``action`` among ``actions``); an applicable rule denies when:

- ``max_chain_depth``: the chain (grant = 1, each delegation + 1) is deeper;
- ``max_grant_age``: the grant was logged more than that many seconds ago;
- ``require_role``: the principal's identity binding lacks the role.

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

from lineage.verifier.chain import ChainView, CredentialRecord
from lineage.verifier.errors import EntryFormatError
from lineage.verifier.fields import Fields, expect_str
from lineage.verifier.request import Request

__all__ = ["PolicyDocument", "Rule", "parse_policy"]

NAME = re.compile(r"[a-z0-9][a-z0-9._:-]{0,63}")


@dataclass(frozen=True)
class Rule:
    id: str
    type: str | None
    actions: tuple[str, ...] | None
    max_chain_depth: int | None
    max_grant_age: int | None
    require_role: str | None

    def applies(self, request: Request) -> bool:
        return (self.type is None or self.type == request.type) and (
            self.actions is None or request.action in self.actions
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
        match.done()
        depth = r.int("max_chain_depth", 1, 64, required=False)
        age = r.int("max_grant_age", 1, 10**9, required=False)
        role = r.str("require_role", required=False, pattern=NAME)
        r.done()
        if depth is None and age is None and role is None:
            raise EntryFormatError(
                "a rule needs max_chain_depth, max_grant_age or require_role",
                f"document.rules[{i}]",
            )
        rules.append(Rule(rule_id, rtype, actions, depth, age, role))
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
