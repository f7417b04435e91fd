"""The cost of covers() is bounded and small for every entry the format admits (SCOPE.md §4.4).

The ledger checks a delegation on its single writer thread, so the check must not let one
valid entry stall it. The worst admissible shapes are built here as real signed entries
(each at most ``MAX_ENTRY_SIZE`` bytes): many details times many resources, deep and long
patterns, big ``in`` lists, and the failure path that has to find the closest parent
detail. Pairwise, the old check took about 10 s on the first of them.

The cost is asserted two ways: a deterministic count of the Python lines executed (the
same on every machine, so never flaky), and a generous wall-clock bound. The fast check
must also give exactly the answer (field and reason) of the pairwise definition of
SCOPE.md §4.1, which ``reference_widening`` below implements naively.

    .venv/bin/python -m tests.test_attenuation_cost      prints the timing of every case
"""

from __future__ import annotations

import dataclasses
import itertools
import string
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fixtures.generate as g
from lineage.verifier.attenuation import _implies, _limit_widening, check_covers, covers
from lineage.verifier.entry import MAX_ENTRY_SIZE, parse_entry
from lineage.verifier.errors import AttenuationError
from lineage.verifier.resource import pattern_within
from lineage.verifier.scope import (
    Constraint,
    Credential,
    Detail,
    Limits,
    Task,
    _constraint_to_json,
)
from tests.budget import examples
from tests.test_scope import (
    ATTRS,
    STRINGS,
    TYPES,
    T,
    credentials,
    details,
    narrowed,
    subset,
)

replace = dataclasses.replace


# --- the pairwise definition (SCOPE.md §4.1), implemented naively: the reference ---


def reference_detail_widenings(p: Detail, c: Detail) -> list[tuple[str, str]]:
    """Every way child detail ``c`` is wider than parent detail ``p``, in field order."""
    out = []
    extra = [a for a in c.actions if a not in p.actions]
    if extra:
        out.append(("actions", f"actions {extra} are not granted by the parent"))
    for name, within in (("locations", lambda r, q: r == q), ("resources", pattern_within)):
        mine, theirs = getattr(c, name), getattr(p, name)
        if theirs and not mine:
            out.append((name, f"the parent restricts {name}; the child must restate them"))
        elif mine and not theirs:
            out.append((name, f"the parent grants no {name}; the child may not add any"))
        else:
            wide = [str(r) for r in mine if not any(within(r, q) for q in theirs)]
            if wide:
                out.append((name, f"{wide} not within the parent's {name}"))
    mine_c = dict(c.constraints)
    for attr, pc in p.constraints:
        cc = mine_c.get(attr)
        if cc is None:
            out.append((f"constraints.{attr}", "the parent's constraint is not restated"))
            continue
        ops = [op for op, bound in _constraint_to_json(pc).items() if not _implies(cc, op, bound)]
        if ops:
            out.append((f"constraints.{attr}", f"does not imply the parent's {'/'.join(ops)}"))
    return out


def reference_widening(parent: Credential, child: Credential) -> tuple[str, str] | None:
    """Every child detail against every same-type parent detail, all fields, no index."""
    for i, c in enumerate(child.scope):
        candidates = [reference_detail_widenings(p, c) for p in parent.scope if p.type == c.type]
        if not candidates:
            return f"scope[{i}]", f"no parent detail has type {c.type!r}"
        if not all(candidates):
            continue
        field, why = min(candidates, key=len)[0]  # the closest candidate; first on a tie
        return f"scope[{i}].{field}", why
    return _limit_widening(parent.limits, child.limits)


def fast_widening(parent: Credential, child: Credential) -> tuple[str, str] | None:
    try:
        check_covers(parent, child)
    except AttenuationError as e:
        assert e.field is not None
        return e.field, str(e).removeprefix(f"{e.field}: ")
    return None


# --- random inputs that overlap a lot, including the corner cases of §4.2 ---

VALUES = [*STRINGS, -3, 0, 1, 2, 7]
LIMITS = Limits(expires_at=T, max_depth=0, task=Task("t"))


@st.composite
def any_constraint(draw: st.DrawFn) -> Constraint:
    """Any valid constraint: mixed eq/in types, empty allowed sets, lte below gte."""
    ints = draw(st.booleans())
    pool = [v for v in VALUES if isinstance(v, int) == ints]
    eq = draw(st.none() | st.sampled_from(VALUES))
    in_ = draw(st.none() | subset(pool).map(tuple))
    lte = draw(st.none() | st.integers(-4, 8))
    gte = draw(st.none() | st.integers(-4, 8))
    if eq is None and in_ is None and lte is None and gte is None:
        eq = draw(st.sampled_from(VALUES))
    return Constraint(eq, in_, lte, gte)


