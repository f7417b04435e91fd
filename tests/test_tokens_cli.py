"""api/cli.py and ledger/tokens.py: ``lineage token list|revoke``, and unique names.

A revocation holds for a running server from its next request, whoever revoked it:
the CLI in-process (typer's CliRunner, with its own connections to the file) or the
installed script in another process. Names are unique among active tokens, checked
in the insert's own write transaction, so processes racing for one name cannot both
get it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

import lineage.api.cli  # noqa: F401  (registers `lineage token` on the CLI)
from lineage.ledger.cli import app
from lineage.ledger.errors import NotFound
from lineage.ledger.ledger import init_ledger
from lineage.ledger.store import SQLiteStore
from lineage.ledger.tokens import NameInUse, TokenStore
from tests.api_server import Server, running

ISO = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z"


def cli(*args: object, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    out = result.stdout + result.stderr
    assert "Traceback" not in out
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, (args, result.exit_code, out)
    return result


def token_id(secret: str) -> str:
    return secret.split("_")[1]


def rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT id, name, revoked FROM api_tokens ORDER BY id").fetchall()
    finally:
        conn.close()


def script() -> Path:
    found = Path(sys.executable).parent / "lineage"
    if found.exists():
        return found
    which = shutil.which("lineage")
    if which is None:
        pytest.skip("the lineage script is not installed")
    return Path(which)


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
    return subprocess.run(
        [str(script()), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch) -> Path:
    """A fresh ledger (keys beside it); the working directory is tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LINEAGE_KEYS", raising=False)
    init_ledger(tmp_path / "lineage.db", tmp_path / "keys", origin="tokens.example/log").close()
    return tmp_path / "lineage.db"


def create(db: Path, role: str, name: str, code: int = 0):
    return cli(
        "token", "create", "--role", role, "--name", name, "--db", db, "--keys", "keys", code=code
    )


def auditor_reads(srv: Server, secret: str) -> int:
    r = httpx.get(srv.url("/v1/entries"), headers=srv.bearer(secret), timeout=10)
    return r.status_code


# -- list ----------------------------------------------------------------------------------------


def test_list_shows_each_token_and_never_a_secret_or_hash(ledger: Path):
    secrets = [create(ledger, role, f"{role}-1").stdout.strip() for role in ("operator", "auditor")]
    cli("token", "revoke", token_id(secrets[0]), "--db", ledger)

    text = cli("token", "list", "--db", ledger).stdout
    lines = text.splitlines()
    assert len(lines) == 2
    by_id = {line.split()[0]: line for line in lines}
    op, aud = by_id[token_id(secrets[0])], by_id[token_id(secrets[1])]
    assert re.fullmatch(rf"\w{{12}}  operator +operator-1 +created {ISO}  revoked {ISO}", op)
    assert re.fullmatch(rf"\w{{12}}  auditor +auditor-1 +created {ISO}", aud)

    listed = json.loads(cli("token", "list", "--db", ledger, "--json").stdout)
    assert {t["id"] for t in listed} == {token_id(s) for s in secrets}
    assert set(listed[0]) == {"id", "role", "name", "created", "revoked"}
    for t in listed:
        assert re.fullmatch(ISO, t["created"])
        assert (t["revoked"] is None) == (t["id"] == token_id(secrets[1]))

    conn = sqlite3.connect(ledger)
    hashes = [h for (h,) in conn.execute("SELECT hash FROM api_tokens")]
    conn.close()
    for out in (text, json.dumps(listed)):
        for secret in secrets:
            assert secret.split("_", 2)[2] not in out
        for h in hashes:
            assert h.hex() not in out and h.hex().upper() not in out


def test_list_of_no_tokens_and_of_no_ledger(ledger: Path, tmp_path: Path):
    assert cli("token", "list", "--db", ledger).stdout == ""
    assert json.loads(cli("token", "list", "--db", ledger, "--json").stdout) == []
    missing = cli("token", "list", "--db", tmp_path / "nope.db", code=1)
    assert "no ledger" in missing.stderr
    assert not (tmp_path / "nope.db").exists()


# -- revoke --------------------------------------------------------------------------------------


def test_revoke_unknown_is_an_error_and_twice_is_idempotent(ledger: Path):
    secret = create(ledger, "auditor", "audit-team").stdout.strip()
    before = rows(ledger)
    unknown = cli("token", "revoke", "AAAAAAAAAAAA", "--db", ledger, code=1)
    assert "no token AAAAAAAAAAAA" in unknown.stderr
    assert rows(ledger) == before

    first = cli("token", "revoke", token_id(secret), "--db", ledger)
    assert first.stdout.strip() == f"revoked auditor token {token_id(secret)} (audit-team)"
    (revoked,) = [r[2] for r in rows(ledger)]
    assert revoked is not None
    again = cli("token", "revoke", token_id(secret), "--db", ledger)
    assert "already revoked" in again.stdout and "nothing changed" in again.stdout
    assert [r[2] for r in rows(ledger)] == [revoked]  # the first revocation time is kept


