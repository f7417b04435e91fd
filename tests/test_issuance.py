"""Issuance: every widening refused at append, naming the field; the operator's ceilings;
and the ledger and the offline verifier agree on what is valid (SCOPE.md §4, FORMAT.md §8).

The parent of every delegation here sets every limit, so that each one can be widened:
``PARENT`` below. A child is built from one choice per field out of ``OPTIONS``; each
field has narrowing (or equal) choices and widening ones, and a widening choice names
the field the ledger must report (the first in SCOPE.md §4's order).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage.ledger.config import Settings
from lineage.ledger.errors import RejectedEntry
from lineage.ledger.export import credential_bundle
from lineage.verifier.bundle import verify_bundle
from lineage.verifier.entry import Entry
from lineage.verifier.errors import ChainError
from tests.budget import examples
from tests.issuance_helpers import MAIL, T0, World, forced_bundle, key, world

G = T0 - 86400  # the parent's received_at bound
A, B, C = "a@vendor.example", "b@vendor.example", "c@vendor.example"
OTHER = "https://other.example:443"
DROP = "<drop>"  # a choice that leaves the field out


def parent_fields() -> dict[str, Any]:
    """A grant setting every limit, with one detail constraining four attributes."""
    return {
        "task": {"id": "t1", "description": "parent"},
        "scope": [
            {
                "type": "email",
                "actions": ["read", "send"],
                "locations": [MAIL],
                "resources": ["mailbox:alice/*"],
                "constraints": {
                    "folder": {"eq": "inbox"},
                    "received_at": {"gte": G},
                    "sender": {"in": [A, B]},
                    "size": {"lte": 100},
                },
            }
        ],
        "expires_at": T0 + 900,
        "not_before": T0 - 100,
        "max_uses": 20,
        "rate": {"count": 10, "window": 60},
        "max_depth": 3,
        "max_children": 1000,
    }


# field -> (narrowing choices, [(widening choice, the field the ledger must name)]).
# The first narrowing choice is the default. Order = the order SCOPE.md §4 checks in.
OPTIONS: dict[str, tuple[list[Any], list[tuple[Any, str]]]] = {
    "actions": (
        [["read"], ["read", "send"], ["send"]],
        [(["delete", "read"], "scope[0].actions"), (["read", "send", "write"], "scope[0].actions")],
    ),
    "locations": (
        [[MAIL]],
        [([MAIL, OTHER], "scope[0].locations"), (DROP, "scope[0].locations")],
    ),
    "resources": (
        [["mailbox:alice/inbox/*"], ["mailbox:alice/*"], ["mailbox:alice/inbox/msg-1"]],
        [
            (["mailbox:*"], "scope[0].resources"),
            (["mailbox:alice/*", "mailbox:bob/*"], "scope[0].resources"),
            (["mailbox:alice"], "scope[0].resources"),
            (DROP, "scope[0].resources"),
        ],
    ),
    "folder": (
        [{"eq": "inbox"}, {"in": ["inbox"]}],
        [
            ({"eq": "spam"}, "scope[0].constraints.folder"),
            ({"in": ["inbox", "spam"]}, "scope[0].constraints.folder"),
            (DROP, "scope[0].constraints.folder"),
        ],
    ),
    "received_at": (
        [{"gte": G}, {"gte": G + 3600}, {"eq": G + 5}, {"in": [G, G + 1]}],
        [
            ({"gte": G - 1}, "scope[0].constraints.received_at"),
            ({"lte": T0}, "scope[0].constraints.received_at"),
            ({"in": [G - 1, G]}, "scope[0].constraints.received_at"),
            (DROP, "scope[0].constraints.received_at"),
        ],
    ),
    "sender": (
        [{"in": [A, B]}, {"in": [A]}, {"eq": B}, {"eq": A, "in": [A, B]}],
        [
            ({"in": [A, B, C]}, "scope[0].constraints.sender"),
            ({"eq": C}, "scope[0].constraints.sender"),
            (DROP, "scope[0].constraints.sender"),
        ],
    ),
    "size": (
        [{"lte": 100}, {"lte": 10}, {"in": [1, 100]}, {"eq": 7}],
        [
            ({"lte": 101}, "scope[0].constraints.size"),
            ({"gte": 0}, "scope[0].constraints.size"),
            ({"in": [1, 101]}, "scope[0].constraints.size"),
            ({"eq": "7"}, "scope[0].constraints.size"),
            (DROP, "scope[0].constraints.size"),
        ],
    ),
    "second_detail": (
        [DROP, "email-send"],
        [("files", "scope[1]"), ("email-delete", "scope[1].actions")],
    ),
    "max_depth": ([2, 0, 1], [(3, "max_depth"), (4, "max_depth")]),
    "rate": (
        [{"count": 10, "window": 60}, {"count": 1, "window": 600}],
        [
            (DROP, "rate"),
            ({"count": 11, "window": 60}, "rate.count"),
            ({"count": 10, "window": 59}, "rate.window"),
        ],
    ),
    "expires_at": ([T0 + 900, T0 + 600], [(T0 + 901, "expires_at")]),
    "not_before": (
        [T0 - 100, T0 - 50],
        [(T0 - 101, "not_before"), (DROP, "not_before")],
    ),
    "max_uses": ([20, 5], [(21, "max_uses"), (DROP, "max_uses")]),
    "max_children": ([1000, 0, 3], [(1001, "max_children"), (DROP, "max_children")]),
    "task": (
        ["t1/read", "t1", "t1/a/b"],
        [("t10", "task.id"), ("t2", "task.id"), ("x/t1", "task.id")],
    ),
}

CONSTRAINTS = ("folder", "received_at", "sender", "size")


def _detail(choice: dict[str, Any]) -> dict[str, Any]:
    detail: dict[str, Any] = {"type": "email", "actions": choice["actions"]}
    for name in ("locations", "resources"):
        if choice[name] != DROP:
            detail[name] = choice[name]
    constraints = {c: choice[c] for c in CONSTRAINTS if choice[c] != DROP}
    if constraints:
        detail["constraints"] = constraints
    return detail


def child_fields(choice: dict[str, Any]) -> dict[str, Any]:
    """The credential fields of a child made of one choice per field of ``OPTIONS``."""
    first = _detail(choice)
    scope = [first]
    extra = choice["second_detail"]
    if extra in ("email-send", "email-delete"):
        action = "send" if extra == "email-send" else "delete"
        scope.append({**first, "actions": [action]})
    elif extra == "files":
        scope.append({"type": "files", "actions": ["read"]})
    out = {
        "task": {"id": choice["task"], "description": "child"},
        "scope": scope,
        "expires_at": choice["expires_at"],
        "max_depth": choice["max_depth"],
    }
    for name in ("not_before", "max_uses", "rate", "max_children"):
        if choice[name] != DROP:
            out[name] = choice[name]
    return out


def default_choice(**over: Any) -> dict[str, Any]:
    choice = {name: narrow[0] for name, (narrow, _) in OPTIONS.items()}
    choice.update(over)
    return choice


WIDENINGS = [
    pytest.param(name, value, fieldname, id=f"{name}-{i}-{fieldname}")
    for name, (_, wide) in OPTIONS.items()
    for i, (value, fieldname) in enumerate(wide)
]
NARROWINGS = [
    pytest.param(name, value, id=f"{name}-{i}")
    for name, (narrow, _) in OPTIONS.items()
    for i, value in enumerate(narrow[1:])
]


@pytest.fixture
def w(tmp_path: Path) -> World:
    world_ = world(tmp_path)
    yield world_
    world_.close()


@pytest.fixture
def parent(w: World) -> Entry:
    entry = w.grant(**parent_fields())
    w.append(entry)
    return entry


def _child(w: World, parent: Entry, choice: dict[str, Any]) -> Entry:
    return w.delegate(parent, w.agent, **child_fields(choice))


# -- every widening, one field at a time -------------------------------------------------


def test_the_default_child_is_accepted_and_its_bundle_verifies(w: World, parent: Entry):
    child = w.append(_child(w, parent, default_choice()))
    assert not child.existing
    vb = verify_bundle(credential_bundle(w.log, child.id), w.log.log_key)
    assert [r.id for r in vb.chains()[0]] == [parent.id, child.id]


@pytest.mark.parametrize(("name", "value"), NARROWINGS)
def test_each_narrowing_is_accepted(w: World, parent: Entry, name: str, value: Any):
    child = w.append(_child(w, parent, default_choice(**{name: value})))
    assert w.log.state().credential(child.id).parent.id == parent.id


@pytest.mark.parametrize(("name", "value", "fieldname"), WIDENINGS)
def test_each_widening_is_refused_naming_the_field(
    w: World, parent: Entry, name: str, value: Any, fieldname: str
):
    size = w.log.size
    with pytest.raises(RejectedEntry) as info:
        w.append(_child(w, parent, default_choice(**{name: value})))
    assert info.value.check == "attenuation"
    assert info.value.field == fieldname
    assert w.log.size == size


def test_a_parent_with_max_depth_zero_may_not_delegate(w: World):
    g = w.append(w.grant(**{**parent_fields(), "max_depth": 0}))
    with pytest.raises(RejectedEntry) as info:
        w.append(w.delegate(g, w.agent, **child_fields(default_choice(max_depth=0))))
    assert (info.value.check, info.value.field) == ("attenuation", "max_depth")


def test_depth_runs_out_down_a_chain(w: World):
    g = w.append(w.grant(max_depth=2))
    d1 = w.append(w.delegate(g, w.agent, max_depth=1))
    d2 = w.append(
        w.delegate(
            d1,
            w.reader,
            w.helper,
            max_depth=0,
            task={"id": "inbox-triage/read/x", "description": ""},
        )
    )
    with pytest.raises(RejectedEntry) as info:
        w.append(
            w.delegate(
                d2,
                w.helper,
                key("leaf"),
                max_depth=0,
                task={"id": "inbox-triage/read/x", "description": ""},
            )
        )
    assert info.value.field == "max_depth"
    assert len(w.log.state().credential(d2.id).chain()) == 3


def test_the_children_budget_refuses_the_next_child(w: World):
    g = w.append(w.grant(max_children=2))
    holders = [key(f"child {i}") for i in range(3)]
    for h in holders[:2]:
        w.append(w.delegate(g, w.agent, h, max_children=0))
    size = w.log.size
    with pytest.raises(RejectedEntry) as info:
        w.append(w.delegate(g, w.agent, holders[2], max_children=0))
    assert info.value.check == "budget"
    assert "max_children" in str(info.value)
    assert w.log.size == size
    # a grandchild does not spend the grant's budget on direct children
    assert w.log.state().children(g.id) == 2


def test_the_children_budget_names_the_field(w: World):
    g = w.append(w.grant(max_children=0))
    with pytest.raises(RejectedEntry) as info:
        w.append(w.delegate(g, w.agent, max_children=0))
    assert info.value.field == "max_children"


def test_a_child_may_not_be_signed_by_anyone_but_the_parent_holder(w: World, parent: Entry):
    with pytest.raises(RejectedEntry) as info:
        w.append(w.delegate(parent, w.alice, **child_fields(default_choice())))
    assert info.value.check == "signature"


def test_a_grant_needs_the_principal_key(w: World):
    with pytest.raises(RejectedEntry) as info:
        w.append(w.grant(signer=key("mallory")))
    assert info.value.check == "signature"


def test_a_grant_after_its_own_expiry_is_refused(w: World):
    with pytest.raises(RejectedEntry) as info:
        w.append(w.grant(expires_at=T0))
    assert info.value.check == "expired"


def test_a_delegation_under_an_expired_parent_is_refused(w: World):
    g = w.append(w.grant(expires_at=T0 + 100))
    w.clock.advance(100)
    with pytest.raises(RejectedEntry) as info:
        w.append(w.delegate(g, w.agent, expires_at=T0 + 100))
    assert info.value.check == "expired"


def test_a_delegation_under_a_parent_not_yet_valid_is_refused(w: World):
    g = w.append(w.grant(not_before=T0 + 50))
    with pytest.raises(RejectedEntry) as info:
        w.append(w.delegate(g, w.agent, not_before=T0 + 50))
    assert info.value.check == "not-yet-valid"
    w.clock.advance(50)
    assert not w.append(w.delegate(g, w.agent, not_before=T0 + 50)).existing


# -- the operator's ceilings: refused, never clipped ------------------------------------


CEILINGS = Settings(ttl_default=300, ttl_max=1000, single_use_ttl_max=30, max_depth=3)


@pytest.fixture
def capped(tmp_path: Path) -> World:
    world_ = world(tmp_path, CEILINGS)
    yield world_
    world_.close()


@pytest.mark.parametrize(
    ("fields", "fieldname"),
    [
        ({"expires_at": T0 + 1001}, "expires_at"),
        ({"expires_at": T0 + 31, "max_uses": 1}, "expires_at"),
        ({"max_depth": 4}, "max_depth"),
    ],
    ids=["ttl_max", "single_use_ttl_max", "max_depth"],
)
def test_ceilings_refuse_a_grant(capped: World, fields: dict[str, Any], fieldname: str):
    size = capped.log.size
    entry = capped.grant(**fields)
    with pytest.raises(RejectedEntry) as info:
        capped.append(entry)
    assert (info.value.check, info.value.field) == ("ceiling", fieldname)
    assert capped.log.size == size
    assert capped.log.store.find(entry.id) is None  # not appended in a clipped form either


@pytest.mark.parametrize(
    "fields",
    [
        {"expires_at": T0 + 1000},
        {"expires_at": T0 + 30, "max_uses": 1},
        {"expires_at": T0 + 1000, "max_uses": 2},
        {"max_depth": 3, "expires_at": T0 + 60},
    ],
    ids=["ttl_max", "single_use_ttl_max", "two-uses-long", "max_depth"],
)
def test_ceilings_accept_the_bound_itself(capped: World, fields: dict[str, Any]):
    entry = capped.grant(**fields)
    assert capped.append(entry).id == entry.id


def test_ceilings_apply_to_delegations_and_count_from_the_log_time(capped: World):
    g = capped.append(capped.grant(expires_at=T0 + 1000, max_depth=3))
    capped.clock.advance(100)  # the child may live until T0 + 1000: 900 s from now
    single = capped.delegate(g, capped.agent, expires_at=T0 + 131, max_uses=1, max_depth=0)
    with pytest.raises(RejectedEntry) as info:
        capped.append(single)
    assert (info.value.check, info.value.field) == ("ceiling", "expires_at")
    ok = capped.delegate(g, capped.agent, expires_at=T0 + 130, max_uses=1, max_depth=0)
    assert capped.append(ok).id == ok.id


# -- the ledger and the offline verifier agree (hypothesis, a real SQLite file) ----------


def _expected_field(choice: dict[str, Any]) -> str | None:
    """The first field SCOPE.md §4 reports for this child, or None if it is covered."""
    wide = {name: dict((repr(v), f) for v, f in OPTIONS[name][1]) for name in OPTIONS}
    order = [
        "actions",
        "locations",
        "resources",
        *CONSTRAINTS,
        "second_detail",
        "max_depth",
        "rate:drop",
        "expires_at",
        "not_before",
        "max_uses",
        "rate",
        "max_children",
        "task",
    ]
    for name in order:
        if name == "rate:drop":
            if choice["rate"] == DROP:
                return "rate"
            continue
        found = wide[name].get(repr(choice[name]))
        if found is not None:
            return found
    return None


def _choices() -> st.SearchStrategy[dict[str, Any]]:
    def field(name: str) -> st.SearchStrategy[Any]:
        narrow, wide = OPTIONS[name]
        # mostly narrow, so covered children are common too
        return st.one_of(
            st.sampled_from(narrow), st.sampled_from(narrow), st.sampled_from([v for v, _ in wide])
        )

    return st.fixed_dictionaries({name: field(name) for name in OPTIONS})


def test_widening_table_is_consistent():
    """The oracle: a default child is covered; each single widening names its field."""
    assert _expected_field(default_choice()) is None
    for name, (_, wide) in OPTIONS.items():
        for value, fieldname in wide:
            assert _expected_field(default_choice(**{name: value})) == fieldname


def test_ledger_and_verifier_agree_on_every_child(tmp_path: Path):
    w = world(tmp_path)
    parent = w.grant(**parent_fields())
    w.append(parent)
    seen = {"accepted": 0, "refused": 0}

    @settings(
        max_examples=examples(150),
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(_choices())
    def check(choice: dict[str, Any]) -> None:
        child = _child(w, parent, choice)
        expected = _expected_field(choice)
        try:
            appended = w.append(child)
        except RejectedEntry as exc:
            seen["refused"] += 1
            assert (exc.check, exc.field) == ("attenuation", expected)
            # forced into a correctly proved bundle, the verifier refuses it too
            with pytest.raises(ChainError) as info:
                verify_bundle(forced_bundle(w.log, [child], w.now), w.log.log_key)
            assert (info.value.check, info.value.field) == ("attenuation", expected)
            assert info.value.entry_id == child.id
            return
        seen["accepted"] += 1
        assert expected is None, f"accepted a child widening {expected}"
        vb = verify_bundle(credential_bundle(w.log, appended.id), w.log.log_key.vkey)
        assert vb.replay.credentials[child.id].parent.id == parent.id

    try:
        check()
    finally:
        w.close()
    assert seen["accepted"] and seen["refused"]
