"""Integer request parameters, read strictly and bounded.

Every integer a request carries in its query or path is decimal digits alone
(no sign, spaces, fraction, exponent or ``_`` separators, which the default
parsing would accept) and at most 2^53, so no number reaches SQLite's 64-bit
limit. Anything else is 400 ``invalid_request``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BeforeValidator

__all__ = [
    "MAX_INT",
    "Count",
    "Index",
    "OptionalIndex",
    "OptionalSize",
    "PathIndex",
    "Size",
    "Time",
]

MAX_INT = 2**53
_DIGITS = re.compile(r"0|[1-9][0-9]{0,15}")


def _digits(value: Any) -> Any:
    if isinstance(value, str) and not (value.isascii() and _DIGITS.fullmatch(value)):
        raise ValueError("must be decimal digits (no sign, space, fraction or separator)")
    return value


Digits = BeforeValidator(_digits)
Time = Annotated[int | None, Query(ge=0, le=MAX_INT, description="Unix seconds"), Digits]
Index = Annotated[int, Query(ge=0, le=MAX_INT), Digits]
OptionalIndex = Annotated[int | None, Query(ge=0, le=MAX_INT), Digits]
Size = Annotated[int, Query(ge=1, le=MAX_INT), Digits]
OptionalSize = Annotated[int | None, Query(ge=1, le=MAX_INT), Digits]
PathIndex = Annotated[int, Path(ge=0, le=MAX_INT), Digits]


def Count(maximum: int) -> Any:
    """A page size from 1 to ``maximum``."""
    return Annotated[int, Query(ge=1, le=maximum), Digits]
