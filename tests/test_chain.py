"""Adversarial tests of replay (docs/FORMAT.md §8): who may sign what, and every chain's limits.

Each test builds a small log with ``fixtures.generate`` (fixed keys, fixed clock), replays
it with ``lineage.verifier.chain.Replay`` and checks that the entry that breaks a rule, and only
that one, is refused with the check FORMAT.md §8 names. Every refusal test has a twin
that shows the same log without the fault replays cleanly, so a test cannot pass merely
because something earlier was broken.
"""

from __future__ import annotations

from typing import Any

import pytest

from fixtures import generate as g
from lineage.verifier.chain import Replay
from lineage.verifier.entry import Entry, entry_from_json, sign_entry
from lineage.verifier.errors import ChainError, EntryFormatError
from lineage.verifier.keys import ENTRY_CONTEXT, SigningKey, b64u_encode
from lineage.verifier.signed import signed_message
from tests.state_twin import assert_agree, twin_replay

T0 = g.T0
OP2 = SigningKey(g.seed("operator-2"))
BOB = SigningKey(g.seed("bob@corp"))
CAROL = SigningKey(g.seed("agent:carol"))  # a fourth agent, below the drafter
DAVE = SigningKey(g.seed("agent:dave"))


# --- building logs -------------------------------------------------------------------------------


def new_log() -> g.Log:
    """genesis (0), alice bound (1), policy 1 (2)."""
    log = g.Log()
    log.append(g.genesis(), T0)
    log.append(g.bind_alice(), T0 + 1)
    log.append(g.policy(), T0 + 2)
    return log


def key_entry(op: str, key: SigningKey, signer: SigningKey, **fields: Any) -> Entry:
    return sign_entry(g.body("key", op=op, key=key.public.b64, **fields), [signer])


def add_operator(key: SigningKey, signer: SigningKey = g.OPERATOR, roles=("operator",)):
    return key_entry("add", key, signer, roles=list(roles))


def bind(key: SigningKey, principal: str, signer: SigningKey = g.OPERATOR, **fields: Any):
    return key_entry("bind", key, signer, principal=principal, **fields)


def retire(key: SigningKey, signer: SigningKey = g.OPERATOR) -> Entry:
    return key_entry("retire", key, signer)


def policy(version: int, signer: SigningKey = g.OPERATOR) -> Entry:
    return sign_entry(g.body("policy", version=version, document={}), [signer])


def revoke(signer: SigningKey, reason: str = "revoked", **target: str) -> Entry:
    return sign_entry(g.body("revocation", target=target, reason=reason), [signer])


def deleg(parent: Entry, signer: SigningKey, holder: SigningKey, **over: Any) -> Entry:
    """A delegation of the reader's shape (``g.delegation``) to ``holder``."""
    over.setdefault("agent", g.DROP)
    return g.delegation(parent, signer, holder=holder.public.b64, **over)


def replay(log: g.Log) -> Replay:
    """Replay ``log`` in memory, and into the ledger's SQLite chain state: they agree."""
    r = Replay(g.LOG.verifier)
    try:
        r.apply_all(enumerate(log.leaves))
    except ChainError as exc:
        view, twin, _ = twin_replay(g.LOG.verifier, log.leaves)
        assert twin is not None and (twin.check, twin.entry_id) == (exc.check, exc.entry_id)
        assert_agree(r, view)
        raise
    view, twin, _ = twin_replay(g.LOG.verifier, log.leaves)
    assert twin is None, twin
    assert_agree(r, view)
    return r


def refused(log: g.Log, check: str, index: int | None = None) -> ChainError:
    """Replay ``log``: it must fail ``check`` at ``index`` (default: its last leaf), in
    memory and in the ledger's chain state alike."""
    index = len(log.leaves) - 1 if index is None else index
    with pytest.raises(ChainError) as info:
        replay(log)
    err = info.value
    assert err.check == check, str(err)
    assert err.entry_id == log.leaves[index].entry.id, f"failed at the wrong entry: {err}"
    return err


def ok_then_refused(build, check: str, index: int | None = None) -> ChainError:
    """``build(fault=False)`` replays; ``build(fault=True)`` fails ``check``."""
    replay(build(False))
    return refused(build(True), check, index)


def granted(**over: Any) -> tuple[g.Log, Entry]:
    """new_log() plus alice's grant to the triage agent at index 3 (time T0 + 10)."""
    log = new_log()
    grant = log.append(g.grant(**over), T0 + 10)
    return log, grant


