"""SIGKILL: a real ``lineage serve`` killed under load and restarted on the same database.

The harness is bench/kill_bench.py (loaded here by path: bench/ is not a package); this
is its short run for CI, a few kills. What it records and checks is described there:
every acknowledged entry at its acknowledged index, nothing in the log that its callers
were all told failed, every checkpoint served consistent with the next and with the final
log, and ``lineage verify --db`` passing on the file.

The first test shows the checks fail when they should, on a made-up log and made-up
answers, without a server. A run's seed is in its summary (and in the failure message);
``LINEAGE_KILL_SEED=N`` replays its choices (the kill moments and the clients' random
operations; thread timing still differs).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lineage.verifier.bodies import grant_body
from lineage.verifier.entry import Entry, Leaf, sign_entry
from lineage.verifier.invocation import sign_invocation
from lineage.verifier.keys import SigningKey
from tests.bench_modules import load_bench

ROOT = Path(__file__).resolve().parent.parent
NONCE, OTHER_NONCE = "A" * 22, "AQEBAQEBAQEBAQEBAQEBAQ"  # base64url of 16 bytes


kb = load_bench("kill_bench")


# -- the checks, on a made-up log: they can fail ----------------------------------------------


def _rows(entries: list[Entry]) -> list[dict]:
    return [
        {
            "index": i,
            "leaf_hash": Leaf(e, 1_800_000_000 + i).hash.hex(),
            "time": 1_800_000_000 + i,
            "id": e.id,
            "entry": e.obj,
        }
        for i, e in enumerate(entries)
    ]


def _access(credential: str, holder: SigningKey, nonce: str, decision: str) -> Entry:
    inv = sign_invocation(holder, credential, kb.READ, 1_800_000_000, nonce=nonce)
    body = {
        "kind": "access",
        "v": 1,
        "log": kb.ORIGIN,
        "invocation": dict(inv.to_json()),
        "context": {},
        "enforcement": "gw-1",
        "decision": decision,
        "reason": "made up",
        "policy": 0,
    }
    return sign_entry(body, [SigningKey.generate()])


def _attempts(*specs: tuple) -> list:
    return [
        kb.Attempt(op=op, kind=kind, key=key, outcome=outcome, order=n, generation=1, **extra)
        for n, (op, kind, key, outcome, extra) in enumerate(specs)
    ]


def test_the_checks_catch_what_they_are_for():
    holder = SigningKey.generate()

    def granted(task: str, **limits) -> Entry:
        body = grant_body(
            kb.ORIGIN,
            kb.PRINCIPAL,
            holder.public,
            task={"id": task, "description": ""},
            scope=kb.SCOPE,
            expires_at=1_900_000_000,
            **limits,
        )
        return sign_entry(body, [SigningKey.generate()])

    grant = granted("t", max_depth=1, max_uses=1)
    nonce = NONCE
    first = _access(grant.id, holder, nonce, "allow")
    again = _access(grant.id, holder, nonce, "deny")  # the same invocation, logged twice
    other = _access(grant.id, holder, OTHER_NONCE, "allow")  # a second use of max_uses 1
    never = granted("u", max_depth=0)
    final = kb.FinalLog.from_rows(_rows([grant, first, again, other]))
    assert final.accesses[f"{grant.id}:{nonce}"] == [1, 2]

    clean = kb.Findings()
    kb.check_answers(
        _attempts(
            ("grant", "entry", grant.id, "unknown", {}),
            ("grant", "entry", grant.id, "ack", {"id": grant.id, "index": 0, "status": 200}),
            ("grant", "entry", never.id, "refused", {"status": 400}),  # refused, absent: fine
            ("access", "access", f"{grant.id}:{OTHER_NONCE}", "unknown", {}),
        ),
        kb.FinalLog.from_rows(_rows([grant, other])),
        clean,
    )
    assert clean.problems() == []

    found = kb.Findings()
    kb.check_answers(
        _attempts(
            ("grant", "entry", grant.id, "ack", {"id": grant.id, "index": 1, "status": 201}),
            ("grant", "entry", never.id, "ack", {"id": never.id, "index": 9, "status": 201}),
            ("grant", "entry", grant.id, "refused", {"status": 400}),
            ("access", "access", f"{grant.id}:{OTHER_NONCE}", "refused", {"status": 401}),
            ("widening", "entry", "f" * 64, "ack", {"id": "f" * 64, "index": 3}),
            ("token", "entry", "e" * 64, "error", {"status": 500}),
        ),
        final,
        found,
    )
    assert len(found.lost) == 3, found.lost  # wrong index, beyond the log, the widening's
    assert found.refused_after_ack and found.refused_after_ack[0].startswith("grant")
    assert len(found.present_but_refused) == 1  # the access: its grant was acknowledged
    assert found.duplicate_decisions == [f"invocation {grant.id}:{nonce} logged at [1, 2]"]
    assert found.accepted_forbidden == [f"widening {'f' * 16} at index 3"]
    assert len(found.server_errors) == 1
    assert found.over_budget == [f"{grant.id}: 2 uses allowed of 1"]

    def served(size: int, generation: int, root: bytes | None = None) -> object:
        return kb.Served(size, root or final.tree.root(size), b"", generation, 0)

    def proof(first: int, second: int) -> list[bytes]:
        return final.tree.consistency_proof(first, second)

    ok = kb.Findings()
    n = kb.check_checkpoints([served(1, 1), served(3, 2)], final, served(4, 2), proof, ok)
    assert (n, ok.problems()) == (3, [])
    bad = kb.Findings()
    kb.check_checkpoints(
        [served(3, 1), served(2, 2), served(3, 2, b"\x00" * 32)], final, served(4, 2), proof, bad
    )
    assert any("went back from 3" in p for p in bad.checkpoints), bad.checkpoints
    assert any("not the root" in p for p in bad.checkpoints), bad.checkpoints
    liar = kb.Findings()
    kb.check_checkpoints([served(2, 1)], final, served(4, 1), lambda a, b: [b"\x01" * 32], liar)
    assert liar.checkpoints and all("consistency proof" in p for p in liar.checkpoints)
    beyond = kb.Findings()
    kb.check_checkpoints(
        [served(3, 1)], final, kb.Served(5, b"\x02" * 32, b"", 1, 0), proof, beyond
    )
    assert any("final log has 4 leaves" in p for p in beyond.checkpoints), beyond.checkpoints


# -- the real thing ------------------------------------------------------------------------


@pytest.mark.slow
def test_acknowledged_entries_survive_sigkill(tmp_path):
    seed = int(os.environ["LINEAGE_KILL_SEED"]) if "LINEAGE_KILL_SEED" in os.environ else None
    harness = kb.Harness(
        tmp_path,
        clients=3,
        seed=seed,
        uptime=(0.3, 1.2),
        startup_kill_rate=0.25,
        settle=1.0,
    )
    with harness:
        report = harness.run(kills=4)
    assert not harness.server.alive()
    summary = report.summary()
    assert report.problems() == [], summary
    assert report.kills == 4, summary
    # the load was real: grants, delegations and decisions were acknowledged, and the
    # refusals the clients provoke were answered
    assert report.acked_entries >= 20 and report.acked_decisions >= 20, summary
    for op in ("grant", "delegation", "access"):
        assert report.answers[(op, "ack")] > 0, summary
    assert sum(report.answers[(op, "refused")] for op in kb.MUST_REFUSE) > 0, summary
    assert report.checkpoints_checked >= 5, summary
    assert report.audit["ok"] and report.audit["size"] == report.final_size > 2, summary
