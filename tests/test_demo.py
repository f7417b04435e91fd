"""The demo (ledger/demo.py, ``lineage demo``), and the queries and exports an auditor
runs over a ledger (ledger/query.py, ledger/export.py; FORMAT.md §9).

A ``story`` ledger with a fixed clock answers the queries: alice grants the agent
(inbox-triage) who delegates to the reader, who delegates to the helper; bob grants
his own agent; two accesses; alice revokes the reader's credential.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import lineage.api.cli
from lineage.ledger.audit import audit
from lineage.ledger.cli import app
from lineage.ledger.config import Settings
from lineage.ledger.demo import run_demo
from lineage.ledger.errors import NotFound, StorageError
from lineage.ledger.export import (
    credential_bundle,
    principal_bundle,
    rows_csv,
    rows_dot,
    rows_jsonl,
)
from lineage.ledger.issuance import bind_principal
from lineage.ledger.ledger import open_ledger
from lineage.ledger.query import Filter, entries, lineage, subtree
from lineage.verifier.bodies import grant_body
from lineage.verifier.bundle import verify_bundle
from lineage.verifier.entry import sign_entry
from lineage.verifier.jcs import canonical
from lineage.verifier.note import parse_vkey
from tests.issuance_helpers import ORIGIN, T0, World, key, parent_scope, reopen, world

REPO = Path(__file__).resolve().parent.parent
VERIFY = [sys.executable, "-m", "lineage.verifier.cli"]  # lineage-verify

# -- the demo -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Any]:
    """Run the demo once; its lines, files and ledger are shared by the tests below."""
    root = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    out = run_demo(root / "lineage.db", root / "keys", lines.append)
    return {"root": root, "lines": lines, "bundle": out, "db": root / "lineage.db"}


def _line(lines: list[str], marker: str) -> str:
    found = [line for line in lines if marker in line]
    assert len(found) == 1, (marker, lines)
    return found[0]


def test_the_demo_tells_the_story(demo: dict[str, Any]):
    lines = demo["lines"]
    assert [line.split(".")[0] for line in lines if line[:1].isdigit()] == [
        str(n) for n in range(1, 10)
    ]
    assert "ALLOW" in _line(lines, "5. reader reads an invoice")
    refused = _line(lines, "6. triage tries to delegate")
    assert "REFUSED" in refused and "field scope[0].actions" in refused
    assert "ALLOW" in _line(lines, "7. drafter sends its one reply")
    second = _line(lines, "and tries a second")
    assert "DENY" in second and "budget" in second
    revoked = _line(lines, "reader tries again")
    assert "DENY" in revoked and "revoked" in revoked


def test_the_demo_ledger_passes_a_full_audit(demo: dict[str, Any]):
    vkey = (demo["root"] / "lineage.vkey").read_text().strip()
    report = audit(demo["db"], parse_vkey(vkey))
    assert report.accesses == 4 and report.credentials == 3


def test_the_demo_bundle_verifies_with_lineage_verify(demo: dict[str, Any]):
    vkey = demo["root"] / "lineage.vkey"
    assert demo["bundle"] == demo["root"] / "lineage-bundle.json"
    run = subprocess.run(
        [*VERIFY, str(demo["bundle"]), "--log-key", str(vkey)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("OK")
    run = subprocess.run(
        [*VERIFY, str(demo["bundle"]), "--log-key", str(vkey), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    result = json.loads(run.stdout)
    assert result["ok"] and result["accesses"] == 4
    assert {c["principal"] for c in result["chains"]} == {"alice@corp"}


def test_a_tampered_demo_bundle_fails_lineage_verify(demo: dict[str, Any], tmp_path: Path):
    bundle = json.loads(demo["bundle"].read_text())
    last = bundle["entries"][-1]["leaf"]["entry"]
    assert last["kind"] == "access" and last["decision"] == "deny"
    last["decision"] = "allow"  # a deny rewritten as an allow
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(bundle))
    run = subprocess.run(
        [*VERIFY, str(bad), "--log-key", str(demo["root"] / "lineage.vkey")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and "FAIL" in run.stderr


def test_a_second_demo_on_the_same_db_is_refused(demo: dict[str, Any]):
    db = demo["db"]
    before = db.read_bytes()
    with pytest.raises(StorageError):
        run_demo(db, demo["root"] / "keys", lambda line: None)
    assert db.read_bytes() == before


@pytest.mark.parametrize(
    "settings",
    [Settings(ttl_default=300), Settings(single_use_ttl_max=30)],
    ids=["ttl_default-300", "single_use_ttl_max-30"],
)
def test_the_demo_runs_under_any_valid_settings(tmp_path: Path, settings: Settings):
    lines: list[str] = []
    run_demo(tmp_path / "lineage.db", tmp_path / "keys", lines.append, settings)
    assert any("REFUSED" in line for line in lines)


def test_the_demo_ledger_answers_queries(demo: dict[str, Any]):
    log = open_ledger(demo["db"], demo["root"] / "keys")
    try:
        state = log.state()
        deepest = max(state.credentials_where(), key=lambda r: len(r.chain()))
        chain = lineage(log, deepest.id)
        assert chain[0].parent is None and chain[0].principal == "alice@corp"
        assert len(subtree(state, chain[0].id)) == 3  # the grant and its two delegations
    finally:
        log.close()


def test_lineage_demo_on_the_command_line(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("LINEAGE_KEYS", "LINEAGE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "ALLOW" in result.stdout and "REFUSED" in result.stdout
    assert "lineage serve --db lineage.db" in result.stdout
    # `lineage` (lineage.api.cli, imported above) adds the gateway step: the agent reads
    # through the gateway, its delete is denied before the mail API sees it.
    gateway = _line(result.stdout.splitlines(), "6. A gateway fronts the mail API")
    assert "fetcher" in gateway
    assert "-> 200" in result.stdout and "-> 403 DENY" in result.stdout
    assert "the mail API served 1 request" in result.stdout
    assert (tmp_path / "lineage.db").exists() and (tmp_path / "lineage-keys").is_dir()
    vkey = (tmp_path / "lineage.vkey").read_text().strip()
    verify_bundle((tmp_path / "lineage-bundle.json").read_bytes(), vkey)
    again = runner.invoke(app, ["demo"])
    assert again.exit_code == 1
    assert "already holds entries" in again.stderr
    assert "Traceback" not in again.stdout + again.stderr


# -- a story for the queries ----------------------------------------------------------------


@pytest.fixture
def story(tmp_path: Path) -> dict[str, Any]:
    w = world(tmp_path)
    bob = key("bob@corp")
    w.append(bind_principal(ORIGIN, w.log.keys.operator, "bob@corp", bob.public))
    at: dict[str, Any] = {"w": w, "bob_agent": key("bob's agent")}
    w.clock.advance(10)
    at["g1"] = w.append(w.grant())
    w.clock.advance(10)
    at["d1"] = w.append(w.delegate(at["g1"], w.agent, max_depth=1))
    w.clock.advance(10)
    task = {"id": "inbox-triage/read/one", "description": ""}
    at["d2"] = w.append(
        w.delegate(at["d1"], w.reader, w.helper, max_depth=0, task=task, expires_at=T0 + 600)
    )
    w.clock.advance(10)
    body = grant_body(
        ORIGIN,
        "bob@corp",
        at["bob_agent"].public,
        agent="payroll",
        task={"id": "payroll", "description": ""},
        scope=parent_scope(),
        expires_at=w.now + 600,
        max_depth=0,
    )
    at["g2"] = w.append(sign_entry(body, [bob]))
    w.clock.advance(10)
    at["a1"] = w.decide(w.invoke(w.helper, at["d2"].id))
    at["a2"] = w.decide(w.invoke(at["bob_agent"], at["g2"].id))
    w.clock.advance(10)
    at["r1"] = w.append(w.revoke(w.alice, credential=at["d1"].id))
    yield at
    w.close()


def _indexes(w: World, f: Filter) -> list[int]:
    return [i for i, _ in entries(w.log, f)]


def test_lineage_is_human_first(story: dict[str, Any]):
    w = story["w"]
    chain = lineage(w.log, story["d2"].id)
    assert [r.id for r in chain] == [story[k].id for k in ("g1", "d1", "d2")]
    assert chain[0].principal == "alice@corp" and chain[0].parent is None
    assert [r.holder for r in chain] == [w.agent.public, w.reader.public, w.helper.public]
    with pytest.raises(NotFound):
        lineage(w.log, "00" * 32)


def test_subtree(story: dict[str, Any]):
    state = story["w"].log.state()
    ids = lambda cid: [r.id for r in subtree(state, cid)]  # noqa: E731
    assert ids(story["g1"].id) == [story[k].id for k in ("g1", "d1", "d2")]
    assert ids(story["d1"].id) == [story["d1"].id, story["d2"].id]
    assert ids(story["g2"].id) == [story["g2"].id]
    with pytest.raises(NotFound):
        subtree(state, "00" * 32)


def test_entries_by_principal_holder_task_kind_and_time(story: dict[str, Any]):
    w, s = story["w"], story
    idx = {k: s[k].index for k in ("g1", "d1", "d2", "g2", "a1", "a2", "r1")}
    # alice's identity binding (index 1) is about her too, as are her chains
    assert _indexes(w, Filter(principal="alice@corp")) == sorted(
        [1, *(idx[k] for k in ("g1", "d1", "d2", "a1", "r1"))]
    )
    assert _indexes(w, Filter(principal="bob@corp")) == [2, idx["g2"], idx["a2"]]
    for holder in (w.reader.public.kid, w.reader.public.b64):
        assert _indexes(w, Filter(holder=holder)) == [idx["d1"], idx["r1"]]
    assert _indexes(w, Filter(task="inbox-triage/read")) == [idx["d1"], idx["r1"]]
    # "inbox-triage/" is the task and its sub-tasks: everything done for it
    assert _indexes(w, Filter(task="inbox-triage/")) == sorted(
        idx[k] for k in ("g1", "d1", "d2", "a1", "r1")
    )
    assert _indexes(w, Filter(kind="access")) == [idx["a1"], idx["a2"]]
    assert _indexes(w, Filter(kind="grant")) == [idx["g1"], idx["g2"]]
    assert _indexes(w, Filter(since=T0 + 20, until=T0 + 50)) == [idx["d1"], idx["d2"], idx["g2"]]
    assert _indexes(w, Filter(principal="alice@corp", kind="access", since=T0 + 50)) == [idx["a1"]]
    assert _indexes(w, Filter(principal="nobody@corp")) == []


# -- exports --------------------------------------------------------------------------------


def test_credential_and_principal_bundles_verify(story: dict[str, Any]):
    w, s = story["w"], story
    vb = verify_bundle(credential_bundle(w.log, s["d1"].id), w.log.log_key)
    got = {r.id for r in vb.replay.credentials.values()}
    assert got == {s["g1"].id, s["d1"].id, s["d2"].id}
    assert vb.replay.revoked == {s["d1"].id: s["r1"].index}
    alice = verify_bundle(principal_bundle(w.log, "alice@corp"), w.log.log_key)
    assert s["g2"].id not in alice.replay.credentials and s["d2"].id in alice.replay.credentials
    everyone = verify_bundle(principal_bundle(w.log, None), w.log.log_key)
    assert {s["g1"].id, s["g2"].id} <= set(everyone.replay.credentials)
    # a window holds what happened in it, and the chains that prove it (tests/test_exports.py)
    window = verify_bundle(principal_bundle(w.log, None, start=T0 + 30, end=T0 + 60), w.log.log_key)
    assert s["d2"].id in window.replay.credentials and s["g1"].id in window.replay.credentials
    # a bundle with a consistency proof from an older checkpoint
    old = w.log.latest_checkpoint()
    w.append(w.grant(task={"id": "later", "description": ""}))
    grown = credential_bundle(w.log, s["g1"].id, since=_size(old))
    verify_bundle(grown, w.log.log_key, since=old)


def _size(note: bytes) -> int:
    return int(note.decode().split("\n")[1])


def test_jsonl_rows_are_the_leaves(story: dict[str, Any]):
    w = story["w"]
    lines = "".join(rows_jsonl(w.log, Filter())).splitlines()
    assert len(lines) == w.log.size
    for line in lines:
        row = json.loads(line)
        leaf = w.log.leaf(row["index"])
        assert row["entry"] == leaf.entry.obj and canonical(row["entry"]) == leaf.entry.raw
        assert (row["id"], row["time"], row["kind"]) == (leaf.entry.id, leaf.time, leaf.entry.kind)
        assert row["leaf_hash"] == leaf.hash.hex()


def test_csv_rows_are_well_formed(story: dict[str, Any]):
    w, s = story["w"], story
    rows = list(csv.reader(io.StringIO("".join(rows_csv(w.log, Filter())))))
    assert rows[0] == ["index", "time", "kind", "id", "principal", "holder", "task", "detail"]
    assert len(rows) == w.log.size + 1 and all(len(r) == 8 for r in rows)
    by_index = {int(r[0]): r for r in rows[1:]}
    assert by_index[s["a1"].index][4:7] == [
        "alice@corp",
        w.helper.public.kid,
        "inbox-triage/read/one",
    ]
    assert by_index[s["a1"].index][7].startswith("allow")


DOT_ID = r'"(?:[^"\\\n]|\\.)*"'
DOT_LINE = re.compile(
    rf"  {DOT_ID}( -> {DOT_ID})? \[(label={DOT_ID}|shape=box)\];"
    r"|  rankdir=LR;|digraph lineage \{|\}"
)


def _well_formed_dot(text: str) -> bool:
    return all(DOT_LINE.fullmatch(line) for line in text.splitlines())


def test_dot_is_well_formed(story: dict[str, Any]):
    w, s = story["w"], story
    text = "".join(rows_dot(w.log, Filter()))
    assert _well_formed_dot(text), text
    assert f'"alice@corp" -> "{s["g1"].id[:12]}"' in text
    assert f'"{s["d1"].id[:12]}" -> "{s["d2"].id[:12]}"' in text
    assert text.count("[shape=box]") == 2  # alice and bob, once each


def test_dot_escapes_agent_labels(story: dict[str, Any]):
    w = story["w"]
    w.append(w.grant(agent='the "best" agent \\', task={"id": "quoted", "description": ""}))
    assert _well_formed_dot("".join(rows_dot(w.log, Filter())))


def test_queries_see_what_another_process_appended(story: dict[str, Any]):
    w = story["w"]
    other = reopen(w)
    try:
        g = other.append(w.grant(task={"id": "elsewhere", "description": ""}))
    finally:
        other.close()
    assert lineage(w.log, g.id)[0].id == g.id
    verify_bundle(credential_bundle(w.log, g.id), w.log.log_key)
