"""`lineage policy set|show`: log a policy version from the command line."""

import json

from typer.testing import CliRunner

from lineage.api.cli import app
from lineage.ledger.ledger import open_ledger

runner = CliRunner()


def test_set_and_show(tmp_path):
    db, keys = str(tmp_path / "l.db"), str(tmp_path / "keys")
    assert runner.invoke(app, ["init", "--db", db, "--keys", keys]).exit_code == 0
    shown = runner.invoke(app, ["policy", "show", "--db", db, "--keys", keys])
    assert "no policy" in shown.output
    doc = {"rules": [{"id": "shallow", "match": {"type": "payments"}, "max_chain_depth": 2}]}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(doc))
    result = runner.invoke(app, ["policy", "set", f"@{path}", "--db", db, "--keys", keys])
    assert result.exit_code == 0, result.output
    assert "version 1" in result.output
    shown = runner.invoke(app, ["policy", "show", "--db", db, "--keys", keys])
    assert json.loads(shown.output) == {"version": 1, "document": doc}
    again = runner.invoke(app, ["policy", "set", json.dumps(doc), "--db", db, "--keys", keys])
    assert "version 2" in again.output


def test_a_bad_document_is_refused_and_nothing_is_logged(tmp_path):
    db, keys = str(tmp_path / "l.db"), str(tmp_path / "keys")
    runner.invoke(app, ["init", "--db", db, "--keys", keys])
    bad = json.dumps({"rules": [{"id": "r", "match": {}}]})
    result = runner.invoke(app, ["policy", "set", bad, "--db", db, "--keys", keys])
    assert result.exit_code == 1
    assert "document.rules[0]" in result.output
    log = open_ledger(db, keys)
    assert log.size == 1
    log.close()