# --- the base story and the genesis --------------------------------------------------------------


def test_base_story_replays():
    log = g.story(g.revocation_story)
    r = replay(log)
    assert r.size == len(log.leaves)
    grant, child = log.leaves[3].entry, log.leaves[4].entry
    assert set(r.credentials) == {grant.id, child.id}
    assert r.credentials[child.id].chain() == [r.credentials[grant.id], r.credentials[child.id]]
    assert r.children(grant.id) == 1
    assert r.use_times[grant.id] == [T0 + 61]  # the later deny does not count
    assert r.revoked == {grant.id: 6}
    assert r.policy_version == 1


def test_log_must_begin_with_genesis():
    log = g.story()
    r = Replay(g.LOG.verifier)
    with pytest.raises(ChainError) as info:
        r.apply(1, log.leaves[1])
    assert info.value.check == "genesis"
    r = Replay(g.LOG.verifier)
    with pytest.raises(ChainError) as info:
        r.apply(0, log.leaves[1])  # a key entry claiming index 0
    assert info.value.check == "genesis"


def test_second_genesis_is_refused():
    """Another genesis later is ``genesis``; the same genesis again is ``duplicate`` (§8 step 0)."""
    other = sign_entry(
        g.body(
            "genesis",
            log_key=g.LOG.verifier.vkey,
            keys=[{"key": OP2.public.b64, "roles": ["operator"]}],
        ),
        [g.LOG_ENTRY_KEY],
    )
    log = new_log()
    log.append(other, T0 + 3)
    refused(log, "genesis")
    log = new_log()
    log.append(g.genesis(), T0 + 3)
    refused(log, "duplicate")


def test_genesis_must_name_and_be_signed_by_the_trusted_key():
    other = g.Signer(g.ORIGIN, g.seed("another log"))
    wrong_key = sign_entry(
        g.body(
            "genesis",
            log_key=other.verifier.vkey,
            keys=[{"key": g.OPERATOR.public.b64, "roles": ["operator"]}],
        ),
        [SigningKey(g.seed("another log"))],
    )
    log = g.Log()
    log.append(wrong_key, T0)
    refused(log, "log-key")
    right_key_wrong_signer = sign_entry(
        {k: v for k, v in g.genesis().obj.items() if k != "sigs"}, [g.OPERATOR]
    )
    log = g.Log()
    log.append(right_key_wrong_signer, T0)
    refused(log, "signature")


# --- key authority -------------------------------------------------------------------------------


def test_key_entry_signed_by_a_decision_key_is_refused():
    def build(fault: bool) -> g.Log:
        log = new_log()
        log.append(bind(BOB, "bob@corp", g.DECISION if fault else g.OPERATOR), T0 + 3)
        return log

    ok_then_refused(build, "signature")


def test_key_entry_signed_by_a_principal_is_refused():
    def build(fault: bool) -> g.Log:
        log = new_log()
        log.append(bind(BOB, "bob@corp", g.ALICE if fault else g.OPERATOR), T0 + 3)
        return log

    ok_then_refused(build, "signature")


def test_key_entry_signed_by_the_key_it_binds_is_refused():
    log = new_log()
    log.append(bind(BOB, "bob@corp", BOB), T0 + 3)
    refused(log, "signature")


def test_principal_bound_with_an_operator_role_is_no_operator():
    """A bind's roles are organisational: "operator" there grants no operator authority."""
    log = new_log()
    log.append(bind(BOB, "bob@corp", roles=["operator"]), T0 + 3)
    replay(log)
    log.append(policy(2, BOB), T0 + 4)
    refused(log, "signature")
    log = new_log()
    log.append(bind(BOB, "bob@corp", roles=["operator"]), T0 + 3)
    log.append(retire(g.OPERATOR), T0 + 4)  # bob does not count as another operator
    refused(log, "key")


def test_retired_principal_key_cannot_grant():
    def build(fault: bool) -> g.Log:
        log = new_log()
        if fault:
            log.append(retire(g.ALICE), T0 + 3)
        log.append(g.grant(), T0 + 10)
        return log

    ok_then_refused(build, "signature")


def test_rotated_principal_key():
    """alice rotates: the new key grants, the old one no longer does."""
    alice2 = SigningKey(g.seed("alice@corp 2"))
    log = new_log()
    log.append(bind(alice2, "alice@corp"), T0 + 3)
    log.append(retire(g.ALICE), T0 + 4)
    log.append(g.grant(alice2), T0 + 10)
    replay(log)
    log.append(g.grant(g.ALICE, agent="again"), T0 + 11)
    refused(log, "signature")


