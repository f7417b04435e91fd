"""The organisation's policy (ledger/policy.py): a logged document whose rules the
decision point applies, and whose version every decision names (FORMAT.md §4.3, §4.7).

Rules: ``max_chain_depth``, ``max_grant_age``, ``require_role``, each scoped by
``match``; ``enforcement_points`` limits which attributes a point may assert (D18).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lineage.ledger.errors import RejectedEntry
from lineage.ledger.export import credential_bundle
from lineage.ledger.issuance import bind_principal
from lineage.ledger.policy import PolicyDocument, parse_policy
from lineage.verifier.bodies import grant_body
from lineage.verifier.bundle import verify_bundle
from lineage.verifier.entry import Entry, sign_entry
from lineage.verifier.errors import EntryFormatError, FormatError
from lineage.verifier.keys import SigningKey
from tests.issuance_helpers import ORIGIN, World, key, parent_scope, request, world


@pytest.fixture
def w(tmp_path: Path) -> World:
    world_ = world(tmp_path)
    yield world_
    world_.close()


def rule(rule_id: str, match: dict[str, Any] | None = None, **limits: Any) -> dict[str, Any]:
    return {"id": rule_id, "match": match or {}, **limits}


def _chain(w: World) -> tuple:
    g = w.append(w.grant())
    d = w.append(w.delegate(g, w.agent, max_depth=0))
    return g, d


# -- versions -----------------------------------------------------------------------------


def test_every_decision_names_the_policy_version_in_force(w: World):
    g = w.append(w.grant())
    assert w.decide(w.invoke(w.agent, g.id)).policy == 0
    w.append(w.policy(1, {"rules": []}))
    d1 = w.decide(w.invoke(w.agent, g.id))
    w.append(w.policy(5, {}))
    d5 = w.decide(w.invoke(w.agent, g.id, request(action="delete")))  # a deny names it too
    assert (d1.policy, d5.policy) == (1, 5)
    assert [w.log.leaf(d.index).entry.obj["policy"] for d in (d1, d5)] == [1, 5]
    assert not d5.allowed


@pytest.mark.parametrize("version", [1, 2])
def test_policy_versions_must_increase(w: World, version: int):
    w.append(w.policy(2, {}))
    with pytest.raises(RejectedEntry) as info:
        w.append(w.policy(version, {"rules": []}))
    assert info.value.check == "policy"


def test_a_policy_is_signed_by_an_operator(w: World):
    entry = sign_entry(
        {"kind": "policy", "v": 1, "log": ORIGIN, "version": 1, "document": {}}, [w.alice]
    )
    with pytest.raises(RejectedEntry) as info:
        w.append(entry)
    assert info.value.check == "signature"


@pytest.mark.parametrize(
    ("document", "fieldname"),
    [
        ({"rules": [{"id": "r", "match": {}}]}, "document.rules[0]"),
        ({"rules": [rule("r", max_chain_depth=0)]}, "document.rules[0].max_chain_depth"),
        ({"rules": [rule("r", max_chain_depth=True)]}, "document.rules[0].max_chain_depth"),
        ({"rules": [rule("R", max_chain_depth=1)]}, "document.rules[0].id"),
        ({"rules": [rule("r", {"verb": "x"}, max_chain_depth=1)]}, "document.rules[0].match"),
        ({"rules": [rule("r", {"actions": []}, max_chain_depth=1)]}, None),
        ({"rules": [{**rule("r", max_grant_age=5), "extra": 1}]}, "document.rules[0]"),
        ({"rules": {"id": "r"}}, "document.rules"),
        ({"enforcement_points": {"gw": {}}}, "document.enforcement_points.gw"),
        ({"enforcement_points": {"gw": {"may_assert": ["Bad"]}}}, None),
        ({"other": 1}, "document"),
    ],
)
def test_a_policy_that_does_not_parse_is_refused(
    w: World, document: dict[str, Any], fieldname: str | None
):
    with pytest.raises(FormatError) as parsed:
        parse_policy(document)
    size = w.log.size
    with pytest.raises(RejectedEntry) as info:
        w.append(w.policy(1, document))
    assert info.value.check == "policy"
    assert w.log.size == size
    if fieldname is not None:
        assert (parsed.value.field or "").startswith(fieldname), parsed.value.field
        assert (info.value.field or "").startswith(fieldname)


def test_parse_policy_reads_the_documented_example():
    doc = parse_policy(
        {
            "rules": [
                rule("payments-shallow", {"type": "payments"}, max_chain_depth=2),
                rule("fresh-deletes", {"actions": ["delete"]}, max_grant_age=600),
                rule("finance-only", {"type": "payments"}, require_role="finance"),
            ],
            "enforcement_points": {"gateway-1": {"may_assert": ["received_at", "sender"]}},
        }
    )
    assert isinstance(doc, PolicyDocument)
    assert [r.id for r in doc.rules] == ["payments-shallow", "fresh-deletes", "finance-only"]
    assert doc.rules[1].actions == ("delete",) and doc.rules[0].type == "payments"
    assert doc.enforcement_points == {"gateway-1": frozenset({"received_at", "sender"})}
    assert parse_policy({}).rules == () and parse_policy({}).enforcement_points is None


@pytest.mark.parametrize("document", [None, [], "rules", {"rules": [1]}])
def test_parse_policy_raises_format_errors_only(document: Any):
    with pytest.raises(EntryFormatError):
        parse_policy(document)


# -- rules ------------------------------------------------------------------------------


def test_max_chain_depth(w: World):
    g, d = _chain(w)
    w.append(w.policy(1, {"rules": [rule("shallow", {"type": "email"}, max_chain_depth=1)]}))
    assert w.decide(w.invoke(w.agent, g.id)).allowed
    denied = w.decide(w.invoke(w.reader, d.id))
    assert (denied.allowed, denied.check, denied.policy) == (False, "policy", 1)
    assert "shallow" in denied.reason
    # the deny is logged and replays
    verify_bundle(credential_bundle(w.log, g.id), w.log.log_key)


def test_max_grant_age(w: World):
    g = w.append(w.grant())
    w.clock.advance(100)
    d = w.append(w.delegate(g, w.agent, max_depth=0))
    w.append(w.policy(1, {"rules": [rule("fresh", max_grant_age=300)]}))
    w.clock.advance(200)
    assert w.decide(w.invoke(w.reader, d.id)).allowed  # the grant is 300 s old
    w.clock.advance(1)
    denied = w.decide(w.invoke(w.reader, d.id))  # the grant's age counts, not the child's
    assert (denied.check, "fresh" in denied.reason) == ("policy", True)


def test_require_role(w: World):
    g, _ = _chain(w)
    bob = key("bob@corp")
    w.append(bind_principal(ORIGIN, w.log.keys.operator, "bob@corp", bob.public))
    bobs = w.append(_bob_grant(w, bob))  # bob is bound with no roles
    w.append(w.policy(1, {"rules": [rule("finance-only", require_role="finance")]}))
    assert w.decide(w.invoke(w.agent, g.id)).allowed  # alice is bound with role finance
    denied = w.decide(w.invoke(key("bob's agent"), bobs.id))
    assert (denied.check, "finance-only" in denied.reason) == ("policy", True)
    w.append(w.policy(2, {"rules": [rule("legal-only", require_role="legal")]}))
    assert w.decide(w.invoke(w.agent, g.id)).check == "policy"


def _bob_grant(w: World, bob: SigningKey) -> Entry:
    body = grant_body(
        ORIGIN,
        "bob@corp",
        key("bob's agent").public,
        task={"id": "bob", "description": ""},
        scope=parent_scope(),
        expires_at=w.now + 600,
        max_depth=0,
    )
    return sign_entry(body, [bob])


def test_a_rule_applies_only_where_it_matches(w: World):
    _, d = _chain(w)
    document = {
        "rules": [
            rule("no-deep-sends", {"actions": ["send"]}, max_chain_depth=1),
            rule("no-deep-payments", {"type": "payments"}, max_chain_depth=1),
        ]
    }
    w.append(w.policy(1, document))
    assert w.decide(w.invoke(w.reader, d.id)).allowed  # a read: neither rule applies
    denied = w.decide(w.invoke(w.reader, d.id, request(action="send")))
    assert (denied.check, "no-deep-sends" in denied.reason) == ("policy", True)


def test_scope_is_judged_before_policy(w: World):
    g, _ = _chain(w)
    w.append(w.policy(1, {"rules": [rule("none", max_chain_depth=1, require_role="legal")]}))
    assert w.decide(w.invoke(w.agent, g.id, request(action="delete"))).check == "scope"


# -- what an enforcement point may assert -------------------------------------------------


@pytest.fixture
def points(w: World) -> Any:
    g = w.append(w.grant())
    w.append(w.policy(1, {"enforcement_points": {"gw-1": {"may_assert": ["sender"]}}}))
    return g


def test_a_listed_point_may_assert_its_attributes(w: World, points: Any):
    d = w.decide(w.invoke(w.agent, points.id), {"attributes": {"sender": "a@vendor.example"}})
    assert d.allowed


def test_a_point_may_not_assert_other_attributes(w: World, points: Any):
    context = {"attributes": {"received_at": 1767225000, "sender": "a@vendor.example"}}
    d = w.decide(w.invoke(w.agent, points.id), context)
    assert (d.check, "received_at" in d.reason) == ("policy", True)


def test_an_unlisted_point_may_assert_nothing(w: World, points: Any):
    context = {"attributes": {"sender": "a@vendor.example"}}
    d = w.decide(w.invoke(w.agent, points.id), context, enforcement="gw-2")
    assert (d.check, "gw-2" in d.reason) == ("policy", True)
    # asserting nothing, any point may ask
    assert w.decide(w.invoke(w.agent, points.id), {}, enforcement="gw-2").allowed
