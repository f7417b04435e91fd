"""How many examples a property test draws: its own number, or at most 20 in the fast loop.

``make test-fast`` sets ``HYPOTHESIS_PROFILE=fast``; a test that names its own
``max_examples`` would otherwise keep it there, so each writes
``max_examples=examples(N)``. CI (``make test``) draws N.
"""

from __future__ import annotations

import os

FAST = os.environ.get("HYPOTHESIS_PROFILE") == "fast"


def examples(n: int) -> int:
    return min(n, 20) if FAST else n