def test_grant_signed_by_another_principal_is_refused():
    def build(fault: bool) -> g.Log:
        log = new_log()
        log.append(bind(BOB, "bob@corp"), T0 + 3)
        log.append(g.grant(BOB, principal="bob@corp" if not fault else "alice@corp"), T0 + 10)
        return log

    ok_then_refused(build, "signature")


def test_grant_signed_by_an_operator_or_the_log_key_is_refused():
    for signer in (g.OPERATOR, g.DECISION, g.LOG_ENTRY_KEY, g.AGENT):
        log = new_log()
        log.append(g.grant(signer), T0 + 10)
        refused(log, "signature")


def test_grant_by_a_principal_not_yet_bound_is_refused():
    log = g.Log()
    log.append(g.genesis(), T0)
    log.append(g.grant(), T0 + 10)
    refused(log, "signature")


def test_retiring_the_last_operator_key_is_refused():
    log = new_log()
    log.append(retire(g.OPERATOR), T0 + 3)
    refused(log, "key")


def test_retiring_an_operator_when_another_exists():
    log = new_log()
    log.append(add_operator(OP2), T0 + 3)
    log.append(retire(g.OPERATOR, OP2), T0 + 4)
    replay(log)
    log.append(retire(OP2, OP2), T0 + 5)  # now the last one
    refused(log, "key")


def test_retired_operator_key_cannot_sign():
    def build(fault: bool) -> g.Log:
        log = new_log()
        log.append(add_operator(OP2), T0 + 3)
        log.append(retire(g.OPERATOR, OP2), T0 + 4)
        log.append(policy(2, g.OPERATOR if fault else OP2), T0 + 5)
        return log

    ok_then_refused(build, "signature")
    log = new_log()
    log.append(add_operator(OP2), T0 + 3)
    log.append(retire(g.OPERATOR, OP2), T0 + 4)
    log.append(bind(BOB, "bob@corp", g.OPERATOR), T0 + 5)
    refused(log, "signature")


def test_a_key_signs_only_after_the_entry_that_adds_it():
    log = new_log()
    log.append(add_operator(OP2, OP2), T0 + 3)  # cannot vouch for itself
    refused(log, "signature")
    log = new_log()
    log.append(add_operator(OP2), T0 + 3)
    log.append(policy(2, OP2), T0 + 4)
    assert replay(log).policy_version == 2


def test_retired_decision_key_cannot_sign_an_access():
    def build(fault: bool) -> g.Log:
        log, grant = granted()
        log.append(add_operator(DAVE, roles=["decision"]), T0 + 11)
        log.append(retire(g.DECISION), T0 + 12)
        log.append(g.access(grant, g.AGENT, 1, signer=g.DECISION if fault else DAVE), T0 + 61)
        return log

    ok_then_refused(build, "signature")


def test_rebinding_an_active_key_is_refused():
    log = new_log()
    log.append(bind(g.ALICE, "alice@corp"), T0 + 3)
    refused(log, "key")
    log = new_log()
    log.append(bind(g.ALICE, "mallory@corp"), T0 + 3)
    refused(log, "key")
    log = new_log()
    log.append(add_operator(g.ALICE), T0 + 3)  # a principal's key made an operator
    refused(log, "key")
    log = new_log()
    log.append(add_operator(g.DECISION), T0 + 3)  # a genesis key added again
    refused(log, "key")
    log = new_log()
    log.append(bind(g.OPERATOR, "op@corp"), T0 + 3)
    refused(log, "key")


def test_rebinding_a_retired_key_is_allowed():
    log = new_log()
    log.append(retire(g.ALICE), T0 + 3)
    log.append(bind(g.ALICE, "alice@corp"), T0 + 4)
    log.append(g.grant(), T0 + 10)
    replay(log)


def test_retiring_a_key_that_is_not_active_is_refused():
    log = new_log()
    log.append(retire(BOB), T0 + 3)
    refused(log, "key")
    log = new_log()
    log.append(add_operator(OP2), T0 + 3)
    log.append(retire(g.ALICE), T0 + 4)
    log.append(retire(g.ALICE, OP2), T0 + 5)  # another entry retiring the same key again
    refused(log, "key")
    log = new_log()
    log.append(retire(g.ALICE), T0 + 3)
    log.append(retire(g.ALICE), T0 + 4)  # the same entry again
    refused(log, "duplicate")


