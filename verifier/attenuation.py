"""Attenuation: is a derived credential provably narrower than its parent? (SCOPE.md §4)

``covers(parent, child)`` returns None when every child detail is within a parent
detail and every limit only tightens, else the path of the first widened field
(``scope[1].actions``, ``expires_at``, ``rate.window``, ...).
"""

from __future__ import annotations

from typing import Any

from .errors import AttenuationError
from .resource import pattern_within
from .scope import Constraint, Credential, Detail, Limits, _constraint_to_json

__all__ = ["check_covers", "covers"]


def _implies(child: Constraint, op: str, bound: Any) -> bool:
    """Whether every value ``child`` allows satisfies the parent operator ``op`` (§4.2)."""
    allowed = child.finite()
    if op == "eq":
        return allowed is not None and allowed <= {bound}
    if op == "in":
        return allowed is not None and allowed <= set(bound)
    own = child.lte if op == "lte" else child.gte
    if own is not None and (own <= bound if op == "lte" else own >= bound):
        return True
    ints = allowed is not None and all(type(v) is int for v in allowed)
    return ints and all(v <= bound if op == "lte" else v >= bound for v in allowed)


def _detail_widenings(p: Detail, c: Detail) -> list[tuple[str, str]]:
    """Every way child detail ``c`` is wider than parent detail ``p`` (§4.1), in field order."""
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


def _bound(name: str, mine: int | None, theirs: int | None, more: bool) -> tuple[str, str] | None:
    """An optional bound the parent sets: the child restates it, no looser (``more``: a cap)."""
    if theirs is None:
        return None
    if mine is None:
        return name, f"the parent sets {name} {theirs}; the child must restate it"
    if mine > theirs if more else mine < theirs:
        return name, f"{mine} is {'more' if more else 'less'} than the parent's {theirs}"
    return None


def _limit_widening(p: Limits, c: Limits) -> tuple[str, str] | None:
    """The first limit of ``c`` that is wider than ``p``'s (§4.3), or None."""
    if p.max_depth == 0:
        return "max_depth", "the parent has max_depth 0 and may not delegate"
    if c.max_depth >= p.max_depth:
        return "max_depth", f"{c.max_depth} is not below the parent's {p.max_depth}"
    if p.rate is not None and c.rate is None:
        return "rate", "the parent sets a rate; the child must restate it"
    pr, cr = p.rate, c.rate
    for name, mine, theirs, more in (
        ("expires_at", c.expires_at, p.expires_at, True),
        ("not_before", c.not_before, p.not_before, False),
        ("max_uses", c.max_uses, p.max_uses, True),
        ("rate.count", cr and cr.count, pr and pr.count, True),
        ("rate.window", cr and cr.window, pr and pr.window, False),  # conservative (§4.3)
        ("max_children", c.max_children, p.max_children, True),
    ):
        found = _bound(name, mine, theirs, more)
        if found:
            return found
    if c.task.id != p.task.id and not c.task.id.startswith(p.task.id + "/"):
        return "task.id", f"{c.task.id!r} is not {p.task.id!r} or a sub-task of it"
    return None


def _widening(parent: Credential, child: Credential) -> tuple[str, str] | None:
    if not isinstance(parent, Credential) or not isinstance(child, Credential):
        raise TypeError("covers() takes two Credential values")
    for i, c in enumerate(child.scope):
        candidates = [_detail_widenings(p, c) for p in parent.scope if p.type == c.type]
        if not candidates:
            return f"scope[{i}]", f"no parent detail has type {c.type!r}"
        if not all(candidates):
            continue
        field, why = min(candidates, key=len)[0]  # the closest candidate; first on a tie
        return f"scope[{i}].{field}", why
    return _limit_widening(parent.limits, child.limits)


def covers(parent: Credential, child: Credential) -> str | None:
    """None when ``child`` is provably narrower than ``parent``; else the widened field."""
    found = _widening(parent, child)
    return None if found is None else found[0]


def check_covers(parent: Credential, child: Credential) -> None:
    """Raise :class:`AttenuationError` naming the field unless ``child`` narrows ``parent``."""
    found = _widening(parent, child)
    if found is not None:
        raise AttenuationError(found[1], found[0])
