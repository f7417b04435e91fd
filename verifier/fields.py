"""Strict readers for JSON objects: required, optional and unknown fields, typed and bounded.

Every schema in the format is read through ``Fields`` so that a missing field,
an extra field, a wrong type or an out-of-range value raises
``EntryFormatError`` naming the field by its dotted path (``scope[0].actions``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .errors import EntryFormatError, FormatError
from .jcs import MAX_SAFE_INTEGER

__all__ = ["HEX_ID", "NOT_IN_TEXT", "Fields", "check_text", "expect_int", "expect_str", "join"]

T = TypeVar("T")

HEX_ID = re.compile(r"[0-9a-f]{64}")
# FORMAT.md §1: free text for people (a task's description) may hold any Unicode but code
# points that move a terminal's cursor, start another line, or make text read other than
# it is stored: C0 controls, DEL and C1 controls; soft hyphen; Arabic letter mark;
# Mongolian vowel separator; zero-width space, joiners, LRM and RLM; line and paragraph
# separators and bidi embeddings and overrides (U+2028-U+202E); word joiner, invisible
# operators and bidi isolates (U+2060-U+206F); the byte order mark; interlinear
# annotation (U+FFF9-U+FFFB); noncharacters U+FFFE and U+FFFF; the tag characters
# (U+E0000-U+E007F), which hide text from people but not from a model reading it.
NOT_IN_TEXT = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e"
    "\u2060-\u206f\ufeff\ufff9-\ufffb\ufffe\uffff\U000e0000-\U000e007f]"
)


def check_text(value: str, path: str) -> str:
    """``value`` unless it holds a code point of ``NOT_IN_TEXT``."""
    bad = NOT_IN_TEXT.search(value)
    if bad is not None:
        raise EntryFormatError(
            f"may not hold U+{ord(bad.group()):04X} (a control, separator or invisible "
            "formatting character)",
            path,
        )
    return value


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def expect_int(value: Any, path: str, lo: int = 0, hi: int = MAX_SAFE_INTEGER) -> int:
    if type(value) is not int:  # bool is an int subclass, and is not an integer here
        raise EntryFormatError("must be an integer", path)
    if not lo <= value <= hi:
        raise EntryFormatError(f"must be between {lo} and {hi}", path)
    return value


def expect_str(
    value: Any, path: str, *, max_len: int = 1024, pattern: re.Pattern[str] | None = None
) -> str:
    if not isinstance(value, str):
        raise EntryFormatError("must be a string", path)
    if len(value) > max_len:
        raise EntryFormatError(f"longer than {max_len} characters", path)
    if pattern is not None and not pattern.fullmatch(value):
        raise EntryFormatError(f"does not match {pattern.pattern}", path)
    return value


def _nest(outer: str, inner: str | None) -> str:
    if not inner:
        return outer
    return outer + inner if inner.startswith("[") else f"{outer}.{inner}"


class Fields:
    """Reads one JSON object's members; ``done()`` rejects any member left unread."""

    def __init__(self, value: Any, path: str = ""):
        if not isinstance(value, Mapping):
            raise EntryFormatError("must be an object", path or None)
        self.obj = value
        self.path = path
        self._seen: set[str] = set()

    def at(self, key: str) -> str:
        return join(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.obj

    def raw(self, key: str, *, required: bool = True) -> Any:
        self._seen.add(key)
        if key not in self.obj:
            if required:
                raise EntryFormatError("is required", self.at(key))
            return None
        if self.obj[key] is None:  # absent is the one encoding of "not set" (FORMAT.md §1)
            raise EntryFormatError("must not be null (omit the field instead)", self.at(key))
        return self.obj[key]

    def int(self, key: str, lo: int = 0, hi: int = MAX_SAFE_INTEGER, *, required: bool = True):
        value = self.raw(key, required=required)
        return None if value is None and not required else expect_int(value, self.at(key), lo, hi)

    def str(self, key: str, *, required: bool = True, max_len: int = 1024, pattern=None):
        value = self.raw(key, required=required)
        if value is None and not required:
            return None
        return expect_str(value, self.at(key), max_len=max_len, pattern=pattern)

    def const(self, key: str, expected: Any) -> Any:
        value = self.raw(key)
        if type(value) is not type(expected) or value != expected:
            raise EntryFormatError(f"must be {expected!r}", self.at(key))
        return value

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self.raw(key)
        if value not in options or not isinstance(value, str):
            raise EntryFormatError(f"must be one of {', '.join(options)}", self.at(key))
        return value

    def object(self, key: str, *, required: bool = True) -> Mapping[str, Any] | None:
        value = self.raw(key, required=required)
        if value is None and not required:
            return None
        if not isinstance(value, Mapping):
            raise EntryFormatError("must be an object", self.at(key))
        return value

    def parsed(self, key: str, parse: Callable[[Any], T], *, required: bool = True):
        """Apply ``parse(value)``; its errors are re-labelled under this field's path."""
        value = self.raw(key, required=required)
        if value is None and not required:
            return None
        try:
            return parse(value)
        except EntryFormatError as exc:
            inner = exc.field
            message = str(exc)[len(inner) + 2 :] if inner else str(exc)
            raise EntryFormatError(message, _nest(self.at(key), inner)) from None
        except FormatError as exc:
            raise EntryFormatError(str(exc), self.at(key)) from None

    def done(self) -> None:
        extra = sorted(set(self.obj) - self._seen)
        if extra:
            raise EntryFormatError("unknown field", self.at(extra[0]))