def test_policy_versions_must_increase():
    def build(version: int) -> g.Log:
        log = new_log()  # policy 1 at index 2
        log.append(policy(version), T0 + 3)
        return log

    assert replay(build(2)).policy_version == 2
    assert replay(build(7)).policy_version == 7  # gaps are fine
    refused(build(1), "policy")
    log = build(3)
    log.append(policy(2), T0 + 4)
    refused(log, "policy")


def test_policy_signed_by_a_decision_key_is_refused():
    log = new_log()
    log.append(policy(2, g.DECISION), T0 + 3)
    refused(log, "signature")


# --- grants and delegations in time --------------------------------------------------------------


def test_grant_after_its_own_expiry_is_refused():
    def build(fault: bool) -> g.Log:
        log = new_log()
        log.append(g.grant(expires_at=T0 + 100), T0 + (100 if fault else 99))
        return log

    ok_then_refused(build, "expired")


def test_delegation_after_its_own_expiry_is_refused():
    def build(fault: bool) -> g.Log:
        log, grant = granted()
        log.append(g.delegation(grant, expires_at=T0 + 50), T0 + (50 if fault else 49))
        return log

    ok_then_refused(build, "expired")


def test_delegation_after_the_parent_expired_is_refused():
    def build(fault: bool) -> g.Log:
        log, grant = granted(expires_at=T0 + 100)
        log.append(g.delegation(grant, expires_at=T0 + 100), T0 + (100 if fault else 99))
        return log

    ok_then_refused(build, "expired")


def test_delegation_before_the_parent_is_valid_is_refused():
    def build(fault: bool) -> g.Log:
        log, grant = granted(not_before=T0 + 50)
        child = g.delegation(grant, not_before=T0 + 50)
        log.append(child, T0 + (49 if fault else 50))
        return log

    ok_then_refused(build, "not-yet-valid")


def test_delegation_signed_by_someone_other_than_the_parent_holder_is_refused():
    for signer in (g.ALICE, g.OPERATOR, g.READER, g.MALLORY):
        log, grant = granted()
        log.append(g.delegation(grant, signer), T0 + 20)
        refused(log, "signature")


@pytest.mark.parametrize("parent", ["genesis", "bind", "policy", "unknown"])
def test_delegation_from_a_non_credential_is_refused(parent):
    log, grant = granted()
    target = {"genesis": 0, "bind": 1, "policy": 2}
    parent_entry = log.leaves[target[parent]].entry if parent in target else None
    child = g.delegation(grant)
    obj = {k: v for k, v in child.obj.items() if k != "sigs"}
    obj["parent"] = parent_entry.id if parent_entry else "ab" * 32
    log.append(sign_entry(obj, [g.AGENT]), T0 + 20)
    refused(log, "link")


def test_delegation_of_a_later_credential_is_refused():
    """A parent that appears only after its child is no parent."""
    log = new_log()
    grant = g.grant()
    log.append(g.delegation(grant), T0 + 9)
    log.append(grant, T0 + 10)
    refused(log, "link", index=3)


def chain_of(depth: int, grant_depth: int) -> tuple[g.Log, list[Entry]]:
    """alice -> AGENT -> READER -> DRAFTER -> CAROL -> DAVE, ``depth`` delegations deep."""
    log, grant = granted(max_depth=grant_depth)
    holders = [g.AGENT, g.READER, g.DRAFTER, CAROL, DAVE]
    chain = [grant]
    for i in range(depth):
        child = deleg(
            chain[-1],
            holders[i],
            holders[i + 1],
            max_depth=max(grant_depth - i - 1, 0),
            max_children=1,
            task={"id": "inbox-triage", "description": f"level {i + 1}"},
        )
        chain.append(log.append(child, T0 + 20 + i))
    return log, chain


def test_delegation_two_levels_deep_within_max_depth():
    log, chain = chain_of(2, grant_depth=2)
    r = replay(log)
    assert [c.holder for c in r.credentials[chain[-1].id].chain()] == [
        g.AGENT.public,
        g.READER.public,
        g.DRAFTER.public,
    ]