def test_revoke_ends_a_token_for_a_live_server(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with running(tmp_path) as srv:
        db = tmp_path / "lineage.db"
        assert auditor_reads(srv, srv.auditor) == 200
        assert auditor_reads(srv, srv.operator) == 200
        cli("token", "revoke", token_id(srv.auditor), "--db", db)
        r = httpx.get(srv.url("/v1/entries"), headers=srv.bearer(srv.auditor), timeout=10)
        assert r.status_code == 401 and r.json()["error"] == "invalid_token"
        assert auditor_reads(srv, srv.operator) == 200  # only that token
        listed = {
            t["name"]: t for t in json.loads(cli("token", "list", "--db", db, "--json").stdout)
        }
        assert listed["auditor-1"]["revoked"] is not None
        assert listed["operator-1"]["revoked"] is None


def test_revoke_from_another_process_holds_at_the_next_request(tmp_path: Path):
    with running(tmp_path) as srv:
        with httpx.Client(headers=srv.bearer(srv.enforcement), timeout=10) as gateway:
            # a kept-alive connection: the server's own pooled connections read the revocation
            r = gateway.post(srv.url("/oauth/introspect"), data={"token": "0" * 64})
            assert r.status_code == 200, r.text
            done = run_script(
                "token", "revoke", token_id(srv.enforcement), "--db", "lineage.db", cwd=tmp_path
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith("revoked enforcement token ")
            r = gateway.post(srv.url("/oauth/introspect"), data={"token": "0" * 64})
            assert r.status_code == 401, r.text
        again = run_script(
            "token", "revoke", token_id(srv.enforcement), "--db", "lineage.db", cwd=tmp_path
        )
        assert again.returncode == 0 and "already revoked" in again.stdout
        unknown = run_script("token", "revoke", "nosuchtoken1", "--db", "lineage.db", cwd=tmp_path)
        assert unknown.returncode == 1
        assert unknown.stderr.startswith("lineage: no token nosuchtoken1")
        assert "Traceback" not in unknown.stderr


# -- unique names --------------------------------------------------------------------------------


def test_a_name_an_active_token_has_is_refused(ledger: Path):
    first = create(ledger, "enforcement", "gateway-1").stdout.strip()
    before = rows(ledger)
    for role in ("enforcement", "operator"):  # any role: the name is what the policy knows
        refused = create(ledger, role, "gateway-1", code=1)
        assert refused.stdout == ""  # no secret printed
        assert "already named gateway-1" in refused.stderr
        assert token_id(first) in refused.stderr
    assert rows(ledger) == before  # nothing written

    cli("token", "revoke", token_id(first), "--db", ledger)
    second = create(ledger, "enforcement", "gateway-1").stdout.strip()  # free once revoked
    assert token_id(second) != token_id(first)
    assert create(ledger, "enforcement", "gateway-2").exit_code == 0


def test_the_library_refuses_a_taken_name_and_an_unknown_revoke(ledger: Path):
    store = SQLiteStore(ledger)
    try:
        tokens = TokenStore(store)
        tokens.create("auditor", "a")
        with pytest.raises(NameInUse):
            tokens.create("operator", "a")
        with pytest.raises(NotFound):
            tokens.revoke("AAAAAAAAAAAA")
        assert [t.name for t in tokens.list()] == ["a"]
    finally:
        store.close()


def _race(db: str, name: str, start, results) -> None:
    """One process: open the store, wait for the others, create ``name``."""
    store = SQLiteStore(db)
    try:
        start.wait(30)
        try:
            TokenStore(store).create("enforcement", name)
            results.put("created")
        except NameInUse:
            results.put("refused")
        except Exception as exc:  # reported, so that the test shows it
            results.put(repr(exc))
    finally:
        store.close()


def test_concurrent_creates_of_one_name_leave_exactly_one(ledger: Path):
    n = 6
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(ledger), "gw", start, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=60) for _ in range(n))
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert outcomes == ["created"] + ["refused"] * (n - 1)
    assert [r[1] for r in rows(ledger)] == ["gw"]


def test_concurrent_creates_in_threads_of_one_process(ledger: Path):
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    n = 8
    stores = [SQLiteStore(ledger) for _ in range(n)]  # separate connections, like processes
    start = Barrier(n)

    def one(store: SQLiteStore) -> str:
        start.wait(30)
        try:
            TokenStore(store).create("auditor", "audit")
            return "created"
        except NameInUse:
            return "refused"

    try:
        with ThreadPoolExecutor(n) as pool:
            outcomes = sorted(pool.map(one, stores))
    finally:
        for s in stores:
            s.close()
    assert outcomes == ["created"] + ["refused"] * (n - 1)
    assert [r[1] for r in rows(ledger)] == ["audit"]
