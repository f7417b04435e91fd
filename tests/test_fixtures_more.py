"""The fixtures beside ``fixtures/bundles/`` (FORMAT.md §9.2):

- ``fixtures/refused-early/``: bundles refused before any entry is replayed, by their
  schema [``format``] or by §9.1 step 1 [``signature``];
- ``fixtures/complete/``: whole logs, replayed in complete mode (FORMAT.md §8, W = 60 s);
  each expectation also says what partial mode (an evidence bundle) answers.

The reference verifier must give each expected check; so must the JavaScript verifier
(api/web/verify.js, run under node when it is installed: skipped otherwise, unless
LINEAGE_NODE_TESTS=required).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lineage.verifier.bundle import parse_bundle, verify_bundle
from lineage.verifier.chain import DEFAULT_INVOCATION_WINDOW, Replay
from lineage.verifier.cli import main as verify_main
from lineage.verifier.errors import ChainError
from lineage.verifier.note import parse_vkey

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
EARLY = FIXTURES / "refused-early"
COMPLETE = FIXTURES / "complete"
KEY_FILE = str(FIXTURES / "log.vkey")
LOG_KEY = parse_vkey((FIXTURES / "log.vkey").read_text().strip())
EARLY_EXPECTED = json.loads((EARLY / "expected.json").read_text())
COMPLETE_EXPECTED = json.loads((COMPLETE / "expected.json").read_text())


def _names(folder: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in folder.glob(f"{prefix}-*.json"))


def test_every_invalid_fixture_has_an_expectation():
    assert _names(EARLY, "invalid") == sorted(EARLY_EXPECTED)
    assert _names(COMPLETE, "invalid") == sorted(COMPLETE_EXPECTED)
    assert all(e["mode"] == "complete" for e in COMPLETE_EXPECTED.values())
    assert not _names(EARLY, "valid")


@pytest.mark.parametrize("name", sorted(EARLY_EXPECTED))
def test_refused_early(name, capsys):
    assert verify_main([str(EARLY / name), "--log-key", KEY_FILE, "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["check"] == EARLY_EXPECTED[name]["check"], result["error"]
    assert EARLY_EXPECTED[name]["detail"] in result["error"]
    assert "entry" not in result  # no entry was replayed


def _partial(data: bytes) -> str | None:
    try:
        verify_bundle(data, LOG_KEY)
    except ChainError as exc:
        return exc.check
    return None


def _complete(data: bytes) -> tuple[str | None, str]:
    """§9.1 with replay (step 4) in complete mode, for a bundle that is its whole log."""
    bundle = parse_bundle(data)
    cp = bundle.checkpoint.split("\n")
    assert [e.index for e in bundle.entries] == list(range(int(cp[1]))), "not a whole log"
    replay = Replay(LOG_KEY, complete=True, invocation_window=DEFAULT_INVOCATION_WINDOW)
    try:
        replay.apply_all((e.index, e.leaf) for e in bundle.entries)
    except ChainError as exc:
        return exc.check, str(exc)
    return None, ""


@pytest.mark.parametrize("name", _names(COMPLETE, "valid"))
def test_complete_valid(name):
    data = (COMPLETE / name).read_bytes()
    assert _partial(data) is None
    assert _complete(data) == (None, "")


@pytest.mark.parametrize("name", sorted(COMPLETE_EXPECTED))
def test_complete_invalid(name):
    want = COMPLETE_EXPECTED[name]
    data = (COMPLETE / name).read_bytes()
    assert _partial(data) == want["partial"]
    check, error = _complete(data)
    assert check == want["check"], error
    assert want["detail"] in error


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("LINEAGE_NODE_TESTS") == "required":
            pytest.fail("node is not installed, and LINEAGE_NODE_TESTS=required")
        pytest.skip("node is not installed")
    return node


JS = """
import { readFileSync } from "node:fs";
import { webcrypto } from "node:crypto";
import { verifyBundle, webCryptoBackend } from "./api/web/verify.js";
const crypto = webCryptoBackend(webcrypto.subtle);
const vkey = readFileSync("fixtures/log.vkey", "utf8").trim();
for (const [path, mode] of JSON.parse(process.argv[1])) {
  const r = await verifyBundle(readFileSync(path), vkey, { crypto, mode });
  const check = r.ok ? null : r.check;
  console.log(JSON.stringify({ path, mode, ok: r.ok, check, detail: r.detail ?? null }));
}
"""


@pytest.fixture(scope="module")
def js_results() -> dict[tuple[str, str], dict]:
    node = _node()
    jobs = [[f"fixtures/refused-early/{n}", "partial"] for n in _names(EARLY, "invalid")]
    for name in _names(COMPLETE, "valid") + _names(COMPLETE, "invalid"):
        path = f"fixtures/complete/{name}"
        jobs += [[path, "complete"], [path, "partial"]]
    proc = subprocess.run(
        [node, "--input-type=module", "-e", JS, json.dumps(jobs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    return {(Path(r["path"]).name, r["mode"]): r for r in rows}


def _want(name: str, mode: str) -> str | None:
    if name in EARLY_EXPECTED:
        return EARLY_EXPECTED[name]["check"]
    if name.startswith("valid-"):
        return None
    return COMPLETE_EXPECTED[name]["check" if mode == "complete" else "partial"]


def test_js_verifier_agrees(js_results):
    disagreeing = {
        f"{name} ({mode})": {"want": _want(name, mode), "js": r["check"], "detail": r["detail"]}
        for (name, mode), r in js_results.items()
        if r["check"] != _want(name, mode)
    }
    assert not disagreeing, "JS verifier disagrees:\n" + json.dumps(disagreeing, indent=2)