def test_max_depth_budget_exhausted_at_depth():
    log, chain = chain_of(2, grant_depth=2)  # the grandchild has max_depth 0
    log.append(
        deleg(
            chain[-1],
            g.DRAFTER,
            CAROL,
            max_depth=0,
            max_children=1,
            task={"id": "inbox-triage", "description": "too deep"},
        ),
        T0 + 30,
    )
    err = refused(log, "attenuation")
    assert "max_depth" in str(err)


def test_max_depth_cannot_be_kept_level():
    log, grant = granted(max_depth=2)
    log.append(g.delegation(grant, max_depth=2), T0 + 20)
    err = refused(log, "attenuation")
    assert "max_depth" in str(err)


def test_max_children_exceeded_by_the_next_child():
    def build(n: int) -> g.Log:
        log, grant = granted(max_children=2)
        for i in range(n):
            log.append(g.delegation(grant, agent=f"child-{i}"), T0 + 20 + i)
        return log

    log = build(2)
    assert replay(log).children(log.leaves[3].entry.id) == 2
    refused(build(3), "budget")


def test_max_children_zero_allows_no_child():
    log, grant = granted()
    child = log.append(g.delegation(grant), T0 + 20)  # max_children 0
    log.append(deleg(child, g.READER, g.DRAFTER, max_depth=0), T0 + 21)
    refused(log, "budget")


# --- revocation ----------------------------------------------------------------------------------


def three_levels() -> tuple[g.Log, Entry, Entry, Entry]:
    """grant (AGENT) -> child (READER) -> grandchild (DRAFTER), indexes 3, 4, 5."""
    log, grant = granted()
    child = log.append(g.delegation(grant, max_children=2), T0 + 20)
    grandchild = log.append(deleg(child, g.READER, g.DRAFTER, max_depth=0), T0 + 21)
    return log, grant, child, grandchild


def test_revocation_cascades_to_a_grandchild():
    def build(fault: bool) -> g.Log:
        log, grant, _child, grandchild = three_levels()
        log.append(g.access(grandchild, g.DRAFTER, 1), T0 + 30)
        if fault:
            log.append(revoke(g.ALICE, credential=grant.id), T0 + 40)
        log.append(g.access(grandchild, g.DRAFTER, 2), T0 + 50)
        return log

    ok_then_refused(build, "revoked")


def test_no_delegation_under_a_revoked_credential():
    def build(fault: bool) -> g.Log:
        log, grant, child, _ = three_levels()
        if fault:
            log.append(revoke(g.ALICE, credential=grant.id), T0 + 40)
        log.append(deleg(child, g.READER, CAROL, max_depth=0), T0 + 41)
        return log

    ok_then_refused(build, "revoked")
    log, grant, _, _ = three_levels()
    log.append(revoke(g.AGENT, credential=grant.id), T0 + 40)
    log.append(g.delegation(grant, agent="late"), T0 + 41)
    refused(log, "revoked")


def test_revocation_takes_effect_from_the_next_index():
    log, grant, _, grandchild = three_levels()
    log.append(g.access(grandchild, g.DRAFTER, 1), T0 + 30)
    log.append(revoke(g.ALICE, credential=grant.id), T0 + 30)  # same time, later index
    log.append(g.access(grandchild, g.DRAFTER, 2), T0 + 30)
    refused(log, "revoked")


def test_revoking_a_grandchild_leaves_its_ancestors_usable():
    log, grant, child, grandchild = three_levels()
    log.append(revoke(g.DRAFTER, credential=grandchild.id), T0 + 40)
    log.append(g.access(child, g.READER, 1), T0 + 41)
    log.append(g.access(grant, g.AGENT, 2), T0 + 42)
    replay(log)
    log.append(g.access(grandchild, g.DRAFTER, 3), T0 + 43)
    refused(log, "revoked")


def test_denied_access_after_revocation_is_fine():
    log, grant, _, grandchild = three_levels()
    log.append(revoke(g.ALICE, credential=grant.id), T0 + 40)
    log.append(g.access(grandchild, g.DRAFTER, 1, decision="deny"), T0 + 41)
    replay(log)


@pytest.mark.parametrize("signer", ["key itself", "operator"])
def test_holder_revocation(signer):
    def build(fault: bool) -> g.Log:
        log, _grant, child, _grandchild = three_levels()
        key = g.READER if signer == "key itself" else g.OPERATOR
        if fault:
            log.append(revoke(key, holder=g.READER.public.b64), T0 + 40)
        log.append(g.access(child, g.READER, 1), T0 + 41)
        return log

    ok_then_refused(build, "revoked")


