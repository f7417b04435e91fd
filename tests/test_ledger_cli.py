"""ledger/cli.py: ``lineage init``, ``log key|checkpoint|entries|proof`` and ``verify --db``.

Run in-process through typer's CliRunner, in a temporary working directory (so
``./lineage-keys`` is never the repository's), and once as the installed script.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lineage.ledger.cli import app
from lineage.ledger.errors import RollbackError
from lineage.ledger.keys import KeyRing
from lineage.ledger.ledger import open_ledger
from lineage.verifier.checkpoint import open_checkpoint
from lineage.verifier.jcs import canonical
from lineage.verifier.merkle import leaf_hash, verify_consistency, verify_inclusion
from lineage.verifier.note import Verifier, parse_vkey
from tests.conftest import close, policy

ORIGIN = "cli.example/ledger"
DB, KEYS = "lineage.db", "keys"


class Cli:
    """Runs ``lineage`` in-process; keeps every output to check for secrets."""

    def __init__(self) -> None:
        self.runner = CliRunner()
        self.outputs: list[str] = []

    def __call__(self, *args: object, code: int = 0):
        result = self.runner.invoke(app, [str(a) for a in args])
        self.outputs += [result.stdout, result.stderr]
        assert "Traceback" not in result.stdout + result.stderr
        if result.exception is not None:
            assert isinstance(result.exception, SystemExit), repr(result.exception)
        assert result.exit_code == code, (args, result.exit_code, result.stdout, result.stderr)
        return result


@pytest.fixture
def cli(tmp_path: Path, monkeypatch) -> Cli:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LINEAGE_KEYS", raising=False)
    return Cli()


@pytest.fixture
def made(cli: Cli, tmp_path: Path) -> Verifier:
    """``lineage init``: returns the log's verifier key as printed."""
    result = cli("init", "--db", DB, "--keys", KEYS, "--origin", ORIGIN)
    lines = result.stdout.splitlines()
    assert lines[0] == f"created {DB} with log {ORIGIN}"
    assert lines[-1].startswith("verifier key: ")
    return parse_vkey(lines[-1].removeprefix("verifier key: "))


def _append(tmp_path: Path, first: int, last: int, *, checkpoint: bool = True) -> None:
    """Append policy entries first..last through the library (the CLI has no append).

    Each group commit of a log that signs publishes a checkpoint; ``checkpoint=False``
    appends as a process without the log key would, leaving the new leaves uncovered."""
    log = open_ledger(tmp_path / DB, tmp_path / KEYS)
    if not checkpoint:
        log.signer = None  # its group commits sign nothing, and closing publishes nothing
    log.append_many([policy(log, v) for v in range(first, last + 1)])
    close(log)


def _one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("lineage: ")
    return lines[0]


def _entries(cli: Cli, *args: str) -> list[dict]:
    out = cli("log", "entries", "--db", DB, "--keys", KEYS, *args).stdout
    return [json.loads(line) for line in out.splitlines()]


# -- init and log key ------------------------------------------------------------------------


def test_init_creates_the_ledger_and_owner_only_keys(cli: Cli, made: Verifier, tmp_path: Path):
    assert made.name == ORIGIN
    assert stat.S_IMODE((tmp_path / KEYS).stat().st_mode) == 0o700
    for name in ("log.key", "operator.key", "decision.key"):
        assert stat.S_IMODE((tmp_path / KEYS / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / DB).stat().st_mode) == 0o600
    assert KeyRing.load(tmp_path / KEYS).log.verifier == made


def test_init_twice_is_refused(cli: Cli, made: Verifier):
    result = cli("init", "--db", DB, "--keys", KEYS, "--origin", ORIGIN, code=1)
    assert "already holds a ledger" in _one_line(result.stderr)


