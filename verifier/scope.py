"""The scope algebra's data: authorisation details, credential limits, and their JSON.

docs/SCOPE.md is the specification; section numbers below refer to it. A scope is a
list of RFC 9396 authorization details (``type``, ``actions``, ``locations`` as RFC 8707
resource-server URLs, ``resources``, typed ``constraints``); the limits sit beside it in
the credential body. ``attenuation.covers(parent, child)`` decides whether a derived
credential is provably narrower (§4); ``request.permits(scope, request)`` decides one
request (§5).

Values are built only in canonical form: every dataclass checks itself on construction,
the parsers read the JSON values of the canonical JSON parser, and ``*_to_json`` gives
back exactly the values that were parsed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from lineage.verifier.errors import EntryFormatError, ResourceError
from lineage.verifier.fields import check_text
from lineage.verifier.resource import Resource, parse_resource

__all__ = [
    "Constraint",
    "Credential",
    "Detail",
    "Limits",
    "Rate",
    "Task",
    "limits_to_json",
    "parse_credential",
    "parse_limits",
    "parse_scope",
    "scope_to_json",
]

MAX_INT = 2**53 - 1  # the canonical JSON integer range (FORMAT.md §2)
MAX_DETAILS, MAX_ACTIONS, MAX_LOCATIONS, MAX_RESOURCES = 64, 64, 64, 256
MAX_CONSTRAINTS, MAX_IN, MAX_ATTRIBUTES = 32, 256, 64
MAX_VALUE, MAX_TASK_ID, MAX_DESCRIPTION = 1024, 256, 1024  # characters
_TOKEN = re.compile(r"[a-z0-9_.:-]+")  # type, action, attribute name (§1)
_TASK_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
_LIMIT_KEYS = ("expires_at", "not_before", "max_uses", "rate", "max_depth", "max_children", "task")
T = TypeVar("T")


# --- checking helpers: every error is an EntryFormatError naming a dotted field path ---


def _join(outer: str | None, inner: str | None) -> str | None:
    if not outer or not inner:
        return outer or inner
    return outer + inner if inner.startswith("[") else f"{outer}.{inner}"


def _nested(prefix: str, build: Callable[[], T]) -> T:
    """Run ``build`` and re-raise its errors with ``prefix`` in front of the field path."""
    try:
        return build()
    except EntryFormatError as e:
        reason = str(e).removeprefix(f"{e.field}: ") if e.field else str(e)
        raise EntryFormatError(reason, _join(prefix, e.field)) from None
    except ResourceError as e:
        raise EntryFormatError(str(e), prefix) from None


def _kind(v: object) -> str:
    names = {bool: "a boolean", int: "an integer", str: "a string", float: "a float"}
    names |= {list: "a list", tuple: "a list", dict: "an object", type(None): "null"}
    return names.get(type(v), type(v).__name__)


def _int(v: object, field: str, lo: int = 0, hi: int = MAX_INT) -> int:
    if type(v) is not int:  # bool is an int subclass: refuse it too
        raise EntryFormatError(f"must be an integer, not {_kind(v)}", field)
    if not lo <= v <= hi:
        raise EntryFormatError(f"{v} is out of range {lo}..{hi}", field)
    return v


def _str(v: object, field: str, lo: int, hi: int, pattern: re.Pattern[str] | None = None) -> str:
    if type(v) is not str:
        raise EntryFormatError(f"must be a string, not {_kind(v)}", field)
    if not lo <= len(v) <= hi:
        raise EntryFormatError(f"length {len(v)} is out of range {lo}..{hi}", field)
    if pattern is not None and not pattern.fullmatch(v):
        raise EntryFormatError(f"{v!r} is not {pattern.pattern}", field)
    return v


def _value(v: object, field: str) -> str | int:
    """A constraint or attribute value: a string or an integer."""
    if type(v) is str:
        return _str(v, field, 0, MAX_VALUE)
    if type(v) is int:
        return _int(v, field, -MAX_INT)
    raise EntryFormatError(f"must be a string or an integer, not {_kind(v)}", field)


def _canonical(
    items: object,
    field: str,
    limit: int,
    check: Callable[[Any, str], Any],
    key: Callable[[Any], Any] | None = str,
) -> None:
    """A canonical list (§1): a tuple of checked elements, at most ``limit``, strictly
    ascending by ``key`` (any order when ``key`` is None)."""
    if not isinstance(items, tuple):
        raise EntryFormatError(f"must be a tuple, not {_kind(items)}", field)
    if len(items) > limit:
        raise EntryFormatError(f"has {len(items)} elements, more than {limit}", field)
    for i, x in enumerate(items):
        check(x, f"{field}[{i}]")
    for i in range(1, len(items) if key else 0):
        if key(items[i - 1]) == key(items[i]):
            raise EntryFormatError(f"duplicate element {key(items[i])!r}", f"{field}[{i}]")
        if key(items[i - 1]) > key(items[i]):
            raise EntryFormatError("not sorted ascending", f"{field}[{i}]")


def _pairs(items: object, field: str, limit: int, check: Callable[[Any, str], Any]) -> None:
    """Sorted (name, value) pairs standing for a JSON object with token keys."""

    def pair(x: object, at: str) -> None:
        if not (isinstance(x, tuple) and len(x) == 2):
            raise EntryFormatError("must be a (name, value) pair", at)
        at = f"{field}.{_str(x[0], field, 1, 64)}"
        _str(x[0], at, 1, 64, _TOKEN)
        check(x[1], at)

    _canonical(items, field, limit, pair, key=lambda x: x[0])


def _object(v: object, field: str | None, required: tuple, optional: tuple = ()) -> dict:
    """A JSON object with exactly the given keys, none of them null."""
    if not isinstance(v, dict):
        raise EntryFormatError(f"must be an object, not {_kind(v)}", field)
    for k, x in v.items():
        if k not in required and k not in optional:
            raise EntryFormatError("unknown key", _join(field, str(k)))
        if x is None:
            raise EntryFormatError("must not be null (omit the key instead)", _join(field, k))
    for k in required:
        if k not in v:
            raise EntryFormatError("is required", _join(field, k))
    return v


def _list(v: object, field: str) -> tuple:
    if not isinstance(v, list):
        raise EntryFormatError(f"must be a list, not {_kind(v)}", field)
    if not v:
        raise EntryFormatError("must not be empty (omit an optional key instead)", field)
    return tuple(v)


# --- the data model (§3) ---


@dataclass(frozen=True, slots=True)
class Constraint:
    """Operators on one attribute, all of which must hold (§3.1): ``in_`` is JSON ``in``."""

    eq: str | int | None = None
    in_: tuple[str, ...] | tuple[int, ...] | None = None
    lte: int | None = None
    gte: int | None = None

    def __post_init__(self) -> None:
        if self.eq is None and self.in_ is None and self.lte is None and self.gte is None:
            raise EntryFormatError("needs at least one of eq, in, lte, gte")
        if self.eq is not None:
            _value(self.eq, "eq")
        if self.in_ is not None:
            if not isinstance(self.in_, tuple) or not self.in_:
                raise EntryFormatError("must be a non-empty list", "in")
            for i, v in enumerate(self.in_):
                _value(v, f"in[{i}]")
            if len({type(v) for v in self.in_}) != 1:
                raise EntryFormatError("mixes strings and integers", "in")
            _canonical(self.in_, "in", MAX_IN, _value, key=lambda v: v)
        for op in ("lte", "gte"):
            if getattr(self, op) is not None:
                _int(getattr(self, op), op, -MAX_INT)

    def finite(self) -> frozenset[str | int] | None:
        """The finite set of values ``eq`` and ``in`` leave allowed, or None if unbounded."""
        allowed = None if self.in_ is None else frozenset(self.in_)
        if self.eq is not None:
            allowed = frozenset({self.eq}) if allowed is None else allowed & {self.eq}
        return allowed


def _is(cls: type, what: str) -> Callable[[Any, str], None]:
    def check(x: object, at: str) -> None:
        if not isinstance(x, cls):
            raise EntryFormatError(f"must be {what}, not {_kind(x)}", at)

    return check


def _url(x: object, at: str) -> None:
    if not isinstance(x, Resource) or x.wildcard or not x.is_url:
        raise EntryFormatError("must be a canonical URL without wildcard", at)


@dataclass(frozen=True, slots=True)
class Detail:
    """One authorisation detail (RFC 9396 §2). Empty tuples mean the key is absent (none)."""

    type: str
    actions: tuple[str, ...]
    locations: tuple[Resource, ...] = ()
    resources: tuple[Resource, ...] = ()
    constraints: tuple[tuple[str, Constraint], ...] = ()

    def __post_init__(self) -> None:
        _str(self.type, "type", 1, 128, _TOKEN)
        _canonical(self.actions, "actions", MAX_ACTIONS, lambda a, at: _str(a, at, 1, 64, _TOKEN))
        if not self.actions:
            raise EntryFormatError("must not be empty", "actions")
        _canonical(self.locations, "locations", MAX_LOCATIONS, _url)
        _canonical(self.resources, "resources", MAX_RESOURCES, _is(Resource, "a Resource"))
        _pairs(self.constraints, "constraints", MAX_CONSTRAINTS, _is(Constraint, "a Constraint"))


@dataclass(frozen=True, slots=True)
class Task:
    """The task a credential serves: ``id`` is a segment path, sub-tasks extend it (§3.2)."""

    id: str
    description: str = ""

    def __post_init__(self) -> None:
        _str(self.id, "id", 1, MAX_TASK_ID)
        if not all(_TASK_SEGMENT.fullmatch(s) and s not in (".", "..") for s in self.id.split("/")):
            raise EntryFormatError(f"{self.id!r} is not a '/'-separated segment path", "id")
        check_text(_str(self.description, "description", 0, MAX_DESCRIPTION), "description")


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``count`` uses in any ``window`` seconds."""

    count: int
    window: int

    def __post_init__(self) -> None:
        _int(self.count, "count", 1)
        _int(self.window, "window", 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """The credential-wide limits (§3.2); None means the optional key is absent."""

    expires_at: int
    not_before: int | None = None
    max_uses: int | None = None
    rate: Rate | None = None
    max_depth: int
    max_children: int | None = None
    task: Task

    def __post_init__(self) -> None:
        _int(self.expires_at, "expires_at", 1)
        _int(self.max_depth, "max_depth")
        for name, lo in (("not_before", 0), ("max_uses", 1), ("max_children", 0)):
            if getattr(self, name) is not None:
                _int(getattr(self, name), name, lo)
        if self.not_before is not None and self.not_before >= self.expires_at:
            raise EntryFormatError("must be earlier than expires_at", "not_before")
        if self.rate is not None:
            _is(Rate, "a Rate")(self.rate, "rate")
        _is(Task, "a Task")(self.task, "task")


@dataclass(frozen=True, slots=True)
class Credential:
    """A credential's authority: its scope and its limits."""

    scope: tuple[Detail, ...]
    limits: Limits

    def __post_init__(self) -> None:
        _canonical(self.scope, "scope", MAX_DETAILS, _is(Detail, "a Detail"), key=None)
        if not self.scope:
            raise EntryFormatError("must not be empty", "scope")
        _is(Limits, "Limits")(self.limits, "limits")


# --- JSON values in and out (§3) ---


def _parse_constraint(v: object) -> Constraint:
    obj = _object(v, None, (), ("eq", "in", "lte", "gte"))
    in_ = _list(obj["in"], "in") if "in" in obj else None
    return Constraint(obj.get("eq"), in_, obj.get("lte"), obj.get("gte"))


def _resources(obj: dict, name: str, url: bool) -> tuple[Resource, ...]:
    """An optional list of resources (``url``: locations, no wildcard) at ``obj[name]``."""
    items = _list(obj[name], name) if name in obj else ()
    parse = partial(parse_resource, allow_wildcard=not url, url_only=url)
    return tuple(_nested(f"{name}[{i}]", partial(parse, t)) for i, t in enumerate(items))


def _parse_detail(v: object) -> Detail:
    obj = _object(v, None, ("type", "actions"), ("locations", "resources", "constraints"))
    actions = _list(obj["actions"], "actions")
    constraints = ()
    if "constraints" in obj:
        cons = obj["constraints"]
        if not isinstance(cons, dict) or not cons:
            raise EntryFormatError("must be a non-empty object (or be omitted)", "constraints")
        constraints = tuple(
            (k, _nested(f"constraints.{k}", lambda k=k: _parse_constraint(cons[k])))
            for k in sorted(cons)
        )
    locations, resources = _resources(obj, "locations", True), _resources(obj, "resources", False)
    return Detail(obj["type"], actions, locations, resources, constraints)


def parse_scope(value: object) -> tuple[Detail, ...]:
    """Parse a credential's ``scope`` (a JSON list of details); errors name ``scope[i]...``."""
    items = _list(value, "scope")
    if len(items) > MAX_DETAILS:
        raise EntryFormatError(f"has {len(items)} details, more than {MAX_DETAILS}", "scope")
    return tuple(_nested(f"scope[{i}]", lambda d=d: _parse_detail(d)) for i, d in enumerate(items))


def parse_limits(obj: dict) -> Limits:
    """Read the limit fields (§3.2) out of a credential body, ignoring the keys it does not own."""
    if not isinstance(obj, dict):
        raise EntryFormatError(f"a credential body must be an object, not {_kind(obj)}")
    fields = _object({k: obj[k] for k in _LIMIT_KEYS if k in obj}, None, (), _LIMIT_KEYS)
    for k in ("expires_at", "max_depth", "task"):
        if k not in fields:
            raise EntryFormatError("is required", k)
    rate = fields.get("rate")
    if rate is not None:
        rate = _nested("rate", lambda: Rate(**_object(rate, None, ("count", "window"))))
    task = _nested("task", lambda: Task(**_object(fields["task"], None, ("id", "description"))))
    return Limits(**(fields | {"rate": rate, "task": task}))


def parse_credential(obj: dict) -> Credential:
    """Parse the authority of a grant or delegation body: its scope and its limits."""
    if not isinstance(obj, dict):
        raise EntryFormatError(f"a credential body must be an object, not {_kind(obj)}")
    if "scope" not in obj:
        raise EntryFormatError("is required", "scope")
    return Credential(parse_scope(obj["scope"]), parse_limits(obj))


def _constraint_to_json(c: Constraint) -> dict:
    ops = {"eq": c.eq, "in": None if c.in_ is None else list(c.in_), "lte": c.lte, "gte": c.gte}
    return {k: v for k, v in ops.items() if v is not None}


def scope_to_json(scope: Sequence[Detail]) -> list:
    """The JSON value of a scope; ``parse_scope(scope_to_json(s)) == s``."""
    if not all(isinstance(d, Detail) for d in scope):
        raise TypeError("scope_to_json() takes Detail values")
    out = []
    for d in scope:
        obj: dict[str, Any] = {"type": d.type, "actions": list(d.actions)}
        if d.locations:
            obj["locations"] = [str(r) for r in d.locations]
        if d.resources:
            obj["resources"] = [str(r) for r in d.resources]
        if d.constraints:
            obj["constraints"] = {k: _constraint_to_json(c) for k, c in d.constraints}
        out.append(obj)
    return out


def limits_to_json(limits: Limits) -> dict:
    """The limit fields of a credential body; ``parse_limits(limits_to_json(x)) == x``."""
    if not isinstance(limits, Limits):
        raise TypeError("limits_to_json() takes Limits")
    out: dict[str, Any] = {k: getattr(limits, k) for k in _LIMIT_KEYS}
    out["task"] = {"id": limits.task.id, "description": limits.task.description}
    if limits.rate is not None:
        out["rate"] = {"count": limits.rate.count, "window": limits.rate.window}
    return {k: v for k, v in out.items() if v is not None}