def test_holder_revocation_covers_the_subtree_and_later_credentials():
    log, grant, _, grandchild = three_levels()
    log.append(revoke(g.READER, holder=g.READER.public.b64), T0 + 40)
    log.append(g.access(grandchild, g.DRAFTER, 1), T0 + 41)  # below a revoked key's credential
    refused(log, "revoked")
    log, grant, _, _ = three_levels()
    log.append(revoke(g.OPERATOR, holder=g.DRAFTER.public.b64), T0 + 40)
    late = log.append(deleg(grant, g.AGENT, g.DRAFTER, max_depth=0), T0 + 41)
    log.append(g.access(late, g.DRAFTER, 1), T0 + 42)
    refused(log, "revoked")


@pytest.mark.parametrize("who", ["mallory", "decision", "alice", "agent", "drafter"])
def test_holder_revocation_by_another_key_is_refused(who):
    signer = {
        "mallory": g.MALLORY,
        "decision": g.DECISION,
        "alice": g.ALICE,
        "agent": g.AGENT,
        "drafter": g.DRAFTER,
    }[who]
    log, *_ = three_levels()
    log.append(revoke(signer, holder=g.READER.public.b64), T0 + 40)
    refused(log, "signature")


def siblings() -> tuple[g.Log, dict[str, Entry]]:
    """grant (AGENT) -> a (READER) -> a1 (CAROL);  grant -> b (DRAFTER) -> b1 (DAVE)."""
    log, grant = granted()
    e = {"grant": grant}
    e["a"] = log.append(deleg(grant, g.AGENT, g.READER, max_children=1), T0 + 20)
    e["a1"] = log.append(deleg(e["a"], g.READER, CAROL, max_depth=0), T0 + 21)
    e["b"] = log.append(deleg(grant, g.AGENT, g.DRAFTER, max_children=1), T0 + 22)
    e["b1"] = log.append(deleg(e["b"], g.DRAFTER, DAVE, max_depth=0), T0 + 23)
    return log, e


@pytest.mark.parametrize(
    "target, signer",
    [
        ("b", g.DRAFTER),  # the target's own holder
        ("b", g.AGENT),  # a holder above it
        ("b1", g.AGENT),  # two levels above
        ("b", g.ALICE),  # the chain's principal
        ("b", g.OPERATOR),  # an operator
    ],
    ids=["own holder", "holder above", "two above", "principal", "operator"],
)
def test_credential_revocation_by_an_entitled_signer(target, signer):
    log, e = siblings()
    log.append(revoke(signer, credential=e[target].id), T0 + 40)
    assert e[target].id in replay(log).revoked


@pytest.mark.parametrize(
    "target, signer",
    [
        ("b", g.READER),  # the sibling branch's holder
        ("b", CAROL),  # a sub-agent of the sibling branch
        ("b1", CAROL),  # a sub-agent of the sibling branch, same depth
        ("b", DAVE),  # a holder below the target
        ("b", g.DECISION),  # a decision key
        ("b", g.MALLORY),  # a stranger
        ("b", BOB),  # another principal
    ],
    ids=["sibling", "sibling sub-agent", "cousin", "below", "decision", "stranger", "bob"],
)
def test_credential_revocation_by_anyone_else_is_refused(target, signer):
    log, e = siblings()
    log.append(bind(BOB, "bob@corp"), T0 + 30)
    log.append(revoke(signer, credential=e[target].id), T0 + 40)
    refused(log, "signature")


def test_revocation_of_a_non_credential_is_refused():
    for target in (0, 2, 4):
        log, grant = granted()
        log.append(g.access(grant, g.AGENT, 1), T0 + 30)  # index 4: an access, no credential
        log.append(revoke(g.OPERATOR, credential=log.leaves[target].entry.id), T0 + 40)
        refused(log, "link")
    log, _grant = granted()
    log.append(revoke(g.OPERATOR, credential="ab" * 32), T0 + 40)
    refused(log, "link")


# --- access: budgets, rates, nonces --------------------------------------------------------------


def two_children(grant_uses: int, child_uses: int) -> tuple[g.Log, Entry, Entry]:
    log, grant = granted(max_uses=grant_uses, max_children=2)
    a = log.append(g.delegation(grant, max_uses=child_uses), T0 + 20)
    b = log.append(deleg(grant, g.AGENT, g.DRAFTER, max_uses=child_uses), T0 + 21)
    return log, a, b