def test_init_uses_the_keys_from_the_environment(cli: Cli, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LINEAGE_KEYS", str(tmp_path / "env-keys"))
    cli("init", "--db", DB)
    assert (tmp_path / "env-keys" / "log.key").exists()
    assert not (tmp_path / "lineage-keys").exists()


def test_log_key_with_and_without_the_keys(cli: Cli, made: Verifier):
    assert cli("log", "key", "--db", DB, "--keys", KEYS).stdout == made.vkey + "\n"
    # no ./lineage-keys here: read-only, with the key the database records
    assert cli("log", "key", "--db", DB).stdout == made.vkey + "\n"


# -- checkpoints, entries, proofs ---------------------------------------------------------------


def test_log_checkpoint(cli: Cli, made: Verifier, tmp_path: Path):
    note = cli("log", "checkpoint", "--db", DB, "--keys", KEYS).stdout.encode()
    assert open_checkpoint(note, made, ORIGIN).checkpoint.size == 1
    _append(tmp_path, 1, 7, checkpoint=False)
    assert cli("log", "checkpoint", "--db", DB).stdout.encode() == note  # latest, read-only
    new = cli("log", "checkpoint", "--db", DB, "--keys", KEYS, "--new").stdout.encode()
    assert open_checkpoint(new, made, ORIGIN).checkpoint.size == 8
    again = cli("log", "checkpoint", "--db", DB, "--keys", KEYS, "--new").stdout.encode()
    assert again == new  # the size did not change
    result = cli("log", "checkpoint", "--db", DB, "--new", code=1)  # no keys: cannot sign
    assert "signing key" in _one_line(result.stderr)


def test_log_entries(cli: Cli, made: Verifier, tmp_path: Path):
    _append(tmp_path, 1, 5)
    rows = _entries(cli)
    assert [r["index"] for r in rows] == list(range(6))
    assert rows[0]["entry"]["kind"] == "genesis"
    for row in rows:
        raw = canonical(row["entry"])
        assert row["id"] == hashlib.sha256(raw).hexdigest()
        leaf = canonical({"entry": row["entry"], "time": row["time"]})
        assert row["leaf_hash"] == leaf_hash(leaf).hex()
    assert [r["index"] for r in _entries(cli, "--start", "2", "--end", "4")] == [2, 3]
    assert _entries(cli, "--start", "9") == []


def test_log_proof_index_verifies(cli: Cli, made: Verifier, tmp_path: Path):
    _append(tmp_path, 1, 12)
    note = cli("log", "checkpoint", "--db", DB, "--keys", KEYS, "--new").stdout.encode()
    cp = open_checkpoint(note, made, ORIGIN).checkpoint
    _append(tmp_path, 13, 15)  # the log moves on; proofs are for the checkpoint's size
    hashes = [bytes.fromhex(r["leaf_hash"]) for r in _entries(cli)]
    for index in range(cp.size):
        args = ("--index", str(index), "--size", str(cp.size))
        out = json.loads(cli("log", "proof", "--db", DB, *args).stdout)
        assert (out["leaf_index"], out["tree_size"]) == (index, cp.size)
        proof = [base64.b64decode(h) for h in out["audit_path"]]
        verify_inclusion(index, cp.size, hashes[index], proof, cp.root_hash)
    out = json.loads(cli("log", "proof", "--db", DB, "--keys", KEYS, "--index", "14").stdout)
    assert out["tree_size"] == 16  # the current size by default


def test_log_proof_first_verifies(cli: Cli, made: Verifier, tmp_path: Path):
    notes = [cli("log", "checkpoint", "--db", DB).stdout.encode()]
    for first, last in ((1, 5), (6, 10)):
        _append(tmp_path, first, last)
        notes.append(cli("log", "checkpoint", "--db", DB, "--keys", KEYS, "--new").stdout.encode())
    cps = [open_checkpoint(n, made, ORIGIN).checkpoint for n in notes]
    assert [c.size for c in cps] == [1, 6, 11]
    for old in cps:
        for new in cps:
            if old.size > new.size:
                continue
            args = ("--first", str(old.size), "--size", str(new.size))
            out = json.loads(cli("log", "proof", "--db", DB, *args).stdout)
            assert (out["first"], out["second"]) == (old.size, new.size)
            proof = [base64.b64decode(h) for h in out["consistency"]]
            verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)


# -- verify --db ---------------------------------------------------------------------------------


def test_verify_db_ok(cli: Cli, made: Verifier, tmp_path: Path):
    _append(tmp_path, 1, 9)
    result = cli("verify", "--db", DB, "--keys", KEYS)
    assert result.stdout.startswith(f"OK  {DB}: 10 leaves, root ")
    (tmp_path / "log.vkey").write_text(made.vkey + "\n")
    for key in (made.vkey, "log.vkey"):
        report = json.loads(cli("verify", "--db", DB, "--log-key", key, "--json").stdout)
        assert report["ok"] is True and report["size"] == 10
    log = open_ledger(tmp_path / DB, tmp_path / KEYS)
    assert report["root"] == log.root().hex()
    close(log)


def test_verify_db_fails_naming_the_fault(cli: Cli, made: Verifier, tmp_path: Path):
    _append(tmp_path, 1, 9)
    conn = sqlite3.connect(tmp_path / DB, isolation_level=None)
    conn.execute("DROP TRIGGER leaves_no_update")
    conn.execute("UPDATE leaves SET time = time + 1 WHERE idx = 4")
    conn.close()
    result = cli("verify", "--db", DB, "--keys", KEYS, code=1)
    message = " ".join(result.stderr.split())  # whatever the line wrapping
    assert message.startswith("lineage: FAIL tree: stored node (0, 4)")
    result = cli("verify", "--db", DB, "--log-key", made.vkey, "--json", code=1)
    report = json.loads(result.stdout)
    assert (report["ok"], report["check"], report["index"]) == (False, "tree", 4)


