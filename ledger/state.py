"""The chain state in the database: what the format's rules ask, indexed, always current.

``Rules.check`` (``lineage.verifier.chain``) reads the state through a read-only
``ChainView`` and returns an entry's ``Effects``. ``SQLiteState`` is that view
over the ledger's own tables, and ``apply`` writes the effects into them in the
same transaction as the leaf, so the state is never behind the log and a
process that opens the ledger loads nothing (docs/LEDGER.md, "The chain
state"):

- ``chain_state``: the size and time the state has applied, and the policy in force.
- ``chain_keys``: every key the log added, its roles or principal, when it was
  added and retired.
- ``credentials``: each grant and delegation by id: its leaf, parent,
  principal, holder kid, rate window, and the counters the rules ask about
  (children, uses over its subtree, the index of its first revocation).
- ``revoked_holders``: holder keys revoked, by kid.
- ``recent_uses``: for a rate-limited credential, each use's time and ``seq``, the
  credential's use count just after it. Uses after time t are then ``uses``
  minus the ``seq`` of the last use at or before t: one index lookup, whatever
  the window holds or the credential's history. As each use is written, the
  rows older than its window go, but for the last of them.
- ``nonces``: the invocation nonces of every access, per credential (kept: the
  format refuses a repeated nonce however old).
- ``results`` (migration 5): each access entry that has a ``result`` entry, and the
  result's index; its primary key holds an access to one result in the file too.
  What a result is checked against (the access's decision and enforcement point)
  is read from the access's own leaf: nothing about accesses is copied.

A ``CredentialRecord`` is immutable, so parsed records are kept in a bounded
cache shared by the process's views (only committed ones: a record created in a
transaction joins the cache once it commits). Every read goes through the
store, so inside the writer's transaction the view sees that transaction's
writes, and anywhere else it sees committed state only.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

from lineage.verifier.chain import AccessRecord, ChainView, CredentialRecord, Effects, KeyRecord
from lineage.verifier.entry import parse_entry
from lineage.verifier.errors import LineageError
from lineage.verifier.keys import PublicKey
from lineage.verifier.kinds import Access, Delegation, Grant, Policy

from .errors import Damaged, StorageError

if TYPE_CHECKING:
    from .store import SQLiteStore

__all__ = ["MIGRATION", "RESULTS_MIGRATION", "RecordCache", "SQLiteState"]

# Schema migration 4 (ledger/store.py): the state tables, empty; a ledger from before them
# fills them by replaying its leaves once (``Log.catch_up``), in bounded transactions.
MIGRATION = """
CREATE TABLE chain_state (
    one            INTEGER PRIMARY KEY CHECK (one = 1),
    size           INTEGER NOT NULL,
    time           INTEGER NOT NULL,
    policy_version INTEGER NOT NULL,
    policy_idx     INTEGER
);
INSERT INTO chain_state (one, size, time, policy_version) VALUES (1, 0, 0, 0);
CREATE TABLE chain_keys (
    kid       TEXT PRIMARY KEY,
    key       BLOB NOT NULL CHECK (length(key) = 32),
    roles     TEXT NOT NULL,
    principal TEXT,
    added     INTEGER NOT NULL,
    retired   INTEGER
) WITHOUT ROWID;
CREATE INDEX chain_keys_principal ON chain_keys (principal);
CREATE TABLE credentials (
    id          TEXT PRIMARY KEY,
    idx         INTEGER NOT NULL UNIQUE,
    parent      TEXT,
    principal   TEXT NOT NULL,
    holder      TEXT NOT NULL,
    rate_window INTEGER,
    children    INTEGER NOT NULL DEFAULT 0,
    uses        INTEGER NOT NULL DEFAULT 0,
    revoked     INTEGER
) WITHOUT ROWID;
CREATE INDEX credentials_parent ON credentials (parent, idx);
CREATE INDEX credentials_holder ON credentials (holder, idx);
CREATE INDEX credentials_principal ON credentials (principal, idx);
CREATE TABLE revoked_holders (kid TEXT PRIMARY KEY, idx INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE recent_uses (
    credential TEXT    NOT NULL,
    time       INTEGER NOT NULL,
    seq        INTEGER NOT NULL
);
CREATE INDEX recent_uses_by ON recent_uses (credential, time, seq);
CREATE TABLE nonces (
    credential TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    allowed    INTEGER NOT NULL,
    PRIMARY KEY (credential, nonce)
) WITHOUT ROWID;
"""

# Schema migration 5: which access entries have a result entry (FORMAT.md §4.8). A ledger
# from before it holds no result entry, so the table starts empty and complete.
RESULTS_MIGRATION = """
CREATE TABLE results (
    access TEXT    PRIMARY KEY,
    idx    INTEGER NOT NULL UNIQUE
) WITHOUT ROWID;
"""

CACHE_SIZE = 4096  # parsed credential records a process keeps (each a few KB)


class RecordCache:
    """A bounded, thread-safe LRU of committed credential records, by id."""

    def __init__(self, size: int = CACHE_SIZE):
        self.size = size
        self._items: OrderedDict[str, CredentialRecord] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, cid: str) -> CredentialRecord | None:
        with self._lock:
            rec = self._items.get(cid)
            if rec is not None:
                self._items.move_to_end(cid)
            return rec

    def put(self, records: Iterable[CredentialRecord]) -> None:
        with self._lock:
            for rec in records:
                self._items[rec.id] = rec
                self._items.move_to_end(rec.id)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class SQLiteState(ChainView):
    """The chain state in a ``SQLiteStore``'s tables: a ``ChainView`` and its writer.

    Made per use (it holds no rows): in the writer's transaction it reads what that
    transaction wrote; elsewhere, what is committed.
    """

    def __init__(self, store: SQLiteStore, cache: RecordCache):
        self.store = store
        self.cache = cache
        self.fresh: dict[str, CredentialRecord] = {}  # created here, not yet committed
        # accesses applied here: their leaves join the table only as the batch is written
        self.fresh_accesses: dict[str, AccessRecord] = {}
        self._policy: tuple[int, Policy] | None = None
        # Rows read since the last write through this view: a decision and the rules
        # that check it ask the same questions, and only ``apply`` changes the answers.
        self._memo: dict[tuple, object] = {}

    def _one(self, sql: str, params: tuple = (), types: str = "") -> tuple | None:
        """The first row ``sql`` gives, each column checked against ``types`` (``i`` an
        integer, ``n`` an integer or NULL, ``s`` text, ``S`` text or NULL, ``b`` bytes):
        a byte changed in the file can turn a counter into text or NULL, and the rules
        must see that as damage, not fail on it with a TypeError."""
        key = (sql, params)
        if key in self._memo:
            return self._memo[key]  # type: ignore[return-value]
        rows = self.store._query(sql, params)
        row = rows[0] if rows else None
        if row is not None and types:
            _check_row(row, types, sql)
        self._memo[key] = row
        return row

    # -- where the state is ------------------------------------------------------------------

    def _head(self) -> tuple[int, int, int, int | None]:
        row = self._one(
            "SELECT size, time, policy_version, policy_idx FROM chain_state", (), "iiin"
        )
        if row is None:
            raise StorageError(f"{self.store.path} has no chain state")
        return row

    @property
    def size(self) -> int:  # type: ignore[override]
        return self._head()[0]

    @property
    def time(self) -> int:  # type: ignore[override]
        return self._head()[1]

    @property
    def policy_version(self) -> int:  # type: ignore[override]
        return self._head()[2]

    @property
    def policy(self) -> Policy | None:  # type: ignore[override]
        at = self._head()[3]
        if at is None:
            return None
        if self._policy is None or self._policy[0] != at:
            body = _stored_entry(self.store.leaf(at).entry, at).body
            if not isinstance(body, Policy):
                raise StorageError(f"the chain state's policy at {at} is a {type(body).__name__}")
            self._policy = (at, body)
        return self._policy[1]

    # -- the view ------------------------------------------------------------------------------

    def index_of(self, entry_id: str) -> int | None:
        """Index of an applied leaf with this id (a leaf the state has not applied yet,
        as when it catches up with an older ledger, is not "earlier")."""
        index = self.store.find(entry_id)
        return index if index is not None and index < self.size else None

    @staticmethod
    @lru_cache(maxsize=1024)
    def _key(row: tuple) -> KeyRecord:
        key, roles, principal, added, retired = row
        try:
            parsed = json.loads(roles)
            if not isinstance(parsed, list) or not all(isinstance(r, str) for r in parsed):
                raise ValueError("roles are not a list of names")
            return KeyRecord(PublicKey(bytes(key)), tuple(parsed), principal, added, retired)
        except (ValueError, TypeError, LineageError) as exc:  # the file, not the caller
            raise Damaged(f"the ledger is damaged: a chain_keys row is corrupt: {exc}") from None

    def key(self, kid: str) -> KeyRecord | None:
        row = self._one(
            "SELECT key, roles, principal, added, retired FROM chain_keys WHERE kid = ?", (kid,)
        )
        return self._key(row) if row else None

    def other_operator_active(self, kid: str, index: int) -> bool:
        rows = self.store._query(
            "SELECT key, roles, principal, added, retired FROM chain_keys "
            "WHERE kid != ? AND principal IS NULL",
            (kid,),
        )
        return any("operator" in r.roles and r.active(index) for r in map(self._key, rows))

    def principal_keys(self, principal: str) -> list[KeyRecord]:
        rows = self.store._query(
            "SELECT key, roles, principal, added, retired FROM chain_keys WHERE principal = ?",
            (principal,),
        )
        return [self._key(r) for r in rows]

    def credential(self, cid: str) -> CredentialRecord | None:
        rec = self.fresh.get(cid)
        if rec is not None:
            return rec
        rec = self.cache.get(cid)
        if rec is not None and rec.index < self.size:  # not one after this view's snapshot
            return rec
        row = self._one(
            "SELECT c.idx, c.parent, c.principal, l.time, l.entry FROM credentials c "
            "JOIN leaves l ON l.idx = c.idx WHERE c.id = ?",
            (cid,),
            "iSsib",
        )
        if row is None:
            return None
        index, parent_id, principal, time, raw = row
        parent = None
        if parent_id is not None:
            parent = self.credential(parent_id)
            if parent is None:
                raise StorageError(f"credential {cid[:16]}'s parent {parent_id[:16]} is missing")
        entry = _stored_entry(raw, index)
        body = entry.body
        if not isinstance(body, Grant | Delegation) or entry.id != cid:
            raise StorageError(f"the chain state's credential {cid[:16]} is not its leaf")
        rec = CredentialRecord(entry, index, time, principal, body.holder, body.credential, parent)
        if self.store.in_transaction():
            self.fresh[cid] = rec  # joins the cache if the transaction commits
        else:
            self.cache.put([rec])
        return rec

    def revoked_at(self, cid: str) -> int | None:
        row = self._one("SELECT revoked FROM credentials WHERE id = ?", (cid,), "n")
        return row[0] if row else None

    def holder_revoked_at(self, kid: str) -> int | None:
        row = self._one("SELECT idx FROM revoked_holders WHERE kid = ?", (kid,), "i")
        return row[0] if row else None

    def is_revoked(self, rec: CredentialRecord, index: int) -> bool:
        row = self._one(
            "SELECT c.revoked, h.idx FROM credentials c "
            "LEFT JOIN revoked_holders h ON h.kid = c.holder WHERE c.id = ?",
            (rec.id,),
            "nn",
        )
        if row is None:
            return False
        return any(at is not None and at < index for at in row)

    def holds(self, kid: str) -> bool:
        return self._one("SELECT 1 FROM credentials WHERE holder = ? LIMIT 1", (kid,)) is not None

    def children(self, cid: str) -> int:
        row = self._one("SELECT children FROM credentials WHERE id = ?", (cid,), "i")
        return row[0] if row else 0

    def use_count(self, cid: str) -> int:
        row = self._one("SELECT uses FROM credentials WHERE id = ?", (cid,), "i")
        return row[0] if row else 0

    def uses_after(self, cid: str, time: int) -> int:
        row = self._one(
            "SELECT c.uses - IFNULL((SELECT seq FROM recent_uses WHERE credential = ?1 "
            "AND time <= ?2 ORDER BY time DESC, seq DESC LIMIT 1), 0) "
            "FROM credentials c WHERE c.id = ?1",
            (cid, time),
            "i",
        )
        return row[0] if row else 0

    def nonce_seen(self, cid: str, nonce: str, *, allowed_only: bool) -> bool:
        row = self._one(
            "SELECT allowed FROM nonces WHERE credential = ? AND nonce = ?", (cid, nonce), "i"
        )
        return row is not None and (bool(row[0]) or not allowed_only)

    def access(self, entry_id: str) -> AccessRecord | None:
        """The applied access entry ``entry_id``, read from its own leaf (found by the
        entry-id index, and counted only if its bytes hash to the id), or applied by this
        view in the batch being written."""
        fresh = self.fresh_accesses.get(entry_id)
        if fresh is not None:
            return fresh
        row = self._one("SELECT idx, entry FROM leaves WHERE entry_id = ?", (entry_id,), "ib")
        if row is None or row[0] >= self.size:
            return None
        index, raw = row
        entry = _stored_entry(raw, index)
        if entry.id != entry_id:
            raise Damaged(
                f"the ledger is damaged: the entry-id index puts {entry_id[:16]} at index "
                f"{index}, which holds another entry (run lineage verify --db)"
            )
        body = entry.body
        if not isinstance(body, Access):  # the entry says what it is, not the kind column
            return None
        return AccessRecord(
            index, body.decision == "allow", body.enforcement, body.invocation.credential
        )

    def result_of(self, access_id: str) -> int | None:
        row = self._one("SELECT idx FROM results WHERE access = ?", (access_id,), "i")
        return row[0] if row else None

    # -- what queries ask (not the rules) ------------------------------------------------------

    def subtree(self, cid: str) -> list[CredentialRecord]:
        """``cid`` and every credential derived from it, in log order (the parent index)."""
        rows = self.store._query(
            "WITH RECURSIVE below(id, idx) AS ("
            " SELECT id, idx FROM credentials WHERE id = ?"
            " UNION ALL SELECT c.id, c.idx FROM credentials c JOIN below b ON c.parent = b.id"
            ") SELECT id FROM below ORDER BY idx",
            (cid,),
        )
        out = [self.credential(row[0]) for row in rows]
        return [rec for rec in out if rec is not None]

    def credentials_where(
        self,
        *,
        principal: str | None = None,
        holder: str | None = None,
        before: int | None = None,
        limit: int = -1,
    ) -> list[CredentialRecord]:
        """Credentials of ``principal`` or held by kid ``holder`` (at index < ``before``)."""
        where, params = [], []
        for column, value in (("principal", principal), ("holder", holder)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if before is not None:
            where.append("idx < ?")
            params.append(before)
        sql = "SELECT id FROM credentials"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.store._query(sql + " ORDER BY idx LIMIT ?", (*params, limit))
        return [rec for rec in (self.credential(r[0]) for r in rows) if rec is not None]

    def count_credentials(self) -> int:
        row = self._one("SELECT COUNT(*) FROM credentials")
        return row[0] if row else 0

    # -- writing effects -------------------------------------------------------------------------

    def apply(self, fx: Effects) -> None:
        """Write ``fx`` into the state tables (inside the transaction writing its leaf)."""
        statements: list[tuple[str, tuple | list]] = []
        for k in fx.keys:
            statements.append(
                (
                    "INSERT INTO chain_keys (kid, key, roles, principal, added, retired) "
                    "VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT (kid) DO UPDATE SET key = "
                    "excluded.key, roles = excluded.roles, principal = excluded.principal, "
                    "added = excluded.added, retired = NULL",
                    (k.key.kid, k.key.raw, json.dumps(list(k.roles)), k.principal, k.added),
                )
            )
        if fx.retired is not None:
            statements.append(
                ("UPDATE chain_keys SET retired = ? WHERE kid = ?", (fx.index, fx.retired))
            )
        policy_idx = None
        if fx.policy is not None:
            policy_idx = fx.index
            self._policy = (fx.index, fx.policy)
        if fx.credential is not None:
            rec = fx.credential
            rate = rec.credential.limits.rate
            statements.append(
                (
                    "INSERT INTO credentials (id, idx, parent, principal, holder, rate_window) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        rec.id,
                        rec.index,
                        rec.parent.id if rec.parent else None,
                        rec.principal,
                        rec.holder.kid,
                        rate.window if rate is not None else None,
                    ),
                )
            )
            if rec.parent is not None:
                statements.append(
                    (
                        "UPDATE credentials SET children = children + 1 WHERE id = ?",
                        (rec.parent.id,),
                    )
                )
            self.fresh[rec.id] = rec
        if fx.revoked is not None:
            statements.append(
                (
                    "UPDATE credentials SET revoked = ? WHERE id = ? AND revoked IS NULL",
                    (fx.index, fx.revoked),
                )
            )
        if fx.revoked_holder is not None:
            statements.append(
                (
                    "INSERT INTO revoked_holders (kid, idx) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (fx.revoked_holder, fx.index),
                )
            )
        for cid in fx.uses:
            statements += [
                ("UPDATE credentials SET uses = uses + 1 WHERE id = ?", (cid,)),
                (
                    "INSERT INTO recent_uses (credential, time, seq) SELECT id, ?, uses "
                    "FROM credentials WHERE id = ? AND rate_window IS NOT NULL",
                    (fx.time, cid),
                ),
                (  # rows before this use's window go, but the last of them (its seq counts);
                    # the time bound keeps the delete inside the index range it removes
                    "DELETE FROM recent_uses WHERE credential = ?1 AND time <= ?2 - (SELECT "
                    "rate_window FROM credentials WHERE id = ?1) AND seq < (SELECT seq "
                    "FROM recent_uses WHERE credential = ?1 AND time <= ?2 - (SELECT "
                    "rate_window FROM credentials WHERE id = ?1) ORDER BY time DESC, seq DESC "
                    "LIMIT 1)",
                    (cid, fx.time),
                ),
            ]
        if fx.invocation is not None:
            statements.append(
                (
                    "INSERT INTO nonces (credential, nonce, allowed) VALUES (?, ?, ?) "
                    "ON CONFLICT DO UPDATE SET allowed = MAX(allowed, excluded.allowed)",
                    (*fx.invocation, int(fx.allowed)),
                )
            )
        if fx.access is not None:
            self.fresh_accesses[fx.entry.id] = fx.access
        if fx.result is not None:
            statements.append(
                ("INSERT INTO results (access, idx) VALUES (?, ?)", (fx.result, fx.index))
            )
        statements.append(
            (
                "UPDATE chain_state SET size = ?, time = ?, policy_version = "
                "IFNULL(?, policy_version), policy_idx = IFNULL(?, policy_idx)",
                (
                    fx.index + 1,
                    fx.time,
                    fx.policy.version if fx.policy is not None else None,
                    policy_idx,
                ),
            )
        )
        self._memo.clear()
        self.store._write_each(statements)

    def committed(self) -> None:
        """The transaction this view wrote in has committed: its records may be cached."""
        self.cache.put(self.fresh.values())
        self.fresh.clear()
        self.fresh_accesses.clear()


def _stored_entry(raw: bytes, index: int):
    """The entry stored at ``index``; ``Damaged`` if its bytes no longer parse (a fault of
    the file, never the caller's: not a 400)."""
    try:
        return parse_entry(raw)
    except LineageError as exc:
        raise Damaged(
            f"the ledger is damaged: the entry at index {index} is corrupt: {exc}"
        ) from None


_TYPES = {
    "i": (int,),
    "n": (int, type(None)),
    "s": (str,),
    "S": (str, type(None)),
    "b": (bytes,),
}


def _check_row(row: tuple, types: str, sql: str) -> None:
    for value, want in zip(row, types, strict=True):
        if type(value) not in _TYPES[want]:
            table = sql.split(" FROM ", 1)[1].split()[0]
            raise Damaged(
                f"the ledger is damaged: a {table} row holds {type(value).__name__} "
                f"{str(value)[:40]!r} where the chain state keeps {_NAMES[want]}"
            )


_NAMES = {
    "i": "an integer",
    "n": "an integer or NULL",
    "s": "text",
    "S": "text or NULL",
    "b": "bytes",
}
