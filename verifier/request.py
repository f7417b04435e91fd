"""Requests and permits: does a scope allow one request? (SCOPE.md §5)

A request names ``type``, ``action``, optionally a ``location`` (resource server)
and a ``resource``, and ``attributes`` that constraints test. ``permits`` returns
None when some detail allows it, else the reason naming the failing field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from .errors import EntryFormatError
from .resource import Resource, matches, parse_resource
from .scope import (
    _TOKEN,
    MAX_ATTRIBUTES,
    Constraint,
    Credential,
    Detail,
    _nested,
    _object,
    _pairs,
    _str,
    _url,
    _value,
)

__all__ = ["Request", "constraint_fails", "parse_request", "permits", "request_to_json"]


@dataclass(frozen=True, slots=True)
class Request:
    """What an invocation asks for (§5.1); ``attributes`` are sorted (name, value) pairs."""

    type: str
    action: str
    location: Resource | None = None
    resource: Resource | None = None
    attributes: tuple[tuple[str, str | int], ...] = ()

    def __post_init__(self) -> None:
        _str(self.type, "type", 1, 128, _TOKEN)
        _str(self.action, "action", 1, 64, _TOKEN)
        if self.location is not None:
            _url(self.location, "location")
        if self.resource is not None and (
            not isinstance(self.resource, Resource) or self.resource.wildcard
        ):
            raise EntryFormatError("must be a canonical name without wildcard", "resource")
        _pairs(self.attributes, "attributes", MAX_ATTRIBUTES, _value)


def parse_request(value: object) -> Request:
    """Parse an invocation's ``request`` object; errors name ``request.<field>``."""

    def build() -> Request:
        obj = _object(value, None, ("type", "action"), ("location", "resource", "attributes"))
        places = {
            k: _nested(k, partial(parse_resource, obj[k], allow_wildcard=False, url_only=u))
            for k, u in (("location", True), ("resource", False))
            if k in obj
        }
        attrs = obj.get("attributes", {})
        if not isinstance(attrs, dict) or ("attributes" in obj and not attrs):
            raise EntryFormatError("must be a non-empty object (or be omitted)", "attributes")
        pairs = tuple((k, attrs[k]) for k in sorted(attrs))
        return Request(obj["type"], obj["action"], attributes=pairs, **places)

    return _nested("request", build)


def request_to_json(request: Request) -> dict:
    """The JSON value of a request; ``parse_request(request_to_json(r)) == r``."""
    if not isinstance(request, Request):
        raise TypeError("request_to_json() takes a Request")
    out: dict[str, Any] = {"type": request.type, "action": request.action}
    for k in ("location", "resource"):
        if getattr(request, k) is not None:
            out[k] = str(getattr(request, k))
    if request.attributes:
        out["attributes"] = dict(request.attributes)
    return out


def _fails(c: Constraint, v: str | int) -> str | None:
    """The first operator of ``c`` that value ``v`` fails (§3.1); types must match exactly."""
    if c.eq is not None and not (type(v) is type(c.eq) and v == c.eq):
        return "eq"
    if c.in_ is not None and not (type(v) is type(c.in_[0]) and v in c.in_):
        return "in"
    if c.lte is not None and not (type(v) is int and v <= c.lte):
        return "lte"
    if c.gte is not None and not (type(v) is int and v >= c.gte):
        return "gte"
    return None


constraint_fails = _fails  # public: a policy's ``match.attributes`` test values the same way


def _denial(d: Detail, at: str, req: Request) -> tuple[int, str] | None:
    """None if detail ``d`` allows ``req``; else (how far it got, the reason)."""
    if req.action not in d.actions:
        return 1, f"action: {req.action!r} is not in {at}.actions"
    for stage, name in ((2, "location"), (3, "resource")):
        asked, allowed = getattr(req, name), getattr(d, name + "s")
        if asked is None and allowed:
            return stage, f"{name}: missing, but {at}.{name}s restricts it"
        if asked is not None and not any(matches(q, asked) for q in allowed):
            return stage, f"{name}: {str(asked)!r} is not within {at}.{name}s"
    attrs = dict(req.attributes)
    for attr, c in d.constraints:
        if attr not in attrs:
            return 4, f"attributes.{attr}: missing, but {at}.constraints.{attr} restricts it"
        op = _fails(c, attrs[attr])
        if op is not None:
            return 4, f"attributes.{attr}: fails {at}.constraints.{attr}.{op}"
    return None


def permits(authority: Credential | Sequence[Detail], request: Request) -> str | None:
    """None if some detail of the scope allows ``request``; else the deny reason (§5.2)."""
    scope = authority.scope if isinstance(authority, Credential) else authority
    if not all(isinstance(d, Detail) for d in scope) or not isinstance(request, Request):
        raise TypeError("permits() takes a Credential or Detail sequence and a Request")
    best: tuple[int, str] | None = None
    for i, d in enumerate(scope):
        if d.type != request.type:
            continue
        denial = _denial(d, f"scope[{i}]", request)
        if denial is None:
            return None
        if best is None or denial[0] > best[0]:
            best = denial
    return best[1] if best else f"type: no detail of type {request.type!r}"
