"""Request parameters, read strictly and bounded, and documented as they are read.

Every integer a request carries in its query or path is decimal digits alone
(no sign, spaces, fraction, exponent or ``_`` separators, which the default
parsing would accept) and at most 2^53 - 1 (the integers every JSON reader
holds exactly, as in entries), so no number reaches SQLite's 64-bit limit.
Every entry id or credential handle in a path is 64 lower-case hex digits.
Anything else is 400 ``invalid_request``.

Each rule is declared with ``Query``/``Path`` so that FastAPI both enforces it
and writes it into the OpenAPI document: what the document allows, a handler
may refuse only for what no schema can say (one parameter against another,
or against the log's current size).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BeforeValidator

from lineage.verifier.fields import HEX_ID
from lineage.verifier.jcs import MAX_SAFE_INTEGER

__all__ = [
    "HEX_ID_PATTERN",
    "MAX_INT",
    "Count",
    "CredentialId",
    "EntryId",
    "Index",
    "OptionalIndex",
    "OptionalSize",
    "PathIndex",
    "Size",
    "Time",
    "index",
    "optional_index",
    "size",
]

MAX_INT = MAX_SAFE_INTEGER  # 2^53 - 1
_DIGITS = re.compile(r"0|[1-9][0-9]{0,15}")
HEX_ID_PATTERN = f"^{HEX_ID.pattern}$"  # HEX_ID is used with fullmatch; a schema needs anchors


def _digits(value: Any) -> Any:
    if isinstance(value, str) and not (value.isascii() and _DIGITS.fullmatch(value)):
        raise ValueError("must be decimal digits (no sign, space, fraction or separator)")
    return value


Digits = BeforeValidator(_digits)


def index(description: str | None = None) -> Any:
    """A query integer from 0 to 2^53 - 1 (a leaf index, a cursor, a time)."""
    return Annotated[int, Query(ge=0, le=MAX_INT, description=description), Digits]


def optional_index(description: str | None = None) -> Any:
    """An optional query integer from 0 to 2^53 - 1."""
    return Annotated[int | None, Query(ge=0, le=MAX_INT, description=description), Digits]


def size(description: str | None = None) -> Any:
    """A query integer from 1 to 2^53 - 1 (a tree size)."""
    return Annotated[int, Query(ge=1, le=MAX_INT, description=description), Digits]


# ``X | None`` parameters are optional, never null: the document says only the integer
# (``openapi.install_openapi`` drops the ``null`` FastAPI adds for them).
Time = Annotated[int | None, Query(ge=0, le=MAX_INT, description="Unix seconds"), Digits]
Index = index()
OptionalIndex = optional_index()
Size = size()
OptionalSize = Annotated[int | None, Query(ge=1, le=MAX_INT), Digits]
PathIndex = Annotated[int, Path(ge=0, le=MAX_INT, description="a leaf index"), Digits]
EntryId = Annotated[
    str,
    Path(
        pattern=HEX_ID_PATTERN,
        description="an entry id: the hex SHA-256 of its canonical bytes (64 lower-case hex)",
    ),
]
CredentialId = Annotated[
    str,
    Path(
        pattern=HEX_ID_PATTERN,
        description="a credential handle: its grant or delegation entry id (64 lower-case hex)",
    ),
]


def Count(maximum: int) -> Any:
    """A page size from 1 to ``maximum``."""
    return Annotated[int, Query(ge=1, le=maximum), Digits]