def test_verify_db_with_another_key_fails(cli: Cli, made: Verifier, tmp_path: Path):
    cli("init", "--db", "other.db", "--keys", "other-keys", "--origin", ORIGIN)
    result = cli("verify", "--db", DB, "--keys", "other-keys", code=1)
    assert "FAIL" in result.stderr


# -- bad arguments ---------------------------------------------------------------------------

OWN_ERRORS = [
    (("log", "proof", "--db", DB, "--index", "1", "--first", "1"), 2, "exactly one of"),
    (("log", "proof", "--db", DB), 2, "exactly one of"),
    (("log", "proof", "--db", DB, "--index", "5"), 1, "not below tree size 1"),
    (("log", "proof", "--db", DB, "--first", "3"), 1, "first size 3"),
    (("log", "proof", "--db", DB, "--index", "0", "--size", "9"), 1, "tree size 9"),
    (("log", "key", "--db", "absent.db"), 1, "no ledger at absent.db"),
    (("log", "entries", "--db", "absent.db"), 1, "no ledger"),
    (("verify",), 2, "give a BUNDLE or --db"),
    (("verify", "b.json", "--db", DB), 2, "give a BUNDLE or --db"),
    (("verify", "b.json"), 2, "--log-key"),
    (("verify", "--db", DB), 1, "give --log-key"),
    (("verify", "--db", DB, "--log-key", "not-a-key"), 1, ""),
    (("init", "--db", "x.db", "--keys", KEYS, "--origin", "other.example/x"), 1, "holds keys"),
]


@pytest.mark.parametrize(("args", "code", "says"), OWN_ERRORS)
def test_bad_arguments_are_one_line_errors(cli: Cli, made: Verifier, args, code, says):
    result = cli(*args, code=code)
    assert says in _one_line(result.stderr)
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ("log", "proof", "--db", DB, "--index", "-1"),
        ("log", "proof", "--db", DB, "--first", "0"),
        ("log", "proof", "--db", DB, "--index", "x"),
        ("log", "entries", "--db", DB, "--start", "-1"),
        ("log", "nope"),
        ("frobnicate",),
        ("init", "--no-such-option"),
    ],
)
def test_usage_errors_exit_2_without_a_traceback(cli: Cli, made: Verifier, args):
    result = cli(*args, code=2)
    assert result.stdout == ""
    assert result.stderr.strip()


def test_a_group_readable_key_is_a_one_line_error(cli: Cli, made: Verifier, tmp_path: Path):
    os.chmod(tmp_path / KEYS / "operator.key", 0o640)
    result = cli("log", "key", "--db", DB, "--keys", KEYS, code=1)
    assert "chmod 600" in " ".join(result.stderr.split())


def test_verify_db_writes_only_its_result(cli: Cli, made: Verifier):
    """No progress bar debris on a stderr that is not a terminal."""
    assert cli("verify", "--db", DB, "--keys", KEYS).stderr == ""
    result = cli("verify", "--db", "absent.db", "--keys", KEYS, code=1)
    assert "FAIL database: absent.db does not exist" in _one_line(result.stderr)


def test_a_long_error_is_still_one_line(cli: Cli, made: Verifier):
    """Not wrapped at 80 columns."""
    long_name = "a-rather-long-directory-name-for-a-ledger/" * 3 + "lineage.db"
    result = cli("log", "key", "--db", long_name, code=1)
    _one_line(result.stderr)


@pytest.mark.parametrize("name", ["led[x].db", "a[/b].db"])
def test_brackets_in_an_error_are_printed_as_they_are(cli: Cli, made: Verifier, name: str):
    """Not read as rich markup: '[x]' is kept, '[/b]' raises nothing."""
    result = cli("log", "key", "--db", name, code=1)
    assert name in _one_line(result.stderr)


def test_a_long_bogus_log_key_is_a_one_line_error(cli: Cli, made: Verifier):
    """Longer than a file name may be: not a traceback from Path.is_file()."""
    result = cli("verify", "--db", DB, "--log-key", "k" * 300, code=1)
    _one_line(result.stderr)


# -- secrets ------------------------------------------------------------------------------------