def test_max_uses_is_counted_across_the_subtree():
    log, a, b = two_children(1, 1)
    log.append(g.access(a, g.READER, 1), T0 + 30)
    replay(log)
    log.append(g.access(b, g.DRAFTER, 2), T0 + 31)
    err = refused(log, "budget")
    assert log.leaves[3].entry.id[:16] in str(err)  # the grant's budget, spent by a sibling


def test_max_uses_on_a_child_binds_it_alone():
    log, a, b = two_children(3, 1)
    log.append(g.access(a, g.READER, 1), T0 + 30)
    log.append(g.access(b, g.DRAFTER, 2), T0 + 31)
    log.append(g.access(b, g.DRAFTER, 3), T0 + 32)  # b's own budget of 1
    refused(log, "budget")


def test_denied_accesses_never_count_against_budgets():
    log, a, b = two_children(1, 1)
    for n in range(5):
        log.append(
            g.access(a if n % 2 else b, g.READER if n % 2 else g.DRAFTER, n, decision="deny"),
            T0 + 30 + n,
        )
    log.append(g.access(b, g.DRAFTER, 10), T0 + 40)
    r = replay(log)
    assert [r.use_count(e.id) for e in (a, b)] == [0, 1]
    log.append(g.access(a, g.READER, 11), T0 + 41)
    refused(log, "budget")


def test_rate_limit_window():
    """rate 2 per 60 s: the window is (time - 60, time]."""

    def build(third: int) -> g.Log:
        log, grant = granted(rate={"count": 2, "window": 60})
        log.append(g.access(grant, g.AGENT, 1), T0 + 100)
        log.append(g.access(grant, g.AGENT, 2), T0 + 101)
        log.append(g.access(grant, g.AGENT, 3), third)
        return log

    replay(build(T0 + 160))  # T0 + 100 has left the window
    refused(build(T0 + 159), "budget")
    refused(build(T0 + 101), "budget")


def test_rate_limit_counts_the_subtree():
    log, grant = granted(rate={"count": 1, "window": 60}, max_children=2)
    a = log.append(g.delegation(grant, rate={"count": 1, "window": 60}), T0 + 20)
    log.append(g.access(grant, g.AGENT, 1), T0 + 30)
    log.append(g.access(a, g.READER, 2), T0 + 31)
    refused(log, "budget")


def test_replayed_nonce_is_refused_only_when_allowed_twice():
    log, grant = granted()
    log.append(g.access(grant, g.AGENT, 1, decision="deny"), T0 + 30)
    log.append(g.access(grant, g.AGENT, 1), T0 + 31)  # a denied nonce may be allowed later
    child = log.append(g.delegation(grant), T0 + 32)
    log.append(g.access(child, g.READER, 1), T0 + 33)  # the same nonce, another credential
    replay(log)
    log.append(g.access(grant, g.AGENT, 1, iat=T0 + 61), T0 + 34)
    refused(log, "replay")


def test_denied_access_for_an_expired_credential_is_fine():
    def build(decision: str) -> g.Log:
        log, grant = granted(expires_at=T0 + 100)
        log.append(g.access(grant, g.AGENT, 1, decision=decision), T0 + 100)
        return log

    replay(build("deny"))
    refused(build("allow"), "expired")


def test_allowed_access_before_not_before_is_refused():
    def build(time: int) -> g.Log:
        log, grant = granted(not_before=T0 + 50)
        log.append(g.access(grant, g.AGENT, 1), time)
        return log

    replay(build(T0 + 50))
    refused(build(T0 + 49), "not-yet-valid")


def test_allowed_access_outside_a_parent_scope_is_refused():
    log, grant = granted()
    log.append(g.access(grant, g.AGENT, 1, action="delete"), T0 + 30)
    refused(log, "scope")


def test_access_needs_a_decision_key_and_the_holder_invocation():
    for signer in (g.OPERATOR, g.ALICE, g.AGENT, g.LOG_ENTRY_KEY):
        log, grant = granted()
        log.append(g.access(grant, g.AGENT, 1, signer=signer), T0 + 30)
        refused(log, "signature")
    for decision in ("allow", "deny"):
        log, grant = granted()
        child = log.append(g.delegation(grant), T0 + 20)
        # the parent's holder signs an invocation of the child's credential
        log.append(g.access(child, g.AGENT, 1, decision=decision), T0 + 30)
        refused(log, "invocation")


