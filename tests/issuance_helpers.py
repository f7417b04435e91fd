"""Builders shared by the issuance, decision, policy and demo tests.

A ``World`` is a real ledger on a SQLite file with an injected clock, alice bound to
her key (role ``finance``), and a few agent keys. Everything is built the way a
client builds it: bodies from ``lineage.ledger.issuance``, signed by the party whose
authority they exercise, appended unchanged.

    w = world(tmp_path)
    g = w.append(w.grant())                      # alice -> the agent, task inbox-triage
    d = w.append(w.delegate(g, w.agent))         # the agent -> the reader, signed by the agent
    w.decide(w.invoke(w.reader, d.id))           # a Decision, logged as an access entry

``forced_bundle`` writes a bundle by hand (an in-memory tree and the ledger's own
log key) holding the ledger's leaves plus entries the ledger refused, so the
offline verifier can be asked about them too.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lineage.ledger.config import Settings
from lineage.ledger.decide import Decision, decide
from lineage.ledger.issuance import bind_principal
from lineage.ledger.ledger import init_ledger, open_ledger
from lineage.ledger.log import Appended, Log
from lineage.verifier.bodies import delegation_body, grant_body, revocation_body
from lineage.verifier.bundle import encode_hashes
from lineage.verifier.checkpoint import Checkpoint, sign_checkpoint
from lineage.verifier.entry import Entry, Leaf, sign_entry
from lineage.verifier.invocation import SignedInvocation, sign_invocation
from lineage.verifier.keys import SigningKey, b64u_encode
from lineage.verifier.merkle import MemoryTree

__all__ = [
    "MAIL",
    "ORIGIN",
    "T0",
    "Clock",
    "World",
    "decide_in_process",
    "forced_bundle",
    "key",
    "nonce",
    "parent_scope",
    "reopen",
    "request",
    "world",
]

ORIGIN = "issuance.example/log"
T0 = 1767225600  # 2026-01-01T00:00:00Z
MAIL = "https://mail.example.com:443"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0):
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def key(name: str) -> SigningKey:
    """A fixed key per name, so failures reproduce."""
    return SigningKey(hashlib.sha256(b"issuance test key: " + name.encode()).digest())


_counter = iter(range(10**9))


def nonce(n: int | None = None) -> str:
    """A distinct nonce per call (or a fixed one per ``n``)."""
    n = next(_counter) if n is None else n
    return b64u_encode(hashlib.sha256(b"issuance nonce %d" % n).digest()[:16])


def parent_scope() -> list[dict[str, Any]]:
    return [
        {
            "type": "email",
            "actions": ["read", "send"],
            "locations": [MAIL],
            "resources": ["mailbox:alice/*"],
            "constraints": {
                "received_at": {"gte": T0 - 86400},
                "sender": {"in": ["a@vendor.example", "b@vendor.example"]},
            },
        }
    ]


def request(**over: Any) -> dict[str, Any]:
    """A request every ``parent_scope`` credential permits (fields overridable)."""
    out: dict[str, Any] = {
        "type": "email",
        "action": "read",
        "location": MAIL,
        "resource": "mailbox:alice/inbox/msg-1",
        "attributes": {"received_at": T0 - 60, "sender": "a@vendor.example"},
    }
    out.update(over)
    return {k: v for k, v in out.items() if v is not None}


@dataclass
class World:
    log: Log
    clock: Clock
    db: Path
    keys: Path
    alice: SigningKey = field(default_factory=lambda: key("alice@corp"))
    agent: SigningKey = field(default_factory=lambda: key("agent"))
    reader: SigningKey = field(default_factory=lambda: key("reader"))
    helper: SigningKey = field(default_factory=lambda: key("helper"))

    @property
    def now(self) -> int:
        return int(self.clock())

    def append(self, entry: Entry) -> Appended:
        return self.log.append(entry)

    def grant(
        self, holder: SigningKey | None = None, signer: SigningKey | None = None, **over: Any
    ) -> Entry:
        """alice's grant to ``holder`` (default: the agent); fields overridable."""
        fields: dict[str, Any] = {
            "agent": "triage",
            "task": {"id": "inbox-triage", "description": "Triage alice's inbox"},
            "scope": parent_scope(),
            "expires_at": self.now + 900,
            "max_depth": 3,
        }
        fields.update(over)
        body = grant_body(ORIGIN, "alice@corp", (holder or self.agent).public, **fields)
        return sign_entry(body, [signer or self.alice])

    def delegate(
        self,
        parent: Entry | Appended | str,
        signer: SigningKey,
        holder: SigningKey | None = None,
        **over: Any,
    ) -> Entry:
        """A delegation under ``parent`` signed by ``signer`` (the parent's holder)."""
        fields: dict[str, Any] = {
            "agent": "reader",
            "task": {"id": "inbox-triage/read", "description": "Read invoices"},
            "scope": parent_scope(),
            "expires_at": self.now + 600,
            "max_depth": 1,
        }
        fields.update(over)
        parent_id = parent if isinstance(parent, str) else parent.id
        body = delegation_body(ORIGIN, parent_id, (holder or self.reader).public, **fields)
        return sign_entry(body, [signer])

    def revoke(self, signer: SigningKey, **target: Any) -> Entry:
        return sign_entry(revocation_body(ORIGIN, reason="test", **target), [signer])

    def invoke(
        self,
        holder: SigningKey,
        credential: str,
        req: Mapping[str, Any] | None = None,
        *,
        iat: int | None = None,
        n: str | None = None,
    ) -> SignedInvocation:
        return sign_invocation(
            holder,
            credential,
            dict(req or request()),
            self.now if iat is None else iat,
            n or nonce(),
        )

    def decide(
        self,
        invocation: SignedInvocation,
        context: Mapping[str, Any] | None = None,
        enforcement: str = "gw-1",
    ) -> Decision:
        return decide(self.log, invocation, context or {}, enforcement, window=60)

    def policy(self, version: int, document: Mapping[str, Any]) -> Entry:
        body = {
            "kind": "policy",
            "v": 1,
            "log": ORIGIN,
            "version": version,
            "document": copy.deepcopy(dict(document)),
        }
        return sign_entry(body, [self.log.keys.operator])

    def close(self) -> None:
        self.log.close()


