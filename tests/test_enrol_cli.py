"""`lineage principal invite`, `keys` and `retire`: the operator's side of enrolment.

The link the CLI prints is redeemed here the way the browser page does it (the page itself
is tested in a real browser by tests/test_browser_enrol.py)."""

from __future__ import annotations

import base64
import json
import re

import httpx
from typer.testing import CliRunner

from lineage.api.cli import app
from lineage.ledger.invites import InviteStore
from lineage.verifier.keys import SigningKey

from .api_server import running


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def redeem(base: str, token: str) -> dict:
    key = SigningKey.generate()
    message = b"lineage-enrol-v1\n" + token.encode() + b"\n" + key.public.b64.encode()
    body = {"invite": token, "public_key": key.public.b64, "proof": b64(key.sign(b"", message))}
    r = httpx.post(base + "/v1/enroll", json=body, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


def test_invite_enrol_list_and_retire_one_key(tmp_path, monkeypatch):
    monkeypatch.delenv("LINEAGE_CONFIG", raising=False)
    runner = CliRunner()
    with running(tmp_path) as srv:
        db = ["--db", str(srv.log.store.path)]
        out = runner.invoke(
            app, ["principal", "invite", "dana@corp", "--role", "ops", "--url", srv.base, *db]
        )
        assert out.exit_code == 0, out.stderr
        link = out.stdout.strip()
        assert re.fullmatch(re.escape(srv.base) + r"/enroll#invite=inv_\w{12}_[\w-]{43}", link)
        assert "one use" in out.stderr and link.split("#invite=")[1] not in out.stderr
        laptop = redeem(srv.base, link.split("#invite=")[1])
        second = runner.invoke(app, ["principal", "invite", "dana@corp", "--url", srv.base, *db])
        phone = redeem(srv.base, second.stdout.strip().split("#invite=")[1])

        keys = runner.invoke(
            app,
            [
                "principal",
                "keys",
                "dana@corp",
                "--json",
                *db,
                "--keys",
                str(tmp_path / "lineage-keys"),
            ],
        )
        listed = {k["kid"]: k for k in json.loads(keys.stdout)}
        assert set(listed) == {laptop["kid"], phone["kid"]}
        assert listed[laptop["kid"]]["roles"] == ["ops"] and listed[phone["kid"]]["roles"] == []

        gone = runner.invoke(
            app,
            ["principal", "retire", laptop["kid"], *db, "--keys", str(tmp_path / "lineage-keys")],
        )
        assert gone.exit_code == 0, gone.stderr
        state = srv.log.state()
        assert state.key(laptop["kid"]).retired is not None
        assert state.key(phone["kid"]).retired is None  # the other browser stays enrolled
        again = runner.invoke(
            app,
            ["principal", "retire", laptop["kid"], *db, "--keys", str(tmp_path / "lineage-keys")],
        )
        assert again.exit_code == 1 and "was retired" in again.stderr
        operator = srv.log.keys.operator.kid
        refused = runner.invoke(
            app, ["principal", "retire", operator, *db, "--keys", str(tmp_path / "lineage-keys")]
        )
        assert refused.exit_code == 1  # not a principal's key: key rotate is for those


def test_an_invitation_is_stored_hashed_and_refuses_a_bad_ttl(tmp_path):
    runner = CliRunner()
    with running(tmp_path) as srv:
        db = ["--db", str(srv.log.store.path)]
        out = runner.invoke(app, ["principal", "invite", "erin@corp", "--url", srv.base, *db])
        secret = out.stdout.strip().split("_")[-1]
        raw = (tmp_path / "lineage.db").read_bytes() + (tmp_path / "lineage.db-wal").read_bytes()
        assert secret.encode() not in raw
        assert [i.principal for i in InviteStore(srv.log.store).list()] == ["erin@corp"]
        bad = runner.invoke(app, ["principal", "invite", "erin@corp", "--ttl", "0", *db])
        assert bad.exit_code == 2