def test_no_command_prints_a_seed(cli: Cli, made: Verifier, tmp_path: Path):
    _append(tmp_path, 1, 3)
    cli("log", "key", "--db", DB, "--keys", KEYS)
    cli("log", "checkpoint", "--db", DB, "--keys", KEYS, "--new")
    cli("log", "entries", "--db", DB, "--keys", KEYS)
    cli("log", "proof", "--db", DB, "--keys", KEYS, "--index", "2")
    cli("log", "proof", "--db", DB, "--keys", KEYS, "--first", "1")
    cli("verify", "--db", DB, "--keys", KEYS)
    cli("verify", "--db", DB, "--keys", KEYS, "--json")
    cli("init", "--db", DB, "--keys", KEYS, "--origin", ORIGIN, code=1)
    os.chmod(tmp_path / KEYS / "log.key", 0o644)
    cli("log", "key", "--db", DB, "--keys", KEYS, code=1)
    os.chmod(tmp_path / KEYS / "log.key", 0o600)
    ring = KeyRing.load(tmp_path / KEYS)
    printed = "".join(cli.outputs)
    assert made.vkey in printed
    for seed in (ring.log.seed, ring.operator.seed, ring.decision.seed):
        for spelling in (
            seed.hex(),
            base64.b64encode(seed).decode().rstrip("="),
            base64.urlsafe_b64encode(seed).decode().rstrip("="),
        ):
            assert spelling not in printed
    for name in ("log.key", "operator.key", "decision.key"):
        text = (tmp_path / KEYS / name).read_text().strip()
        # PRIVATE+KEY+<name>+<id>+<base64>, whose base64 may itself hold a '+' (a split on
        # the last '+' once gave '' and failed one run in 64); or a key file (FORMAT.md §3.1)
        secret = text.split("+", 4)[4] if name == "log.key" else text.split(":", 1)[1]
        assert len(secret) >= 43 and secret not in printed


# -- the installed script ------------------------------------------------------------------------


def _script() -> Path:
    script = Path(sys.executable).parent / "lineage"
    if not script.exists():
        found = shutil.which("lineage")
        if found is None:
            pytest.skip("the lineage script is not installed")
        script = Path(found)
    return script


def test_the_installed_script(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "LINEAGE_KEYS"}
    env["COLUMNS"] = "200"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(_script()), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    init = run("init", "--db", DB, "--keys", KEYS, "--origin", ORIGIN)
    assert init.returncode == 0, init.stderr
    ok = run("verify", "--db", DB, "--keys", KEYS)
    assert ok.returncode == 0 and ok.stdout.startswith("OK  "), ok.stderr
    bad = run("log", "proof", "--db", DB, "--keys", KEYS, "--index", "7")
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    assert bad.stderr.startswith("lineage: ") and bad.stderr.count("\n") == 1
    usage = run("log", "proof", "--index", "x")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


def test_a_restore_without_the_sidecar_appends_nothing_until_a_checkpoint_is_trusted(
    cli: Cli, made: Verifier, tmp_path: Path
):
    """Regression (the faults issue): an older copy of the database restored onto a new
    host, without its sidecar, passed for current, and serving it appended at indexes the
    log had already published, forking it. Now it reads but neither appends nor serves
    until a checkpoint from outside it is trusted, and one it is behind is refused."""
    import lineage.api.cli  # noqa: F401  (registers `lineage serve` on the CLI)

    _append(tmp_path, 1, 3)
    older = cli("log", "checkpoint", "--db", DB).stdout.encode()  # size 4
    host = tmp_path / "new-host"
    host.mkdir()
    shutil.copytree(tmp_path / KEYS, host / KEYS)
    source, copy = sqlite3.connect(tmp_path / DB), sqlite3.connect(host / DB)
    source.backup(copy)  # the backup taken at size 4, restored on the new host
    source.close()
    copy.close()
    _append(tmp_path, 4, 6)
    newest = cli("log", "checkpoint", "--db", DB).stdout.encode()  # size 7: published
    db, keys = host / DB, host / KEYS

    assert cli("log", "checkpoint", "--db", db).stdout.encode() == older  # reads work
    log = open_ledger(db, keys)
    try:
        with pytest.raises(RollbackError, match="lineage log trust"):
            log.append(policy(log, 9))
        assert log.size == 4
    finally:
        log.close()
    refused = cli("serve", "--db", db, "--keys", keys, code=1)
    assert "may be an older copy" in refused.stderr
    (tmp_path / "newest.txt").write_bytes(newest)
    (tmp_path / "older.txt").write_bytes(older)
    behind = cli("log", "trust", tmp_path / "newest.txt", "--db", db, "--keys", keys, code=1)
    assert "rolled back" in behind.stderr  # the copy is behind what the log published
    cli("log", "trust", tmp_path / "older.txt", "--db", db, "--keys", keys)  # the operator's call
    log = open_ledger(db, keys)
    try:
        assert log.append(policy(log, 4)).index == 4
    finally:
        log.close()
