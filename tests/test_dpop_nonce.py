"""DPoP-Nonce (RFC 9449 §8): with nonces required, a proof without one is challenged."""

import httpx

from lineage.client.dpop import make_proof
from lineage.ledger.config import Settings
from tests.api_server import running


def test_a_required_nonce_is_challenged_then_accepted(tmp_path):
    settings = Settings(checkpoint_interval=0.2, dpop_nonce_required=True)
    with running(tmp_path, settings) as srv:
        grant = srv.grant()
        url = srv.url("/oauth/token")
        first = httpx.post(
            url,
            data=srv.exchange_form(grant),
            headers={"DPoP": make_proof(srv.agent.seed, "POST", url)},
        )
        assert first.status_code == 400
        assert first.json()["error"] == "use_dpop_nonce"
        nonce = first.headers["DPoP-Nonce"]
        assert srv.size() == 2  # genesis and alice's binding: nothing appended
        proof = make_proof(srv.agent.seed, "POST", url, nonce=nonce)
        second = httpx.post(url, data=srv.exchange_form(grant), headers={"DPoP": proof})
        assert second.status_code == 200, second.text
        assert second.json()["access_token"] == grant.id
        forged = make_proof(srv.agent.seed, "POST", url, nonce="A" * 24)
        third = httpx.post(url, data=srv.exchange_form(grant), headers={"DPoP": forged})
        assert third.status_code == 400 and third.json()["error"] == "use_dpop_nonce"


def test_without_the_setting_no_nonce_is_needed(tmp_path):
    with running(tmp_path) as srv:
        grant = srv.grant()
        assert srv.exchange(grant, srv.agent).status_code == 200


def test_a_nonce_from_one_process_is_accepted_by_another(tmp_path):
    """Regression (chain-state issue): the nonce secret was per process, so a second
    worker refused the first one's nonces. It now lives in the shared database."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.api_server import free_port, wait_until_serving

    settings = Settings(checkpoint_interval=0.2, dpop_nonce_required=True)
    with running(tmp_path, settings) as srv:
        port = free_port()
        env = {**os.environ, "LINEAGE_DPOP_NONCE_REQUIRED": "true"}
        script = Path(sys.executable).with_name("lineage")
        db, keys = tmp_path / "lineage.db", tmp_path / "lineage-keys"
        other = subprocess.Popen(
            [script, "serve", "--db", db, "--keys", keys, "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_serving(base, other)
            grant = srv.grant()
            url = srv.url("/oauth/token")
            challenge = httpx.post(
                url,
                data=srv.exchange_form(grant),
                headers={"DPoP": make_proof(srv.agent.seed, "POST", url)},
            )
            nonce = challenge.headers["DPoP-Nonce"]  # issued by this process
            there = base + "/oauth/token"
            proof = make_proof(srv.agent.seed, "POST", there, nonce=nonce)
            answer = httpx.post(there, data=srv.exchange_form(grant), headers={"DPoP": proof})
            assert answer.status_code == 200, answer.text  # accepted by the other process
            again = httpx.post(there, data=srv.exchange_form(grant), headers={"DPoP": proof})
            assert again.json()["error"] == "invalid_dpop_proof"  # the jti, remembered
        finally:
            other.terminate()
            other.wait(30)
