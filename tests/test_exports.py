"""Evidence exports that an auditor can check: growth since an old checkpoint, and windows.

``lineage export --since-checkpoint OLD`` (and ``GET /v1/export?from_size=N``) put
the consistency proof in the bundle that ``lineage-verify --since OLD`` needs;
``lineage export --since T`` holds every entry of the window and the chains that
prove them, even when a chain's grant is older than T (ledger/export.py,
docs/LEDGER.md "Exports").
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from lineage.ledger.cli import app
from lineage.ledger.export import older_checkpoint_size, principal_bundle
from lineage.ledger.issuance import bind_principal
from lineage.verifier.bodies import grant_body
from lineage.verifier.bundle import verify_bundle
from lineage.verifier.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from lineage.verifier.entry import sign_entry
from lineage.verifier.errors import ProofError, SignatureError
from lineage.verifier.note import Signer
from tests.api_server import running
from tests.issuance_helpers import ORIGIN, T0, World, key, parent_scope, world

VERIFY = [sys.executable, "-m", "lineage.verifier.cli"]  # lineage-verify


def lineage(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exit_code == code, (args, result.stdout, result.stderr)
    return result


def lineage_verify(tmp_path: Path, bundle: str | dict, log_key: str, *extra: str):
    path = tmp_path / "evidence.json"
    path.write_text(bundle if isinstance(bundle, str) else json.dumps(bundle))
    return subprocess.run(
        [*VERIFY, str(path), "--log-key", log_key, *extra], capture_output=True, text=True
    )


def grow(w: World) -> dict[str, Any]:
    """A grant, a delegation, an access and a revocation, ten seconds apart."""
    at: dict[str, Any] = {}
    w.clock.advance(10)
    at["g"] = w.append(w.grant())
    w.clock.advance(10)
    at["d"] = w.append(w.delegate(at["g"], w.agent))
    w.clock.advance(10)
    at["a"] = w.decide(w.invoke(w.reader, at["d"].id))
    w.clock.advance(10)
    at["r"] = w.append(w.revoke(w.alice, credential=at["d"].id))
    return at


@pytest.fixture
def w(tmp_path: Path):
    w = world(tmp_path)
    yield w
    w.close()


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- consistency with an older checkpoint --------------------------------------------------------


def test_an_export_since_an_old_checkpoint_proves_the_log_only_grew(w: World, tmp_path: Path):
    old = tmp_path / "old-checkpoint.txt"
    old.write_bytes(w.log.checkpoint())  # what an auditor saved last month
    old_size = open_checkpoint(old.read_bytes(), w.log.log_key).checkpoint.size
    at = grow(w)
    w.close()
    base = ["--db", w.db, "--keys", w.keys]

    out = lineage("export", "--principal", "alice@corp", "--since-checkpoint", old, *base).stdout
    doc = json.loads(out)
    assert doc["consistency"]["from_size"] == old_size
    done = lineage_verify(tmp_path, out, w.log.log_key.vkey, "--since", str(old))
    assert done.returncode == 0, done.stderr
    assert f"the log grew from size {old_size} by appends only" in done.stdout

    # one credential's evidence takes the option too
    out = lineage("export", "--credential", at["d"].id, "--since-checkpoint", old, *base).stdout
    done = lineage_verify(tmp_path, out, w.log.log_key.vkey, "--since", str(old))
    assert done.returncode == 0, done.stderr

    # without it, the README's `lineage-verify --since` cannot pass on a grown log
    plain = lineage("export", "--principal", "alice@corp", *base).stdout
    assert "consistency" not in json.loads(plain)
    done = lineage_verify(tmp_path, plain, w.log.log_key.vkey, "--since", str(old))
    assert done.returncode == 1 and "no consistency proof" in done.stderr


def test_an_export_since_the_current_checkpoint_needs_no_proof(w: World, tmp_path: Path):
    grow(w)
    now = tmp_path / "now.txt"
    now.write_bytes(w.log.checkpoint())
    w.close()
    out = lineage("export", "--since-checkpoint", now, "--db", w.db, "--keys", w.keys).stdout
    assert "consistency" not in json.loads(out)
    done = lineage_verify(tmp_path, out, w.log.log_key.vkey, "--since", str(now))
    assert done.returncode == 0, done.stderr


def _forged_by_another_key(w: World) -> bytes:
    size = w.log.size
    return sign_checkpoint(Checkpoint(ORIGIN, size, w.log.root(size)), Signer.generate(ORIGIN))


def _forked_by_the_log_key(w: World, size: int) -> bytes:
    """A checkpoint the log key signed for another history of the same size."""
    return sign_checkpoint(Checkpoint(ORIGIN, size, bytes(32)), w.log.keys.log)


def test_a_forged_old_checkpoint_is_refused_by_export_and_by_lineage_verify(
    w: World, tmp_path: Path
):
    genuine = tmp_path / "genuine.txt"
    genuine.write_bytes(w.log.checkpoint())
    forged = tmp_path / "forged.txt"
    forged.write_bytes(_forged_by_another_key(w))
    forked = tmp_path / "forked.txt"
    forked.write_bytes(_forked_by_the_log_key(w, w.log.size))
    size = w.log.size
    grow(w)
    vkey = w.log.log_key.vkey
    with pytest.raises(SignatureError, match="not this log's"):
        older_checkpoint_size(w.log, forged.read_bytes())
    with pytest.raises(ProofError, match="fork"):
        older_checkpoint_size(w.log, forked.read_bytes())
    # an honest bundle proving growth from the genuine size, checked against the forgeries
    evidence = principal_bundle(w.log, "alice@corp", since=size)
    w.close()
    assert lineage_verify(tmp_path, evidence, vkey, "--since", str(genuine)).returncode == 0
    for bad, check in ((forged, "signature"), (forked, "proof")):
        done = lineage_verify(tmp_path, evidence, vkey, "--since", str(bad), "--json")
        assert done.returncode == 1, done.stdout
        assert json.loads(done.stdout)["check"] == check

    base = ["--db", w.db, "--keys", w.keys]
    for bad, says in ((forged, "not this log's"), (forked, "fork")):
        result = lineage("export", "--since-checkpoint", bad, *base, code=1)
        assert result.stdout == ""  # no bundle, half or whole
        assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_an_old_checkpoint_that_is_not_one_is_a_clear_error(w: World, tmp_path: Path):
    ahead = tmp_path / "ahead.txt"  # signed by the log key for more leaves than it has
    ahead.write_bytes(sign_checkpoint(Checkpoint(ORIGIN, 10**6, bytes(32)), w.log.keys.log))
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("not a checkpoint\n")
    w.close()
    base = ["--db", w.db, "--keys", w.keys]
    assert "1000000 leaves" in lineage("export", "--since-checkpoint", ahead, *base, code=1).stderr
    assert (
        "older checkpoint" in lineage("export", "--since-checkpoint", garbage, *base, code=1).stderr
    )
    missing = lineage("export", "--since-checkpoint", tmp_path / "nope", *base, code=2)
    assert "--since-checkpoint" in missing.stderr
    rows = lineage("export", "--format", "csv", "--since-checkpoint", ahead, *base, code=2)
    assert "--format bundle" in rows.stderr


def test_the_api_export_takes_from_size(tmp_path: Path):
    with running(tmp_path) as srv:
        old = srv.log.checkpoint()
        old_size = open_checkpoint(old, srv.log.log_key).checkpoint.size
        srv.log.append(srv.grant())
        headers = srv.bearer(srv.auditor)
        r = httpx.get(srv.url(f"/v1/export?from_size={old_size}"), headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["consistency"]["from_size"] == old_size
        (tmp_path / "old.txt").write_bytes(old)
        done = lineage_verify(
            tmp_path, r.text, srv.log.log_key.vkey, "--since", str(tmp_path / "old.txt")
        )
        assert done.returncode == 0, done.stderr
        for bad in (f"from_size={srv.log.size + 5}", "from_size=-1", "from_size=1&format=csv"):
            r = httpx.get(srv.url(f"/v1/export?{bad}"), headers=headers, timeout=30)
            assert r.status_code == 400, (bad, r.text)


# -- time windows ----------------------------------------------------------------------------------


def test_a_window_holds_in_window_entries_whose_grant_is_older(w: World, tmp_path: Path):
    w.clock.advance(10)
    g = w.append(w.grant())  # before the window
    w.clock.advance(100)
    start = w.now  # the window opens
    d = w.append(w.delegate(g, w.agent))
    w.clock.advance(10)
    a = w.decide(w.invoke(w.reader, d.id))
    w.clock.advance(10)
    r = w.append(w.revoke(w.alice, credential=d.id))
    w.clock.advance(10)
    own = w.append(w.revoke(w.agent, holder=w.agent.public))  # the agent drops its own key
    w.clock.advance(100)
    end = w.now  # the window closes
    later = w.decide(w.invoke(w.agent, g.id))  # after it: not in the bundle
    assert a.allowed and not later.allowed

    doc = principal_bundle(w.log, "alice@corp", start, end)
    got = {e["index"] for e in doc["entries"]}
    binding = 1  # alice's key entry (world binds her first)
    assert {0, binding, g.index, d.index, a.index, r.index, own.index} == got
    proved = verify_bundle(doc, w.log.log_key)
    assert set(proved.replay.credentials) == {g.id, d.id}
    assert [i for i, _ in proved.replay.accesses] == [a.index]
    assert proved.replay.revoked == {d.id: r.index}

    # the same with no principal, and from the command line, checked by lineage-verify
    everyone = principal_bundle(w.log, None, start, end)
    assert {e["index"] for e in everyone["entries"]} == got
    w.close()
    out = lineage(
        "export",
        *("--principal", "alice@corp", "--since", _iso(start), "--until", _iso(end)),
        *("--db", w.db, "--keys", w.keys),
    ).stdout
    assert {e["index"] for e in json.loads(out)["entries"]} == got
    done = lineage_verify(tmp_path, out, w.log.log_key.vkey)
    assert done.returncode == 0, done.stderr


def test_a_window_leaves_out_another_principals_entries(w: World):
    bob = key("bob@corp")
    w.append(bind_principal(ORIGIN, w.log.keys.operator, "bob@corp", bob.public))
    at = grow(w)
    body = grant_body(
        ORIGIN,
        "bob@corp",
        key("bob's agent").public,
        task={"id": "payroll", "description": ""},
        scope=parent_scope(),
        expires_at=w.now + 600,
        max_depth=0,
    )
    bobs = w.append(sign_entry(body, [bob]))
    doc = principal_bundle(w.log, "alice@corp", T0 + 15)
    proved = verify_bundle(doc, w.log.log_key)
    assert bobs.id not in proved.replay.credentials
    assert {at["g"].id, at["d"].id} == set(proved.replay.credentials)
