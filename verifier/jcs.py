"""Canonical JSON: the RFC 8785 (JCS) subset every Lineage structure is encoded in.

FORMAT.md §2. The subset:

- values are objects, arrays, strings, integers, ``true``, ``false`` and ``null``;
- object keys are ASCII strings, unique within their object;
- integers lie within ±(2**53 - 1); there are no floats (no fraction, no exponent);
- integers have no ``-0`` spelling (``parse`` refuses it in any document);
- strings are valid Unicode (no lone surrogates);
- nesting: no value deeper than ``MAX_DEPTH`` below the top-level value (depth 0) of
  the document checked. A document that carries entries (a leaf, a bundle) is parsed
  with a larger ``max_depth`` so that each entry is held to ``MAX_DEPTH`` counted from
  the entry itself (FORMAT.md §2).

On this subset RFC 8785 §3.2 reduces to: keys sorted by code point (ASCII keys
sort the same by UTF-16 code unit, RFC 8785 §3.2.3), no insignificant
whitespace, integers in shortest decimal form, strings UTF-8 with only ``"``,
``\\`` and the C0 controls escaped (``\\b \\t \\n \\f \\r`` short, the rest as
``\\u00xx`` lower-case). Python's ``json.dumps`` with sorted keys, compact
separators and ``ensure_ascii=False`` produces exactly that, so it is the
encoder, behind a validation pass; ``tests/test_jcs.py`` checks it byte for
byte against the ``rfc8785`` package.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import EncodingError

__all__ = ["MAX_DEPTH", "MAX_SAFE_INTEGER", "canonical", "parse", "parse_canonical"]

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 32


def _check(value: Any, depth: int, max_depth: int = MAX_DEPTH) -> None:
    """Raise EncodingError unless ``value``, at ``depth``, lies in the subset."""
    if depth > max_depth:
        raise EncodingError(f"nesting deeper than {max_depth}")
    if value is None or value is True or value is False:
        return
    if isinstance(value, int):
        if type(value) is not int:  # an IntEnum or other subclass would not round-trip
            raise EncodingError(f"integer of type {type(value).__name__}")
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise EncodingError("integer outside ±(2**53 - 1)")
        return
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise EncodingError("string is not valid Unicode (lone surrogate)") from None
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodingError(f"object key {key!r} is not a string")
            if not key.isascii():
                raise EncodingError(f"object key {key!r} is not ASCII")
            _check(item, depth + 1, max_depth)
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check(item, depth + 1, max_depth)
        return
    if isinstance(value, float):
        raise EncodingError("floats are outside the canonical subset")
    raise EncodingError(f"{type(value).__name__} is not a JSON value")


def canonical(value: Any, *, max_depth: int = MAX_DEPTH) -> bytes:
    """The canonical (RFC 8785) bytes of ``value``; EncodingError outside the subset."""
    _check(value, 0, max_depth)
    return checked_canonical(value)


def checked_canonical(value: Any) -> bytes:
    """``canonical`` of a value already checked to lie in the subset (one that ``parse``
    returned, or a part of one): the encoding, without walking the value again."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, item in pairs:
        if key in obj:
            raise EncodingError(f"duplicate object key {key!r}")
        obj[key] = item
    return obj


def _no_float(text: str) -> Any:
    raise EncodingError(f"float {text} is outside the canonical subset")


def _int(text: str) -> int:
    if text == "-0":  # json reads it as 0: one integer, one spelling (FORMAT.md §2)
        raise EncodingError("-0 is outside the canonical subset")
    return int(text)


def _no_constant(text: str) -> Any:
    raise EncodingError(f"{text} is not JSON")


def parse(data: bytes, *, max_size: int | None = None, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON bytes, rejecting anything outside the subset (and duplicate keys).

    Accepts any whitespace and key order; see ``parse_canonical`` for the strict form.
    ``max_depth`` counts from this document's top-level value (depth 0).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EncodingError("JSON input must be bytes")
    data = bytes(data)
    if max_size is not None and len(data) > max_size:
        raise EncodingError(f"{len(data)} bytes is more than the limit of {max_size}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EncodingError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    if text.startswith("\ufeff"):
        raise EncodingError("byte order mark")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_float=_no_float,
            parse_int=_int,
            parse_constant=_no_constant,
        )
    except EncodingError:
        raise
    except RecursionError:
        raise EncodingError(f"nesting deeper than {max_depth}") from None
    except ValueError as exc:  # json.JSONDecodeError, and int() digit limits
        raise EncodingError(f"not JSON: {exc}") from None
    _check(value, 0, max_depth)
    return value


def parse_canonical(data: bytes, *, max_size: int | None = None, max_depth: int = MAX_DEPTH) -> Any:
    """Parse bytes that must already be canonical: ``canonical(result) == data``.

    Signed structures travel in canonical form, so one object has one encoding
    and one id; anything else is rejected rather than re-encoded.
    """
    value = parse(data, max_size=max_size, max_depth=max_depth)
    if checked_canonical(value) != bytes(data):  # ``parse`` checked the subset
        raise EncodingError("not in canonical form (RFC 8785)")
    return value
