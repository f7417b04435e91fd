"""An access entry appended directly (signed by a decision key, not written by ``decide``)
must pass what a complete-log audit checks, or ``lineage verify --db`` would fail later.

Regressions for issue "what outside testing found": the audit learned a complete mode
(FORMAT.md §8: policy in force, ``iat`` within the window of the leaf's time, nonces new);
admission at append now refuses the same entries, so the log never holds one.
"""

from __future__ import annotations

from typing import Any

import pytest

from lineage.ledger.audit import audit
from lineage.ledger.errors import RejectedEntry
from lineage.verifier.entry import Entry, sign_entry
from lineage.verifier.invocation import SignedInvocation
from tests.issuance_helpers import ORIGIN, nonce, world


def access(w, invocation: SignedInvocation, **over: Any) -> Entry:
    body = {
        "kind": "access",
        "v": 1,
        "log": ORIGIN,
        "invocation": dict(invocation.to_json()),
        "decision": "deny",
        "reason": "scope: test",
        "enforcement": "gw-1",
        "context": {},
        "policy": w.log.state().policy_version,
    }
    body.update(over)
    return sign_entry(body, [w.log.keys.decision])


@pytest.fixture
def w(tmp_path):
    w = world(tmp_path)
    yield w
    w.close()


def test_an_access_with_a_stale_iat_is_refused_at_append(w):
    grant = w.append(w.grant())
    stale = w.invoke(w.agent, grant.id, iat=w.now - 61)
    size = w.log.size
    with pytest.raises(RejectedEntry) as err:
        w.append(access(w, stale))
    assert err.value.check == "freshness"
    assert w.log.size == size
    w.append(access(w, w.invoke(w.agent, grant.id, iat=w.now - 60)))  # at the edge: accepted


def test_an_access_reusing_a_nonce_is_refused_at_append(w):
    grant = w.append(w.grant())
    first = w.invoke(w.agent, grant.id, n=nonce(424242))
    w.append(access(w, first))
    again = w.invoke(w.agent, grant.id, iat=w.now - 1, n=nonce(424242))  # not the same entry
    with pytest.raises(RejectedEntry) as err:
        w.append(access(w, again))
    assert err.value.check == "replay"


def test_a_ledger_that_admitted_accesses_passes_the_complete_audit(w):
    grant = w.append(w.grant())
    for _ in range(3):
        w.append(access(w, w.invoke(w.agent, grant.id)))
    w.log.checkpoint()
    report = audit(w.db, w.log.log_key)
    assert report.size == w.log.size