def world(
    tmp_path: Path, settings: Settings | None = None, clock: Clock | None = None, **kw: Any
) -> World:
    """A fresh ledger under ``tmp_path`` with alice bound (roles: finance)."""
    clock = clock or Clock()
    db, keys = tmp_path / "l.db", tmp_path / "keys"
    log = init_ledger(db, keys, origin=ORIGIN, clock=clock, settings=settings or Settings())
    w = World(log, clock, db, keys, **kw)
    log.append(bind_principal(ORIGIN, log.keys.operator, "alice@corp", w.alice.public, ["finance"]))
    return w


def reopen(w: World, settings: Settings | None = None) -> Log:
    """Another ``Log`` over the same files (as a second process would open them)."""
    return open_ledger(w.db, w.keys, clock=w.clock, settings=settings or Settings())


def forced_bundle(log: Log, extra: Sequence[Entry], time: int) -> dict[str, Any]:
    """A complete, correctly proved bundle of the log's leaves plus ``extra`` (at ``time``),
    signed with the ledger's own log key: what a log that skipped its checks would show."""
    leaves = [leaf for _, leaf in log.leaves()]
    leaves += [Leaf.build(e, max(time, leaves[-1].time)) for e in extra]
    tree = MemoryTree(leaf.hash for leaf in leaves)
    size = len(leaves)
    note = sign_checkpoint(Checkpoint(log.origin, size, tree.root(size)), log.keys.log)
    return {
        "origin": log.origin,
        "log_key": log.log_key.vkey,
        "checkpoint": note.decode(),
        "entries": [
            {
                "index": i,
                "leaf": leaf.to_json(),
                "inclusion": encode_hashes(tree.inclusion_proof(i, size)),
            }
            for i, leaf in enumerate(leaves)
        ],
    }


def decide_in_process(
    db: Path,
    keys: Path,
    invocations: Sequence[Mapping[str, Any]],
    start: Any,
    results: Any,
    threads: int = 4,
) -> None:
    """A process of its own: open the ledger's files, wait for ``start``, then decide
    ``invocations`` from ``threads`` threads; put the outcomes on ``results``."""
    import threading

    from lineage.ledger.decide import InvalidInvocation

    log = open_ledger(db, keys)
    log.state()  # replay now, so that the deciding starts together
    outcomes: list[str] = []

    def run(chunk: Sequence[Mapping[str, Any]]) -> None:
        for inv in chunk:
            try:
                d = decide(log, inv, {}, "gw-process", window=600)
                outcomes.append("allow" if d.allowed else f"deny:{d.check}")
            except InvalidInvocation as exc:
                outcomes.append(f"invalid:{exc.reason}")
            except Exception as exc:  # reported to the parent, which fails the test
                outcomes.append(f"error:{type(exc).__name__}:{exc}")

    workers = [
        threading.Thread(target=run, args=(invocations[i::threads],)) for i in range(threads)
    ]
    start.wait(60)
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    log.close()
    results.put(outcomes)
