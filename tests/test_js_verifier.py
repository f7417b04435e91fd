"""The independent JavaScript verifier (api/web/verify.js) agrees with the fixtures
and with the Python verifier.

Runs tests/js/verify_fixtures.mjs under node. Skipped when node is absent,
unless LINEAGE_NODE_TESTS=required, in which case a missing node fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lineage.verifier.bundle import verify_bundle
from lineage.verifier.errors import (
    ChainError,
    EntryFormatError,
    LineageError,
    ProofError,
    SignatureError,
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "js" / "verify_fixtures.mjs"
FIXTURES = ROOT / "fixtures"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("LINEAGE_NODE_TESTS") == "required":
            pytest.fail("node is not installed, and LINEAGE_NODE_TESTS=required")
        pytest.skip(
            "node is not installed (set LINEAGE_NODE_TESTS=required to make this a failure)"
        )
    return node


@pytest.fixture(scope="module")
def js_results() -> dict[str, dict]:
    node = _node()
    proc = subprocess.run(
        [node, str(SCRIPT), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    results = {}
    for line in proc.stdout.splitlines():
        row = json.loads(line)
        results[row["file"]] = row
    assert results, f"no output from {SCRIPT}: rc={proc.returncode}\n{proc.stderr}"
    # the script's exit status must reflect the per-file verdicts
    assert (proc.returncode == 0) == all(r["agree"] for r in results.values()), proc.stderr
    return results


def test_js_verifier_agrees_with_every_fixture(js_results: dict[str, dict]) -> None:
    expected_files = [
        f"{sub}/{p.name}"
        for sub in ("bundles", "receipts")
        if (FIXTURES / sub).is_dir()
        for p in sorted((FIXTURES / sub).glob("*.json"))
        if p.name != "expected.json"
    ]
    missing = [f for f in expected_files if f not in js_results]
    assert not missing, f"the JS script skipped: {missing}"
    disagreeing = {
        f: {k: r.get(k) for k in ("ok", "check", "want", "detail", "entry")}
        for f, r in js_results.items()
        if not r["agree"]
    }
    assert not disagreeing, "JS verifier disagrees with fixtures:\n" + json.dumps(
        disagreeing, indent=2
    )


def _python_result(data: bytes, vkey: str) -> tuple[bool, str | None]:
    """(ok, check) as `lineage-verify --json` reports it (verifier/cli.py `_failure`):
    a ChainError names its check; a ProofError is `proof`, a SignatureError
    `signature`, and every other error (EntryFormatError and the other
    FormatErrors) `format`."""
    try:
        verify_bundle(data, vkey)
    except EntryFormatError:
        return False, "format"
    except ChainError as exc:
        return False, exc.check
    except ProofError:
        return False, "proof"
    except SignatureError:
        return False, "signature"
    except LineageError:
        return False, "format"
    return True, None


def test_js_verifier_agrees_with_python_verifier(js_results: dict[str, dict]) -> None:
    vkey = (FIXTURES / "log.vkey").read_text().strip()
    disagreeing = {}
    for path in sorted((FIXTURES / "bundles").glob("*.json")):
        if path.name == "expected.json":
            continue
        py = _python_result(path.read_bytes(), vkey)
        row = js_results[f"bundles/{path.name}"]
        js = (row["ok"], row["check"])
        if py != js:
            disagreeing[path.name] = {"python": py, "js": js, "js_detail": row.get("detail")}
    assert not disagreeing, "JS and Python verifiers disagree:\n" + json.dumps(
        disagreeing, indent=2
    )


def test_the_example_in_explorer_md_runs_as_it_says():
    """docs/EXPLORER.md §6's example, run from the repository's root as the text says."""
    text = (ROOT / "docs" / "EXPLORER.md").read_text()
    code = re.search(r"```js\n(.*?)```", text, re.S).group(1)
    said = re.search(r"it\s+prints `(verified: tree size \d+)`", text).group(1)
    proc = subprocess.run(
        [_node(), "--input-type=module", "-e", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    first, each = proc.stdout.splitlines()
    assert first == said
    assert each.split() == ["ok"] * int(said.rsplit(" ", 1)[1])