@st.composite
def mixed_details(draw: st.DrawFn, type_: str) -> Detail:
    d = draw(details(type_))
    if draw(st.booleans()):
        attrs = draw(subset(ATTRS, 0))
        d = replace(d, constraints=tuple((a, draw(any_constraint())) for a in attrs))
    return d


@st.composite
def scopes(draw: st.DrawFn) -> tuple[Detail, ...]:
    types = draw(st.lists(st.sampled_from(TYPES[:2]), min_size=1, max_size=5))
    return tuple(draw(mixed_details(t)) for t in types)


@st.composite
def pairs(draw: st.DrawFn) -> tuple[Credential, Credential]:
    parent = draw(credentials(min_depth=1))
    parent = replace(parent, scope=draw(scopes()))
    how = draw(st.sampled_from(["narrowed", "random", "mixed"]))
    if how == "random":
        child = replace(draw(credentials()), scope=draw(scopes()))
    else:
        child = draw(narrowed(parent))
        if how == "mixed":  # some narrowed details, some drawn at random, in any order
            extra = draw(scopes())
            both = list(child.scope + extra)
            order = draw(st.permutations(range(len(both))))
            child = replace(child, scope=tuple(both[k] for k in order)[:64])
    return parent, child


@pytest.mark.slow
@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs())
def test_the_indexed_check_agrees_with_the_pairwise_reference(pair: tuple) -> None:
    parent, child = pair
    assert fast_widening(parent, child) == reference_widening(parent, child)


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(any_constraint(), min_size=1, max_size=4), any_constraint())
def test_constraint_implication_agrees_with_the_reference(parents: list, c: Constraint) -> None:
    """Several parent details constraining one attribute, against one child constraint."""
    scope = tuple(Detail("t", ("a",), constraints=(("x", p),)) for p in parents)
    parent = Credential(scope, replace(LIMITS, max_depth=1))
    child = Credential((Detail("t", ("a",), constraints=(("x", c),)),), LIMITS)
    assert fast_widening(parent, child) == reference_widening(parent, child)


def test_the_corner_cases_of_implication_agree_with_the_reference() -> None:
    """Hand-picked: empty allowed sets, strings against bounds, equal bounds, mixed types."""
    cases = [
        Constraint(eq=3, in_=(1, 2)),  # allows nothing: implies everything
        Constraint(eq="x", in_=("y",)),
        Constraint(eq="1"),
        Constraint(eq=1),
        Constraint(in_=("1", "2")),
        Constraint(in_=(1, 2), lte=0),
        Constraint(lte=5, gte=9),
        Constraint(gte=5),
        Constraint(lte=5),
        Constraint(eq=5, lte=100),
    ]
    for p, c in itertools.product(cases, repeat=2):
        parent = Credential(
            (Detail("t", ("a",), constraints=(("x", p),)),), replace(LIMITS, max_depth=1)
        )
        child = Credential((Detail("t", ("a",), constraints=(("x", c),)),), LIMITS)
        assert fast_widening(parent, child) == reference_widening(parent, child), (p, c)


# --- the worst admissible entries ---

ALNUM = string.digits + string.ascii_lowercase


def words(n: int, width: int) -> list[str]:
    """n distinct sorted words of ``width`` characters."""
    return ["".join(w) for w in itertools.islice(itertools.product(ALNUM, repeat=width), n)]


def detail(resources: list[str] | None = None, **more: Any) -> dict:
    out: dict[str, Any] = {"type": "t", "actions": ["a"]}
    if resources:
        out["resources"] = sorted(resources)
    return out | more


def pairwise_resources() -> tuple[list, list]:
    """64 x 134 parent patterns, 64 x 134 child names, each within only the last pattern."""
    parent = [detail([f"m:{w}" for w in words(133, 2)] + ["n:*"]) for _ in range(64)]
    child = [detail([f"n:{w}" for w in words(134, 2)]) for _ in range(64)]
    return parent, child


def shared_prefix_wildcards() -> tuple[list, list]:
    """Parent wildcards that share the child's prefix and first segment, so every pairwise
    comparison walks segments before it fails."""
    parent = [detail([f"n:a/{w}/*" for w in words(86, 2)] + ["n:a/~/*"]) for _ in range(64)]
    child = [detail([f"n:a/~/{w}" for w in words(84, 2)]) for _ in range(64)]
    return parent, child


def deep_patterns() -> tuple[list, list]:
    """Resources of 64 segments: every lookup walks the whole trie path."""
    stem = "/".join(["s"] * 62)
    parent = [detail([f"n:{stem}/{w}/*" for w in words(7, 1)]) for _ in range(64)]
    child = [detail([f"n:{stem}/6/{w}" for w in words(118, 2)]) for _ in range(4)]
    return parent, child


