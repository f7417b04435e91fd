"""The ledger's chain state (ledger/state.py) run beside the in-memory ``Replay``.

``twin_replay`` applies leaves through the same ``Rules`` into a real SQLite file,
one transaction per leaf as the writer does; ``assert_agree`` compares every answer
the rules can ask of the two states. test_chain.py runs it on every log it builds,
so each rule's story is also a story about the database.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from lineage.ledger.state import RecordCache, SQLiteState
from lineage.ledger.store import SQLiteStore, StoredLeaf
from lineage.verifier.chain import Replay, Rules
from lineage.verifier.entry import Leaf
from lineage.verifier.errors import ChainError
from lineage.verifier.note import Verifier


def twin_replay(
    log_key: Verifier, leaves: Sequence[Leaf], **rules: object
) -> tuple[SQLiteState, ChainError | None, SQLiteStore]:
    """Apply ``leaves`` (index 0 on) to a fresh SQLite chain state; stop at the first
    refusal. Returns the committed view, the refusal (or None) and the store."""
    folder = Path(tempfile.mkdtemp(prefix="lineage-twin-"))
    store = SQLiteStore(folder / "l.db", create=True)
    cache = RecordCache()
    check = Rules(log_key, **rules)  # type: ignore[arg-type]
    for index, leaf in enumerate(leaves):
        try:
            with store.transaction():
                view = store.state(cache)
                effects = check.check(view, index, leaf)
                view.apply(effects)
                entry = leaf.entry
                store.append([StoredLeaf(index, entry.id, entry.kind, leaf.time, entry.raw)], [])
            view.committed()
        except ChainError as exc:
            return store.state(cache), exc, store
    return store.state(cache), None, store


def assert_agree(memory: Replay, view: SQLiteState) -> None:
    """Every question the rules ask gets the same answer from both states."""
    assert (view.size, view.time) == (memory.size, memory.time)
    assert view.policy_version == memory.policy_version
    assert (view.policy.version if view.policy else None) == (
        memory.policy.version if memory.policy else None
    )
    for kid, rec in memory.keys.items():
        assert view.key(kid) == rec, kid
        for index in (memory.size, rec.added + 1):
            assert view.other_operator_active(kid, index) == memory.other_operator_active(
                kid, index
            )
        if rec.principal is not None:
            assert sorted(view.principal_keys(rec.principal), key=lambda k: k.key.kid) == sorted(
                memory.principal_keys(rec.principal), key=lambda k: k.key.kid
            )
    assert view.count_credentials() == len(memory.credentials)
    times = sorted({memory.time, *(t for ts in memory.use_times.values() for t in ts)})
    for cid, rec in memory.credentials.items():
        twin = view.credential(cid)
        assert twin is not None and twin.index == rec.index and twin.time == rec.time
        assert (twin.principal, twin.holder, twin.credential) == (
            rec.principal,
            rec.holder,
            rec.credential,
        )
        assert [n.id for n in twin.chain()] == [n.id for n in rec.chain()]
        assert view.revoked_at(cid) == memory.revoked_at(cid)
        assert view.holder_revoked_at(rec.holder.kid) == memory.holder_revoked_at(rec.holder.kid)
        assert view.holds(rec.holder.kid) and memory.holds(rec.holder.kid)
        assert view.children(cid) == memory.children(cid)
        assert view.use_count(cid) == memory.use_count(cid)
        window = rec.credential.limits.rate
        if window is not None:  # only a rate-limited credential's recent uses are kept
            for t in times:
                if t >= memory.time - window.window:
                    assert view.uses_after(cid, t) == memory.uses_after(cid, t), (cid, t)
        for index in (rec.index + 1, memory.size):
            assert view.is_revoked(rec, index) == memory.is_revoked(rec, index)
    for cid, nonce in memory.invocations:
        for allowed_only in (False, True):
            assert view.nonce_seen(cid, nonce, allowed_only=allowed_only) == memory.nonce_seen(
                cid, nonce, allowed_only=allowed_only
            )
    for index, entry in [*memory.accesses, *memory.revocations, *memory.result_entries]:
        assert view.index_of(entry.id) == index
    # results (FORMAT.md §4.8): what each access was, and which have their result
    assert len(memory.access_records) == len(memory.accesses)
    for access_id, rec in memory.access_records.items():
        assert view.access(access_id) == rec == memory.access(access_id), access_id
        assert view.result_of(access_id) == memory.result_of(access_id), access_id
    for access_id, index in memory.results.items():
        assert view.result_of(access_id) == index and access_id in memory.access_records
    for index, entry in memory.result_entries:
        assert memory.results[entry.body.access] == index
    for cid in memory.credentials:  # an entry of another kind is no access
        assert view.access(cid) is None and memory.access(cid) is None
        assert view.result_of(cid) is None and memory.result_of(cid) is None
    assert view.access("0" * 64) is None and memory.access("0" * 64) is None
