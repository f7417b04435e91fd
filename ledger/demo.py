"""``lineage demo``: the whole story on a real ledger, told step by step.

A human grants an agent a task; the agent delegates to two sub-agents; one
access is allowed; a widening is refused with the field named; a single-use
credential is used twice and refused the second time; an ancestor is revoked
and an access under it is denied; an auditor exports a bundle and verifies it
offline with nothing but the log's verifier key.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from lineage.verifier.bodies import delegation_body, grant_body, revocation_body
from lineage.verifier.bundle import verify_bundle
from lineage.verifier.entry import sign_entry
from lineage.verifier.invocation import sign_invocation
from lineage.verifier.keys import SigningKey, key_file_text

from .config import Settings
from .decide import decide
from .errors import RejectedEntry, StorageError
from .export import credential_bundle
from .issuance import bind_principal
from .keys import keys_dir, principal_key_file, write_secret
from .ledger import init_ledger, open_ledger
from .store import SQLiteStore

__all__ = ["run_demo"]

MAIL = "https://mail.example.com:443"


def run_demo(
    db: Path,
    keys: Path | None,
    say: Callable[[str], None],
    settings: Settings | None = None,
    *,
    extra: Sequence[Callable[..., None]] = (),
) -> Path:
    """Tell the story on ``db`` (created if absent; refused if it holds entries).

    ``extra`` are steps told after the first access, each called as ``step(log, settings,
    grant_id, triage_key, say, number)`` with the next step's number: ``lineage demo`` adds
    the gateway this way (``lineage.api.gateway.demo``), a layer the ledger never imports.
    """
    settings = settings or Settings()
    numbers = itertools.count(1)

    def step() -> int:
        return next(numbers)

    if db.exists() and SQLiteStore(db).size() > 0:
        raise StorageError(
            f"{db} already holds entries and the demo tells its story on a fresh ledger:"
            f" `make demo` starts over by itself, or pass another --db and --keys"
        )
    log = init_ledger(db, keys, settings=settings)
    log.close()
    log = open_ledger(db, keys, settings=settings)
    now = int(log.clock())
    say(f"{step()}. A ledger: {db}, log {log.origin}")
    say(f"   its verifier key, all an auditor needs: {log.log_key.vkey}")

    alice = SigningKey.generate()  # a demo: in real use alice makes it (`lineage keygen`)
    write_secret(principal_key_file(keys_dir(keys), "alice@corp"), key_file_text(alice))
    log.append(
        bind_principal(log.origin, log.keys.operator, "alice@corp", alice.public, ["finance"])
    )
    say(
        f"{step()}. The operator binds alice@corp to her key "
        "(a public `key` entry, like a CT cert)."
    )
    say("   (a demo: her key is made here; in real use she makes it, `lineage keygen`.)")

    triage, reader, drafter = (SigningKey.generate() for _ in range(3))
    single_use = min(60, settings.single_use_ttl_max)
    scope = [
        {
            "type": "email",
            "actions": ["read", "send"],
            "locations": [MAIL],
            "resources": ["mailbox:alice/*"],
        }
    ]
    grant = sign_entry(
        grant_body(
            log.origin,
            "alice@corp",
            triage.public,
            agent="triage",
            task={"id": "inbox-triage", "description": "Triage alice's inbox"},
            scope=scope,
            expires_at=now + settings.ttl_default,
            max_depth=2,
            max_children=3,
        ),
        [alice],
    )
    g = log.append(grant)
    say(
        f"{step()}. alice signs a grant to agent 'triage' for task inbox-triage, "
        f"{settings.ttl_default // 60} minutes: "
        f"credential {g.id[:16]}… at index {g.index}"
    )

    reader_cred = sign_entry(
        delegation_body(
            log.origin,
            g.id,
            reader.public,
            agent="reader",
            task={"id": "inbox-triage/invoices", "description": "Read invoices"},
            scope=[
                {
                    "type": "email",
                    "actions": ["read"],
                    "locations": [MAIL],
                    "resources": ["mailbox:alice/inbox/*"],
                    "constraints": {"sender": {"in": ["billing@vendor.example"]}},
                }
            ],
            expires_at=now + min(600, settings.ttl_default),
            max_depth=0,
            max_children=0,
        ),
        [triage],
    )
    r = log.append(reader_cred)
    drafter_cred = sign_entry(
        delegation_body(
            log.origin,
            g.id,
            drafter.public,
            agent="drafter",
            task={"id": "inbox-triage/reply", "description": "Send one reply"},
            scope=[
                {
                    "type": "email",
                    "actions": ["send"],
                    "locations": [MAIL],
                    "resources": ["mailbox:alice/outbox/*"],
                }
            ],
            expires_at=now + single_use,
            max_uses=1,
            max_depth=0,
            max_children=0,
        ),
        [triage],
    )
    d = log.append(drafter_cred)
    say(
        f"{step()}. triage delegates, signing with its own key: 'reader' may only read invoices "
        f"({r.id[:16]}…), 'drafter' may send one reply within {single_use} s ({d.id[:16]}…)"
    )

    def access(holder: SigningKey, cred: str, action: str, resource: str, sender: str) -> str:
        inv = sign_invocation(
            holder,
            cred,
            {"type": "email", "action": action, "location": MAIL, "resource": resource},
            int(log.clock()),
        )
        decision = decide(
            log,
            inv,
            {"attributes": {"sender": sender}},
            "demo-gateway",
            window=settings.invocation_window,
        )
        verdict = "ALLOW" if decision.allowed else "DENY"
        return f"{verdict} ({decision.reason}) logged at index {decision.index}"

    say(
        f"{step()}. reader reads an invoice; the gateway asserts the sender it saw: "
        + access(reader, r.id, "read", "mailbox:alice/inbox/msg-17", "billing@vendor.example")
    )

    for told in extra:
        told(log, settings, g.id, triage, say, step())

    wider = sign_entry(
        delegation_body(
            log.origin,
            g.id,
            reader.public,
            agent="reader",
            task={"id": "inbox-triage/cleanup", "description": "Delete spam"},
            scope=[
                {
                    "type": "email",
                    "actions": ["delete", "read"],
                    "locations": [MAIL],
                    "resources": ["mailbox:alice/inbox/*"],
                }
            ],
            expires_at=now + min(600, settings.ttl_default),
            max_depth=0,
            max_children=0,
        ),
        [triage],
    )
    try:
        log.append(wider)
        raise AssertionError("a widening was appended")
    except RejectedEntry as exc:
        say(
            f"{step()}. triage tries to delegate 'delete', which alice never granted: REFUSED, "
            f"field {exc.field}: {exc}"
        )

    say(
        f"{step()}. drafter sends its one reply: "
        + access(drafter, d.id, "send", "mailbox:alice/outbox/reply-1", "alice@corp")
    )
    say(
        "   and tries a second: "
        + access(drafter, d.id, "send", "mailbox:alice/outbox/reply-2", "alice@corp")
    )

    log.append(
        sign_entry(
            revocation_body(log.origin, credential=g.id, reason="task finished early"), [alice]
        )
    )
    say(f"{step()}. alice revokes her grant; the whole subtree goes with it.")
    say(
        "   reader tries again: "
        + access(reader, r.id, "read", "mailbox:alice/inbox/msg-18", "billing@vendor.example")
    )

    evidence = credential_bundle(log, g.id)
    out = db.with_name(db.stem + "-bundle.json")
    out.write_text(json.dumps(evidence, indent=2, sort_keys=True) + "\n")
    proved = verify_bundle(evidence, log.log_key.vkey)
    vkey_file = db.with_name(db.stem + ".vkey")
    vkey_file.write_text(log.log_key.vkey + "\n")
    say(
        f"{step()}. An auditor exports alice's grant with everything that came of it "
        f"({len(evidence['entries'])} entries, {out}) and verifies it offline: "
        f"{len(proved.chains())} chains, {len(proved.replay.accesses)} accesses, all proved."
    )
    say(f"   lineage-verify {out} --log-key {vkey_file}")
    log.close()
    return out
