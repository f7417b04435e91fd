"""Rotating the operator and decision keys: logged, effective at once, audit-clean."""

import pytest

from lineage.ledger.audit import audit
from lineage.ledger.decide import decide
from lineage.ledger.errors import ConfigError, RejectedEntry
from lineage.ledger.issuance import bind_principal
from lineage.ledger.keys import KeyRing
from lineage.ledger.ledger import init_ledger, open_ledger
from lineage.ledger.rotation import rotate_key
from lineage.verifier.bodies import grant_body
from lineage.verifier.entry import sign_entry
from lineage.verifier.invocation import sign_invocation
from lineage.verifier.keys import SigningKey

MAIL = "https://mail.example.com:443"


@pytest.fixture
def ledger(tmp_path):
    log = init_ledger(tmp_path / "l.db", tmp_path / "keys", origin="rot.example/log")
    yield log, tmp_path
    log.close()


def test_operator_rotation_moves_authority(ledger):
    log, tmp = ledger
    old = log.keys.operator
    rotate_key(log, tmp / "keys", "operator")
    log.close()
    log = open_ledger(tmp / "l.db", tmp / "keys")
    assert log.keys.operator.kid != old.kid
    alice = SigningKey.generate()
    with pytest.raises(RejectedEntry) as info:
        log.append(bind_principal(log.origin, old, "alice@corp", alice.public))
    assert info.value.check == "signature"
    log.append(bind_principal(log.origin, log.keys.operator, "alice@corp", alice.public))
    assert (tmp / "keys" / "operator.key.retired").exists()
    assert (tmp / "keys" / "operator.key").stat().st_mode & 0o077 == 0
    size = log.size
    log.close()
    assert audit(tmp / "l.db", KeyRing.load(tmp / "keys").log.verifier).size == size


def test_decision_rotation_keeps_deciding(ledger):
    log, tmp = ledger
    alice, agent = SigningKey.generate(), SigningKey.generate()
    log.append(bind_principal(log.origin, log.keys.operator, "alice@corp", alice.public))
    now = int(log.clock())
    scope = [{"type": "email", "actions": ["read"], "locations": [MAIL]}]
    body = grant_body(
        log.origin,
        "alice@corp",
        agent.public,
        task={"id": "t", "description": ""},
        scope=scope,
        expires_at=now + 600,
        max_depth=0,
    )
    g = log.append(sign_entry(body, [alice]))
    request = {"type": "email", "action": "read", "location": MAIL}
    assert decide(log, sign_invocation(agent, g.id, request, now), {}, "gw").allowed
    rotate_key(log, tmp / "keys", "decision")
    log.close()
    log = open_ledger(tmp / "l.db", tmp / "keys")
    decision = decide(log, sign_invocation(agent, g.id, request, int(log.clock())), {}, "gw")
    assert decision.allowed
    assert decision.entry.sigs[0].kid == log.keys.decision.kid
    log.close()
    assert audit(tmp / "l.db", log.log_key).accesses == 2


def test_the_log_key_does_not_rotate(ledger):
    log, tmp = ledger
    with pytest.raises(ConfigError):
        rotate_key(log, tmp / "keys", "log")
    assert log.size == 1