def test_access_to_a_non_credential_is_refused():
    log, grant = granted()
    access = g.access(grant, g.AGENT, 1)
    log.append(access, T0 + 30)
    log.append(g.access(access, g.AGENT, 2), T0 + 31)
    refused(log, "link")


# --- one authorisation, two ids ------------------------------------------------------------------


def _resigned_obj(entry: Entry, how: str) -> dict:
    """``entry``'s body with one more signature: what would be a second encoding and id.

    ``holder``: the credential's own holder adds a valid signature of the same body;
    ``junk``: 64 random-looking bytes under an unknown kid.
    """
    body = {k: v for k, v in entry.obj.items() if k != "sigs"}
    if how == "holder":
        key = {g.AGENT.public.b64: g.AGENT, g.READER.public.b64: g.READER}[body["holder"]]
        extra = {
            "kid": key.kid,
            "sig": b64u_encode(key.sign(b"", signed_message(ENTRY_CONTEXT, body))),
        }
    else:
        extra = {"kid": "A" * 43, "sig": b64u_encode(bytes(range(64)))}
    sigs = sorted([*entry.obj["sigs"], extra], key=lambda s: s["kid"])
    return {**body, "sigs": sigs}


@pytest.mark.parametrize("how", ["holder", "junk"])
@pytest.mark.parametrize("kind", ["grant", "delegation"])
def test_a_copy_with_an_extra_signature_is_not_an_entry(how, kind):
    """One signature per entry: nobody can mint a copy of a credential with a new id
    (which would carry a fresh max_uses budget and survive the original's revocation)."""
    log, grant = granted(max_uses=1)
    original = grant if kind == "grant" else log.append(g.delegation(grant), T0 + 20)
    with pytest.raises(EntryFormatError) as info:
        entry_from_json(_resigned_obj(original, how))
    assert info.value.field == "sigs"


# --- origin and order ----------------------------------------------------------------------------


def _for_log(entry: Entry, origin: str, signer: SigningKey) -> Entry:
    body = {k: v for k, v in entry.obj.items() if k != "sigs"}
    return sign_entry({**body, "log": origin}, [signer])


@pytest.mark.parametrize("kind", ["bind", "policy", "grant"])
def test_entry_for_another_log_is_refused(kind):
    log = new_log()
    entry = {
        "bind": (bind(BOB, "bob@corp"), g.OPERATOR),
        "policy": (policy(2), g.OPERATOR),
        "grant": (g.grant(), g.ALICE),
    }[kind]
    log.append(_for_log(entry[0], "other.example/log", entry[1]), T0 + 10)
    refused(log, "origin")


def test_genesis_of_another_log_is_refused():
    """The same Ed25519 log key, named for another origin, anchors another log."""
    other = g.Signer("other.example/log", g.seed("log"))
    genesis = sign_entry(
        {
            **g.body("genesis", log_key=other.verifier.vkey, keys=g.genesis().obj["keys"]),
            "log": "other.example/log",
        },
        [g.LOG_ENTRY_KEY],
    )
    log = g.Log()
    log.append(genesis, T0)
    refused(log, "origin")


def test_leaves_out_of_order_are_refused():
    log = g.story()
    leaves = list(enumerate(log.leaves))
    r = Replay(g.LOG.verifier)
    r.apply_all(leaves[:5])
    with pytest.raises(ChainError) as info:
        r.apply(3, log.leaves[3])  # going back
    assert info.value.check == "order"
    r = Replay(g.LOG.verifier)
    r.apply_all(leaves[:4])
    with pytest.raises(ChainError) as info:
        r.apply(3, log.leaves[3])  # the same index twice
    assert info.value.check == "order"
    r = Replay(g.LOG.verifier)
    r.apply_all([leaves[0], leaves[1], leaves[3]])  # gaps are fine (a subset)
    with pytest.raises(ChainError) as info:
        r.apply(2, log.leaves[2])
    assert info.value.check == "order"


def test_subset_replay_counts_are_lower_bounds():
    """Leaving out leaves never makes a budget fault appear: counts only shrink."""
    log, a, b = two_children(2, 1)
    log.append(g.access(a, g.READER, 1), T0 + 30)
    log.append(g.access(b, g.DRAFTER, 2), T0 + 31)
    full = replay(log)
    r = Replay(g.LOG.verifier)
    r.apply_all((i, leaf) for i, leaf in enumerate(log.leaves) if i != 6)
    grant = log.leaves[3].entry.id
    assert r.use_count(grant) == 1 < full.use_count(grant) == 2
