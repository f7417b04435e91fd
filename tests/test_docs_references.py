"""Every test docs/SECURITY.md and docs/RELIABILITY.md cite as evidence exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"(test_[a-z0-9_]+\.py)::(test_[a-z0-9_]+)")


@pytest.mark.parametrize("doc", ["SECURITY.md", "RELIABILITY.md"])
def test_every_cited_test_exists(doc: str):
    path = ROOT / "docs" / doc
    if not path.exists():
        pytest.skip(f"docs/{doc} is not written yet")
    cited = set(CITED.findall(path.read_text()))
    assert cited, f"docs/{doc} cites no test"
    missing = [
        f"{f}::{name}"
        for f, name in sorted(cited)
        if not re.search(rf"^(async )?def {name}\(", (ROOT / "tests" / f).read_text(), re.M)
    ]
    assert not missing, f"docs/{doc} cites tests that do not exist: {missing}"
