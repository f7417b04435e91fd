"""Rotating a key while a server runs, from another process, without reopening anything.

Regression (chain-state issue): ``lineage key rotate decision|operator`` while ``lineage
serve`` ran broke every later decision and operator-signed revocation until a restart
("no valid signature by an active key of role decision"): the running process kept
signing with the retired key. The rotation test reopened the ledger and so never saw it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from lineage.ledger.audit import audit
from tests.api_server import checkpoint_at_least, running

LINEAGE = Path(sys.executable).with_name("lineage")


def rotate(tmp_path: Path, role: str) -> None:
    db, keys = tmp_path / "lineage.db", tmp_path / "lineage-keys"
    done = subprocess.run(
        [LINEAGE, "key", "rotate", role, "--db", db, "--keys", keys],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_rotating_each_role_in_another_process_keeps_a_running_server_working(tmp_path):
    with running(tmp_path) as srv:
        grant = srv.grant(max_uses=None)
        assert srv.exchange(grant, srv.agent).status_code == 200
        before = srv.access(srv.invoke(srv.agent, grant.id))
        assert before.json()["decision"] == "allow"

        rotate(tmp_path, "decision")
        after = srv.access(srv.invoke(srv.agent, grant.id))
        assert after.status_code == 200, after.text  # signed with the new decision key
        assert after.json()["decision"] == "allow"

        rotate(tmp_path, "operator")
        other = srv.grant(max_uses=None)
        assert srv.exchange(other, srv.agent).status_code == 200
        revoked = httpx.post(
            srv.url("/oauth/revoke"),
            data={"token": other.id},
            headers=srv.bearer(srv.operator),
            timeout=10,
        )
        assert revoked.status_code == 200, revoked.text  # signed with the new operator key
        denied = srv.access(srv.invoke(srv.agent, other.id))
        assert denied.json()["decision"] == "deny"

        size = srv.size()
        assert checkpoint_at_least(srv, size).checkpoint.size >= size  # checkpoints go on
    assert audit(tmp_path / "lineage.db", srv.log.log_key).size == size