def distinct_deep_parent() -> tuple[list, list]:
    """As many distinct trie nodes in the parent as the entry size allows."""

    def stem(w: str) -> str:
        return "n:" + "/".join(f"{w}{k}" for k in range(20))

    parent = [detail([stem(w) + "/*" for w in words(8, 2)]) for _ in range(64)]
    child = [stem(w) + "/" + x for w in words(8, 2) for x in words(26, 2)]
    return parent, [detail(child)] * 3


def closest_detail_path() -> tuple[list, list]:
    """Not covered, in the last child detail: the check must then find the parent detail
    with the fewest failing fields, and every parent detail fails only in its last field."""
    cons = {f"k{i:02}": {"in": list(range(5))} for i in range(32)}
    last = {**cons, "k31": {"in": list(range(4))}}
    parent = [detail(["n:*"], constraints=last) for _ in range(64)]
    child = [detail([f"n:{w}" for w in words(20, 2)], constraints=last) for _ in range(60)]
    return parent, [*child, detail([f"n:{w}" for w in words(256, 2)], constraints=cons)]


def big_in_lists() -> tuple[list, list]:
    """Long ``in`` lists, to be checked value by value against every parent detail."""
    cons = {f"k{i}": {"in": words(256, 2)} for i in range(2)}
    return [detail(constraints=cons)] * 2, [detail(constraints=cons)] * 24


def many_attributes() -> tuple[list, list]:
    """64 parent details of 32 attributes each; every child detail restates only 31, so no
    candidate survives until the last parent attribute is looked for."""
    cons = {f"k{i:02}": {"gte": 1, "lte": 9} for i in range(32)}
    short = {k: v for k, v in cons.items() if k != "k31"}
    parent = [detail(constraints=cons) for _ in range(63)] + [detail(constraints=short)]
    child = [detail(constraints=short) for _ in range(64)]
    return parent, child


def many_actions() -> tuple[list, list]:
    actions = sorted(words(36, 1) + ["z" + w for w in words(28, 1)])
    return [detail(actions=actions) for _ in range(64)], [detail(actions=actions)] * 64


WORST_CASES: dict[str, Callable[[], tuple[list, list]]] = {
    "pairwise resources": pairwise_resources,
    "shared-prefix wildcards": shared_prefix_wildcards,
    "deep patterns": deep_patterns,
    "distinct deep parent": distinct_deep_parent,
    "closest detail": closest_detail_path,
    "big in lists": big_in_lists,
    "many attributes": many_attributes,
    "many actions": many_actions,
}


def admissible(name: str) -> tuple[Credential, Credential, int, int]:
    """The case as a parent grant and child delegation, parsed back from signed entries."""
    parent_scope, child_scope = WORST_CASES[name]()
    grant = g.grant(scope=parent_scope, max_depth=3)
    child = g.delegation(grant, scope=child_scope, max_depth=2)
    assert len(grant.raw) <= MAX_ENTRY_SIZE and len(child.raw) <= MAX_ENTRY_SIZE
    p, c = parse_entry(grant.raw).body.credential, parse_entry(child.raw).body.credential
    return p, c, len(grant.raw), len(child.raw)


def lines_executed(run: Callable[[], object]) -> int:
    """The number of Python lines ``run`` executes: a deterministic measure of work."""
    count = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return trace

    old = sys.gettrace()
    sys.settrace(trace)
    try:
        run()
    finally:
        sys.settrace(old)
    return count


def best_time(run: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


# Pairwise, the first case alone executes more than 10**8 lines; indexed, the worst about
# 270,000 (about 4 per segment of the child's resources, and linear in the entries' size).
MAX_LINES = 400_000


@pytest.mark.parametrize("name", WORST_CASES)
def test_the_worst_admissible_delegation_is_checked_in_milliseconds(name: str) -> None:
    parent, child, _, _ = admissible(name)
    expected = {"closest detail": "scope[60].constraints.k31"}.get(name)
    assert covers(parent, child) == expected
    # Counted, not timed: the same on every machine. Timings: docs/BENCH.md.
    assert lines_executed(lambda: covers(parent, child)) < MAX_LINES


def test_the_worst_cases_are_near_the_entry_size_limit() -> None:
    """Not vacuous: the shapes use the room the format gives (apart from the small ones)."""
    sizes = {name: admissible(name)[2:] for name in WORST_CASES}
    for name in ("pairwise resources", "shared-prefix wildcards", "closest detail"):
        assert min(sizes[name]) > 0.8 * MAX_ENTRY_SIZE, (name, sizes[name])
