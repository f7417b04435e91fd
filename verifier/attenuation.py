"""Attenuation: is a derived credential provably narrower than its parent? (SCOPE.md §4)

``covers(parent, child)`` returns None when every child detail is within a parent
detail and every limit only tightens, else the path of the first widened field
(``scope[1].actions``, ``expires_at``, ``rate.window``, ...).

The cost is bounded (SCOPE.md §4.4): the parent's scope is indexed once, every value
of the child is then looked up once for all parent details together (a parent detail
is a bit of an ``int`` mask), and no child pattern is ever compared with the parent's
patterns one by one. The answer is the one the pairwise definition of §4.1 gives.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any

from .errors import AttenuationError
from .resource import Resource
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


# --- the parent's scope, indexed once: bit i of a mask stands for parent.scope[i] ---


class _Node:
    """A node of the pattern trie: the parent details with a pattern ending here."""

    __slots__ = ("exact", "next", "wild")

    def __init__(self) -> None:
        self.next: dict[str, _Node] = {}
        self.exact = 0  # a name with exactly these segments
        self.wild = 0  # these segments then "*": one or more further segments


class _Bounds:
    """Parent ``lte`` (or ``gte``) bounds on one attribute, sorted, with cumulative masks."""

    __slots__ = ("all", "bounds", "masks")

    def __init__(self, pairs: list[tuple[int, int]], suffix: bool) -> None:
        pairs.sort()
        self.bounds = [b for b, _ in pairs]
        masks = [0]  # masks[k]: the OR of the first k bits in the order taken
        for _, bit in reversed(pairs) if suffix else pairs:
            masks.append(masks[-1] | bit)
        self.masks = masks[::-1] if suffix else masks  # suffix: masks[i] = OR of [i:]
        self.all = masks[-1]

    def at_least(self, x: int) -> int:
        """The details whose bound is >= x (built with ``suffix``)."""
        return self.masks[bisect_left(self.bounds, x)]

    def at_most(self, x: int) -> int:
        """The details whose bound is <= x (built without ``suffix``)."""
        return self.masks[bisect_right(self.bounds, x)]


class _Attr:
    """The parent details' constraints on one attribute."""

    __slots__ = ("eq", "eq_of", "gte", "in_", "in_of", "lte", "need")

    def __init__(self) -> None:
        self.need = 0  # details that constrain the attribute at all
        self.eq = 0
        self.eq_of: dict[str | int, int] = {}
        self.in_ = 0
        self.in_of: dict[str | int, int] = {}
        self.lte: Any = []  # (bound, bit) pairs, then a _Bounds
        self.gte: Any = []

    def implied(self, c: Constraint) -> int:
        """The details (of ``need``) whose constraint child constraint ``c`` implies (§4.2)."""
        allowed = c.finite()
        if allowed is not None and not allowed:
            return self.need  # allows no value at all: implies every operator
        ok = self.need
        if self.eq:  # F ⊆ {v}: F is the one value v
            one = allowed is not None and len(allowed) == 1
            ok &= ~self.eq | (self.eq_of.get(next(iter(allowed)), 0) if one else 0)
        if self.in_:  # F ⊆ S: every value of F is in S
            fine = 0 if allowed is None else self.in_
            for v in allowed or ():
                fine &= self.in_of.get(v, 0)
                if not fine:
                    break
            ok &= ~self.in_ | fine
        hi, lo = c.lte, c.gte  # the child's own bounds, tightened by a bounded integer F
        if allowed is not None and all(type(v) is int for v in allowed):
            top, bottom = max(allowed), min(allowed)
            hi = top if hi is None else min(hi, top)
            lo = bottom if lo is None else max(lo, bottom)
        if self.lte.all:  # implied where the parent's bound m satisfies hi <= m
            ok &= ~self.lte.all | (0 if hi is None else self.lte.at_least(hi))
        if self.gte.all:  # implied where lo >= m
            ok &= ~self.gte.all | (0 if lo is None else self.gte.at_most(lo))
        return ok


