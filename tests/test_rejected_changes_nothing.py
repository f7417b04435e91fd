"""A rejected entry leaves the replayed state exactly as it was (the chain-state issue).

The ledger validates each append against its replayed state and keeps that state when
an entry is refused; if a refusal left half an effect behind (a use counted, a child
added, a key retired), every later decision would be made on a state no log holds.
Each invalid fixture bundle ends in an entry the rules refuse: replay up to it, try it,
and compare the whole state before and after. Then the same over random single-field
mutations of every entry of the valid stories.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lineage.verifier.bundle import parse_bundle
from lineage.verifier.chain import Replay
from lineage.verifier.entry import Leaf, entry_from_json
from lineage.verifier.errors import ChainError, FormatError, SignatureError
from lineage.verifier.note import parse_vkey
from tests.budget import examples

BUNDLES = Path(__file__).resolve().parent.parent / "fixtures" / "bundles"
LOG_KEY = parse_vkey((BUNDLES.parent / "log.vkey").read_text().strip())


def state(replay: Replay) -> dict:
    return copy.deepcopy({k: v for k, v in vars(replay).items() if k != "rules"})


def leaves(name: str) -> list[tuple[int, Leaf]]:
    bundle = parse_bundle((BUNDLES / name).read_bytes())
    return [(e.index, e.leaf) for e in bundle.entries]


def refused_leaves_change_nothing(items: list[tuple[int, Leaf]]) -> int:
    """Apply ``items`` in order; on each refusal, check the state is unchanged and skip it."""
    replay, refused = Replay(LOG_KEY), 0
    for index, leaf in items:
        before = state(replay)
        try:
            replay.apply(index, leaf)
        except (ChainError, SignatureError):
            assert state(replay) == before, f"entry {index} was refused but changed the state"
            refused += 1
    return refused


INVALID = sorted(p.name for p in BUNDLES.glob("invalid-*.json"))


EXPECTED = json.loads((BUNDLES / "expected.json").read_text())
BEFORE_REPLAY = {"proof", "order", "log-key", "origin"}  # refused by the bundle, not a rule
# A checkpoint that does not verify under the trusted key (its signature check) is refused
# before any entry is replayed; the entries themselves are valid.
CHECKPOINT_ONLY = {"invalid-tampered-checkpoint-size.json", "invalid-unknown-log-key.json"}


@pytest.mark.parametrize("name", INVALID)
def test_the_refused_entry_of_each_invalid_bundle_changes_nothing(name):
    items = leaves(name)
    refused = refused_leaves_change_nothing(items)
    if EXPECTED[name]["check"] not in BEFORE_REPLAY and name not in CHECKPOINT_ONLY:
        assert refused >= 1, f"{name}: no entry was refused, so nothing was checked"


VALID = sorted(p.name for p in BUNDLES.glob("valid-*.json"))


def _mutations():
    fields = st.sampled_from(["max_uses", "max_depth", "expires_at", "decision", "parent"])
    values = st.one_of(st.integers(0, 2**40), st.sampled_from(["allow", "deny", "0" * 64]))
    return st.tuples(st.sampled_from(VALID), st.integers(0, 30), fields, values)


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_a_mutated_entry_is_refused_without_a_trace(mutation):
    """Change one field of one entry (its signature no longer matches, or it does and a
    rule refuses it) and replay the rest: whatever is refused leaves no effect."""
    name, k, field, value = mutation
    items = leaves(name)
    index, leaf = items[k % len(items)]
    obj = json.loads(leaf.entry.raw)
    obj[field] = value
    try:
        entry = entry_from_json(obj)
    except FormatError:
        return  # refused at parse: it never reaches the state
    items[k % len(items)] = (index, Leaf.build(entry, leaf.time))
    refused_leaves_change_nothing(items)


# Correctly signed entries that the rules may refuse: random delegations under the story's
# grant and delegation (widened or not, expired or not, over budget or not) and random
# accesses (allowed or denied, in scope or not), each tried against the story's state.


def _story_replay():
    import fixtures.generate as g

    log = g.story()
    replay = Replay(LOG_KEY)
    replay.apply_all(enumerate(log.leaves))
    entries = {leaf.entry.kind: leaf.entry for leaf in log.leaves}
    return g, replay, entries


@st.composite
def signed_attempts(draw):
    import fixtures.generate as g

    parent_kind = draw(st.sampled_from(["grant", "delegation"]))
    if draw(st.booleans()):
        over = {
            "max_uses": draw(st.sampled_from([1, 5, 20, 50, g.DROP])),
            "max_depth": draw(st.integers(0, 3)),
            "max_children": draw(st.sampled_from([0, 1, 4, g.DROP])),
            "expires_at": g.T0 + draw(st.sampled_from([-10, 30, 500, 600, 700, 900, 5000])),
            "scope": draw(
                st.sampled_from(
                    [
                        g.reader_scope(),
                        [{**g.reader_scope()[0], "actions": ["read", "send"]}],
                        [{**g.reader_scope()[0], "resources": ["mailbox:alice/*"]}],
                        [{**g.reader_scope()[0], "resources": ["mailbox:bob/*"]}],
                    ]
                )
            ),
        }
        holder = draw(st.sampled_from(["AGENT", "READER", "DRAFTER"]))
        return ("delegation", parent_kind, over, holder)
    request = draw(
        st.sampled_from(
            [
                {},
                {"action": "send"},
                {"resource": "mailbox:bob/inbox/1"},
                {"attributes": {"received_at": g.T0 - 3600, "sender": "evil@x.example"}},
            ]
        )
    )
    decision = draw(st.sampled_from(["allow", "deny"]))
    n = draw(st.integers(1, 12))  # 1 is the story's own access; 6 allowed spend the budget
    return ("access", parent_kind, {"request": request, "decision": decision, "n": n}, None)


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(signed_attempts(), min_size=1, max_size=10))
def test_signed_entries_the_rules_refuse_leave_no_trace(attempts):
    g, replay, entries = _story_replay()
    index, time = replay.size, g.T0 + 100
    for kind, parent_kind, over, holder in attempts:
        parent = entries[parent_kind]
        if kind == "delegation":
            signer = g.AGENT if parent_kind == "grant" else g.READER
            key = getattr(g, holder)
            entry = g.delegation(parent, signer=signer, holder=key.public.b64, **over)
        else:
            holder_key = g.AGENT if parent_kind == "grant" else g.READER
            entry = g.access(
                parent, holder_key, over["n"], decision=over["decision"], **over["request"]
            )
        before = state(replay)
        try:
            replay.apply(index, Leaf.build(entry, time))
        except (ChainError, SignatureError):
            assert state(replay) == before, f"a refused {kind} changed the state"
            continue
        index += 1
        time += 1