class _Index:
    """Every parent detail's types, actions, locations, patterns and constraints, by value."""

    def __init__(self, scope: tuple[Detail, ...]) -> None:
        self.types: dict[str, int] = {}
        self.actions: dict[str, int] = {}
        self.locations: dict[Resource, int] = {}
        self.located = self.patterned = 0
        self.trie: dict[str, _Node] = {}
        self.attrs: dict[str, _Attr] = {}
        self.names = [frozenset(a for a, _ in d.constraints) for d in scope]
        for i, d in enumerate(scope):
            bit = 1 << i
            self.types[d.type] = self.types.get(d.type, 0) | bit
            for a in d.actions:
                self.actions[a] = self.actions.get(a, 0) | bit
            for loc in d.locations:
                self.locations[loc] = self.locations.get(loc, 0) | bit
                self.located |= bit
            for r in d.resources:
                node = self.trie.setdefault(r.prefix, _Node())
                for seg in r.segments:
                    node = node.next.setdefault(seg, _Node())
                if r.wildcard:
                    node.wild |= bit
                else:
                    node.exact |= bit
                self.patterned |= bit
            for name, c in d.constraints:
                ix = self.attrs.setdefault(name, _Attr())
                ix.need |= bit
                if c.eq is not None:
                    ix.eq |= bit
                    ix.eq_of[c.eq] = ix.eq_of.get(c.eq, 0) | bit
                if c.in_ is not None:
                    ix.in_ |= bit
                    for v in c.in_:
                        ix.in_of[v] = ix.in_of.get(v, 0) | bit
                if c.lte is not None:
                    ix.lte.append((c.lte, bit))
                if c.gte is not None:
                    ix.gte.append((c.gte, bit))
        for ix in self.attrs.values():
            ix.lte, ix.gte = _Bounds(ix.lte, suffix=True), _Bounds(ix.gte, suffix=False)

    def within(self, r: Resource) -> int:
        """The details with a pattern that child pattern ``r`` is within (§2.4): one walk."""
        node = self.trie.get(r.prefix)
        found = 0
        for seg in r.segments:
            if node is None:
                return found
            found |= node.wild  # a shorter parent pattern ending in "*"
            node = node.next.get(seg)
        if node is None:
            return found
        return found | (node.wild if r.wildcard else node.exact)


class _Child:
    """One child detail looked up in the index: for each field, the parent details it fits."""

    def __init__(self, ix: _Index, c: Detail) -> None:
        self.detail = c
        self.type = ix.types.get(c.type, 0)
        self.actions = self.type
        for a in c.actions:
            self.actions &= ix.actions.get(a, 0)
        self.places: dict[str, int] = {}
        self.per_resource: list[int] = []
        for name, present, lookup in (
            ("locations", ix.located, lambda r: ix.locations.get(r, 0)),
            ("resources", ix.patterned, ix.within),
        ):
            mine = getattr(c, name)
            if not mine:
                self.places[name] = ~present  # both absent is the only way without a list
                continue
            fits = [lookup(r) for r in mine]
            if name == "resources":
                self.per_resource = fits
            ok = present
            for m in fits:
                ok &= m
            self.places[name] = ok
        self.names = frozenset(a for a, _ in c.constraints)
        self.implied = {a: ix.attrs[a].implied(cc) for a, cc in c.constraints if a in ix.attrs}

    def failing(self, i: int, p: Detail) -> list[str]:
        """The fields (§4.1 order) in which this child detail is wider than parent detail ``i``."""
        fields = {"actions": self.actions, **self.places}  # in §4.1 order
        out = [name for name, fits in fields.items() if not fits >> i & 1]
        out += [
            f"constraints.{a}"
            for a, _ in p.constraints
            if a not in self.names or not self.implied[a] >> i & 1
        ]
        return out

    def why(self, i: int, p: Detail, field: str) -> str:
        """The reason for ``field`` failing against parent detail ``i`` (a single pair)."""
        c = self.detail
        if field == "actions":
            extra = [a for a in c.actions if a not in p.actions]
            return f"actions {extra} are not granted by the parent"
        if field in ("locations", "resources"):
            mine, theirs = getattr(c, field), getattr(p, field)
            if theirs and not mine:
                return f"the parent restricts {field}; the child must restate them"
            if mine and not theirs:
                return f"the parent grants no {field}; the child may not add any"
            if field == "locations":
                wide = [str(r) for r in mine if r not in theirs]
            else:
                wide = [
                    str(r) for r, m in zip(mine, self.per_resource, strict=True) if not m >> i & 1
                ]
            return f"{wide} not within the parent's {field}"
        attr = field.removeprefix("constraints.")
        if attr not in self.names:
            return "the parent's constraint is not restated"
        pc, cc = dict(p.constraints)[attr], dict(c.constraints)[attr]
        ops = [op for op, bound in _constraint_to_json(pc).items() if not _implies(cc, op, bound)]
        return f"does not imply the parent's {'/'.join(ops)}"


def _detail_widening(ix: _Index, parent: Credential, c: Detail, at: str) -> tuple[str, str] | None:
    """None if some parent detail covers ``c`` (§4.1); else the closest one's first failure."""
    child = _Child(ix, c)
    if not child.type:
        return at, f"no parent detail has type {c.type!r}"
    ok = child.actions & child.places["locations"] & child.places["resources"]
    for a, fine in child.implied.items():
        ok &= fine | ~ix.attrs[a].need
    for i in range(len(parent.scope)):
        if ok >> i & 1 and ix.names[i] <= child.names:
            return None  # the first covering parent detail: stop here
    # None covers: every same-type detail fails somewhere. Report the first failure of the
    # one with the fewest failing fields, the earliest on a tie (§4.1).
    failures = [
        (len(fields), i, fields)
        for i, p in enumerate(parent.scope)
        if child.type >> i & 1
        for fields in [child.failing(i, p)]
    ]
    _, i, fields = min(failures)
    return f"{at}.{fields[0]}", child.why(i, parent.scope[i], fields[0])


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
    ix = _Index(parent.scope)
    for i, c in enumerate(child.scope):
        found = _detail_widening(ix, parent, c, f"scope[{i}]")
        if found is not None:
            return found
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
