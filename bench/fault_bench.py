"""Fault harness: the ledger's file mutated, its disk full, its sidecar lost, its server killed.

    .venv/bin/python bench/fault_bench.py                     # the long run, by hand
    .venv/bin/python bench/fault_bench.py --short             # the sizes CI runs
    .venv/bin/python bench/fault_bench.py --json out.json --only mutations,restore

tests/test_fault_harness.py runs each part at the short sizes (the checks are this
code); docs/RELIABILITY.md says what each part shows and holds the figures of a long run.

mutations  A ledger with every kind of entry (genesis, a key added and retired,
           policies, grants, delegations, accesses allowed and denied, credential and
           holder revocations), API tokens, a DPoP replay cache with expired entries
           dropped (free pages), checkpoints published. For each mutation class, N
           random instances, each on a fresh copy of the files. An instance is
           *detected* when the audit (``lineage verify --db``, ``ledger/audit.py``)
           fails, or opening the ledger as ``lineage serve`` does refuses; for a copy
           without its sidecar, opening refuses until ``lineage log trust`` is given the
           latest checkpoint the log published, so *detected* there means that trust
           refuses. Whether the first append after opening is refused is recorded too.
           For byte flips, what SQLite reads is compared before and after: a flip that
           changes nothing read (unused space in a page, a free page) is "no effect";
           one that changes only unsigned bookkeeping (API tokens, the DPoP replay
           cache, ``checkpoints.created``, service rows of ``meta``) is "unsigned";
           only the schema's SQL text, "schema"; only ``chain_state.one``, "unread".
disk       A small tmpfs mounted for the run (root only; skipped with the reason
           where mounting is refused), a ledger on it, served over HTTP, appended to
           until the disk is full: every failure a 503, ``/healthz`` answering, the
           checkpoint thread alive; after freeing space and restarting, every
           acknowledged entry at its index, every receipt still verifying, and
           ``lineage verify --db`` passing.
restore    An older copy of the database put back without its sidecar: ``lineage
           serve`` refuses, and so does ``lineage log trust`` with the latest
           checkpoint; the latest copy, trusted the same way, serves and appends; the
           older copy put back beside the sidecar ``trust`` wrote is refused.
kill       bench/kill_bench.py's SIGKILL harness, and after every restart each
           acknowledged entry checked at its index and each receipt (``receipt`` in
           the answers of ``POST /v1/entries`` and ``/v1/access``, ``lineage_receipt``
           in those of ``POST /oauth/token``) checked against the current checkpoint: its
           leaf byte-identical to the one served, the root of the served leaves at its
           size equal to its checkpoint's, and (for a sample, or all with
           ``--proof-sample 0``) the server's consistency and inclusion proofs.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import gc
import hashlib
import json
import logging
import os
import platform
import random
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: ``tests`` is importable from the root
    sys.path.insert(0, str(ROOT))

from lineage.ledger.audit import AuditFailure, audit  # noqa: E402
from lineage.ledger.config import Settings  # noqa: E402
from lineage.ledger.issuance import bind_principal  # noqa: E402
from lineage.ledger.ledger import init_ledger, open_ledger, sidecar_path  # noqa: E402
from lineage.ledger.log import Log  # noqa: E402
from lineage.ledger.tokens import ROLES, TokenStore  # noqa: E402
from lineage.verifier.bodies import grant_body  # noqa: E402
from lineage.verifier.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint  # noqa: E402
from lineage.verifier.entry import (  # noqa: E402
    Entry,
    Leaf,
    leaf_from_json,
    sign_entry,
)
from lineage.verifier.errors import LineageError  # noqa: E402
from lineage.verifier.jcs import canonical  # noqa: E402
from lineage.verifier.keys import SigningKey  # noqa: E402
from lineage.verifier.merkle import (  # noqa: E402
    MemoryTree,
    leaf_hash,
    node_hash,
    nodes_completed_by_append,
    verify_consistency,
    verify_inclusion,
)
from lineage.verifier.note import Signer, Verifier  # noqa: E402
from tests import api_server  # noqa: E402
from tests import issuance_helpers as ih  # noqa: E402
from tests.bench_modules import load_bench  # noqa: E402

kb = load_bench("kill_bench")

__all__ = [
    "Base",
    "ClassResult",
    "DiskReport",
    "KillResult",
    "ReceiptHarness",
    "RestoreReport",
    "build_ledger",
    "full_disk",
    "main",
    "mutation_classes",
    "restore_without_sidecar",
    "run_kills",
    "run_mutations",
]

LINEAGE = Path(sys.executable).with_name("lineage")
DB = "lineage.db"
WINDOW = Settings().invocation_window
SHORT = {
    "rounds": 6,
    "instances": 2,
    "flips": 3,
    "anywhere": 12,
    "kills": 3,
    "clients": 3,
    "proof_sample": 40,
}
LONG = {
    "rounds": 100,
    "instances": 30,
    "flips": 30,
    "anywhere": 500,
    "kills": 40,
    "clients": 4,
    "proof_sample": 200,  # receipts proved with the server's proofs after each restart
}
# what nothing signs: changing it is out of the audit's reach (see docs/RELIABILITY.md)
UNSIGNED_TABLES = ("api_tokens", "dpop_jti")
SIGNED_META = (b"origin", b"log_key")


# -- the ledger under test -------------------------------------------------------------------


_OWN = object()  # Image.put: the image's own sidecar


@dataclass
class Image:
    """A ledger's files at one moment: the database, its -wal if any, its sidecar."""

    db: bytes
    wal: bytes | None
    sidecar: bytes | None
    size: int

    def put(self, folder: Path, sidecar: Any = _OWN) -> Path:
        """Write the files into ``folder`` (emptied first); ``sidecar``: other bytes, or
        None for none."""
        _empty(folder)
        db = folder / DB
        db.write_bytes(self.db)
        if self.wal is not None:
            db.with_name(DB + "-wal").write_bytes(self.wal)
        side = self.sidecar if sidecar is _OWN else sidecar
        if side is not None:
            sidecar_path(db).write_bytes(side)
        return db


def _empty(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


@dataclass
class Base:
    """The ledger every mutation starts from, and the copies some classes need."""

    work: Path
    keys: Path
    log_key: Verifier
    alice: SigningKey
    now: int  # later than every leaf's time: the clock the copies are opened with
    main: Image  # closed cleanly; the sidecar's checkpoint covers every leaf
    older: list[Image]  # taken at smaller sizes, each with the sidecar it had then
    later: Image  # main plus a few appends, as a crash leaves them: in the -wal
    mix: dict[str, int]  # leaves by kind, decisions by outcome, rows by table
    seconds: float = 0.0
    # bytes of later's -wal up to the end of the commit its sidecar's checkpoint names: cut
    # or corrupted before it, the database falls behind the sidecar; after it, only appends
    # newer than the sidecar (written at most once a second) are lost
    covered: int = 0

    def grant(self, now: int | None = None) -> Entry:
        """A valid new grant by alice (what a probe append, or a substitute leaf, is)."""
        return _grant(self.alice, self.now if now is None else now)


def _grant(alice: SigningKey, now: int, pad: int = 0) -> Entry:
    body = grant_body(
        ih.ORIGIN,
        "alice@corp",
        SigningKey.generate().public,
        task={"id": "fault-probe", "description": "p" * pad},
        scope=ih.parent_scope(),
        expires_at=now + 600,
        max_depth=1,
    )
    return sign_entry(body, [alice])


def _key_entry(log: Log, op: str, key: SigningKey) -> Entry:
    body: dict[str, Any] = {
        "kind": "key",
        "v": 1,
        "log": log.origin,
        "op": op,
        "key": key.public.b64,
    }
    if op == "add":
        body["roles"] = ["decision"]
    return sign_entry(body, [log.keys.operator])


def _backup(db: Path) -> bytes:
    """A consistent copy of a live database (SQLite's backup API), as one file."""
    fd, tmp = tempfile.mkstemp(suffix=".db")
    os.close(fd)
    try:
        src, dst = sqlite3.connect(db), sqlite3.connect(tmp)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        return Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)


def build_ledger(work: Path, rounds: int, seed: int) -> Base:
    """A ledger with every kind of entry, built the way clients build them (tests'
    ``issuance_helpers.World``: a real ledger with a fixed clock), and its copies."""
    t0 = time.monotonic()
    _empty(work)
    rng = random.Random(seed)
    clock = ih.Clock()
    w = ih.world(work / "build", clock=clock)
    log = w.log
    mix: Counter[str] = Counter()
    older: list[Image] = []
    marks = {max(1, rounds * k // 4) for k in (1, 2, 3)}
    extra = SigningKey(rng.randbytes(32))
    version = 0

    def fresh() -> SigningKey:
        return SigningKey(rng.randbytes(32))

    def decide(holder: SigningKey, credential: str, **over: Any) -> None:
        d = w.decide(w.invoke(holder, credential, ih.request(**over) if over else None))
        mix["decision: allow" if d.allowed else f"decision: deny ({d.check})"] += 1

    for r in range(rounds):
        if r == 1:
            log.append(_key_entry(log, "add", extra))
        if r == 2:
            log.append(_key_entry(log, "retire", extra))
        if r % 4 == 3:
            version += 1
            log.append(w.policy(version, {}))
        agent, reader = fresh(), fresh()
        uses = rng.choice([None, 3, 5])
        rate = rng.choice([None, {"count": 3, "window": 30}])
        children = rng.choice([None, 3])
        g = w.append(w.grant(agent, max_uses=uses, rate=rate, max_children=children))
        d = w.append(
            w.delegate(
                g,
                agent,
                reader,
                max_uses=uses,
                rate=rate,
                max_children=None if children is None else 0,
            )
        )
        for _ in range(rng.randint(2, 5)):
            clock.advance(rng.randint(1, 5))
            decide(reader, d.id)
        decide(reader, d.id, action="delete")  # outside the scope: a logged deny
        if r % 3 == 2:
            w.append(w.revoke(w.alice, credential=g.id))
            decide(agent, g.id)  # a logged deny: revoked
        if r % 5 == 4:
            w.append(w.revoke(reader, holder=reader.public))  # the holder's own key
        clock.advance(rng.randint(10, 60))
        if r + 1 in marks:
            log.checkpoint()
            older.append(Image(_backup(w.db), None, sidecar_path(w.db).read_bytes(), log.size))
    # the service's own rows, which no signature covers: API tokens, the DPoP nonce secret,
    # and a DPoP replay cache whose expired entries were dropped (their pages are free)
    tokens = TokenStore(log.store)
    for role in ROLES:
        tokens.create(role, f"{role}-1")
    log.store.meta_once("dpop_nonce_secret", secrets.token_hex(32))
    now = int(clock())
    for i in range(600):
        log.store.remember_jti(f"{i:06d}-{'j' * 40}", now + 30, now)
    log.store.remember_jti("kept", now + 3600, now + 60)  # drops the 600 expired ones
    log.checkpoint()
    size = log.size
    for _, leaf in log.leaves():
        mix[f"leaf: {leaf.entry.kind}"] += 1
    key, alice = log.log_key, w.alice
    w.close()
    gc.collect()
    wal_left = w.db.with_name(w.db.name + "-wal").exists()  # a reader kept it: fold it in
    main_db = _backup(w.db) if wal_left else w.db.read_bytes()
    main = Image(main_db, None, sidecar_path(w.db).read_bytes(), size)
    conn = sqlite3.connect(f"file:{w.db}?mode=ro", uri=True)
    try:
        for table in _tables(conn):
            mix[f"rows: {table}"] = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        mix["free pages"] = conn.execute("PRAGMA freelist_count").fetchone()[0]
        mix["pages"] = conn.execute("PRAGMA page_count").fetchone()[0]
    finally:
        conn.close()
    clock.advance(60)
    later = _later(work / "later", main, w.keys, clock, alice)
    covered = _covered(work / "wal", later, key)
    base = Base(
        work,
        w.keys,
        key,
        alice,
        int(clock()) + 60,
        main,
        older,
        later,
        dict(mix),
    )
    base.seconds = time.monotonic() - t0
    base.covered = covered
    return base


def _later(folder: Path, main: Image, keys: Path, clock: ih.Clock, alice: SigningKey) -> Image:
    """``main`` and three more appends, copied while the log is open: the appends are in
    the -wal, as a crash (or a copy taken under a running server) leaves them."""
    db = main.put(folder)
    log = open_ledger(db, keys, clock=clock)
    try:
        for _ in range(3):
            clock.advance(2)
            log.append(_grant(alice, int(clock())))
        wal = db.with_name(DB + "-wal").read_bytes()
        if not wal:
            raise RuntimeError("the appends did not stay in the -wal")
        side = sidecar_path(db)
        image = Image(db.read_bytes(), wal, side.read_bytes() if side.exists() else None, log.size)
    finally:
        log.close()
    return image


def _covered(folder: Path, later: Image, log_key: Verifier) -> int:
    """The end of the -wal commit that brings the database to the sidecar's size."""
    assert later.wal is not None and later.sidecar is not None
    want = open_checkpoint(later.sidecar, log_key).checkpoint.size
    page = int.from_bytes(later.db[16:18]) or 65536
    frame = 24 + page
    for end in range(32 + frame, len(later.wal) + 1, frame):
        if not int.from_bytes(later.wal[end - frame + 4 : end - frame + 8]):
            continue  # not a commit frame
        Image(later.db, later.wal[:end], None, 0).put(folder)
        conn = sqlite3.connect(folder / DB)
        try:
            size = conn.execute("SELECT COUNT(*) FROM leaves").fetchone()[0]
        finally:
            conn.close()
        if size >= want:
            return end
    raise RuntimeError("no commit in the -wal reaches the sidecar's size")


def _tables(conn: sqlite3.Connection) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]


# -- detection ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    audit: str | None  # the audit's failure (None: it passed)
    opened: str | None  # why opening, as ``lineage serve`` does, refused (None: it opened)
    append: str | None  # why the first append after opening was refused (None: accepted)
    crashes: list[str]  # exceptions that are not the ledger's own: findings
    effect: str = "changed"  # byte flips: changed | none | a key of IGNORED

    @property
    def detected(self) -> bool:
        return self.audit is not None or self.opened is not None


def detect(db: Path, base: Base, outside: bytes | None) -> Verdict:
    """Audit the file, then open it as ``lineage serve`` does (with ``outside``, the latest
    checkpoint the log published, trusted if the sidecar is missing) and append once."""
    crashes: list[str] = []
    try:
        audit(db, base.log_key, invocation_window=WINDOW)
        failed = None
    except AuditFailure as exc:
        failed = str(exc)
    except LineageError as exc:  # the file could not be audited at all (CannotOpen, ...)
        failed = f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        failed = f"{type(exc).__name__}: {exc}"
        crashes.append(f"the audit raised {type(exc).__name__}: {exc}")
    opened = appended = None
    try:
        log = open_ledger(db, base.keys, clock=lambda: base.now + 120)
    except LineageError as exc:
        opened = f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        opened = f"{type(exc).__name__}: {exc}"
        crashes.append(f"opening raised {type(exc).__name__}: {exc}")
    else:
        try:
            if log.untrusted and outside is not None:  # a restore: what the operator does
                try:
                    log.trust(outside)
                except LineageError as exc:
                    opened = f"trust refused: {type(exc).__name__}: {exc}"
            if opened is None:
                try:
                    log.refuse_untrusted()
                except LineageError as exc:
                    opened = f"{type(exc).__name__}: {exc}"
            if opened is None:
                try:
                    log.append(base.grant(base.now + 100), timeout=10)
                except LineageError as exc:
                    appended = f"{type(exc).__name__}: {exc}"
                except Exception as exc:
                    appended = f"{type(exc).__name__}: {exc}"
                    crashes.append(f"the first append raised {type(exc).__name__}: {exc}")
        finally:
            try:
                log.close()
            except Exception as exc:
                crashes.append(f"closing raised {type(exc).__name__}: {exc}")
    return Verdict(_short(failed), _short(opened), _short(appended), crashes)


def _short(text: str | None, n: int = 160) -> str | None:
    return None if text is None else (text if len(text) <= n else text[: n - 1] + "…")


def content(db: Path) -> dict[str, Any]:
    """What SQLite reads from ``db``: the schema, the user version, every table's rows."""
    out: dict[str, Any] = {}
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return {"*": f"unreadable: {exc}"}
    conn.text_factory = bytes  # compared as stored: a flip may leave text that is not UTF-8
    try:
        for name, sql in (
            ("user_version", "PRAGMA user_version"),
            ("sqlite_master", "SELECT type, name, tbl_name, rootpage, sql FROM sqlite_master"),
        ):
            try:
                out[name] = sorted(conn.execute(sql).fetchall(), key=repr)
            except (sqlite3.Error, UnicodeDecodeError) as exc:
                out[name] = f"unreadable: {exc}"
        for table in TABLES:
            try:
                out[table] = sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            except (sqlite3.Error, UnicodeDecodeError) as exc:
                out[table] = f"unreadable: {exc}"
    finally:
        conn.close()
    return out


TABLES = (
    "meta",
    "leaves",
    "nodes",
    "checkpoints",
    "api_tokens",
    "dpop_jti",
    "refs",
    "chain_state",
    "chain_keys",
    "credentials",
    "revoked_holders",
    "recent_uses",
    "nonces",
)


# What a flip changed when the audit and opening pass, in the words of the report:
IGNORED = {
    "unsigned": "only unsigned bookkeeping (API tokens, DPoP replay cache, "
    "checkpoints.created, the DPoP nonce secret)",
    "unread": "only chain_state.one, the key of its single row, which no query reads",
    "schema": "only the schema's SQL text (sqlite_master), no row",
}


def effect(before: dict[str, Any], after: dict[str, Any]) -> str:
    """What changed between two ``content`` readings: none, one of ``IGNORED``, or
    changed (something signed, or derived from the leaves)."""
    changed = [k for k in before.keys() | after.keys() if before.get(k) != after.get(k)]
    if not changed:
        return "none"
    master_before, master_after = before.get("sqlite_master"), after.get("sqlite_master")
    if isinstance(master_after, str):
        return "changed"  # the schema no longer reads
    # One byte changed: if it is in the schema's SQL text (type, name, table and root page
    # as they were), no page of any table or index changed, however SQLite now reads them
    # (a column renamed or retyped).
    same_places = sorted(r[:4] for r in master_before) == sorted(r[:4] for r in master_after)
    if master_before != master_after and same_places:
        return "schema"
    rows = [k for k in changed if k != "sqlite_master"]
    if not rows:  # schema rows added or removed (a trigger dropped), no table read differs
        return "schema"
    if rows == ["chain_state"] and _same_but_first(before["chain_state"], after["chain_state"]):
        return "unread"
    if all(_unsigned(k, before.get(k), after.get(k)) for k in rows):
        return "unsigned"
    return "changed"


def _same_but_first(a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return False
    return sorted((r[1:] for r in a), key=repr) == sorted((r[1:] for r in b), key=repr)


def _unsigned(table: str, a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str):  # unreadable
        return False
    if table in UNSIGNED_TABLES:
        return True
    if table == "checkpoints":  # (size, root, note, created): created is the service's clock
        return sorted((r[:3] for r in a), key=repr) == sorted((r[:3] for r in b), key=repr)
    if table == "meta":
        return [r for r in a if r[0] in SIGNED_META] == [r for r in b if r[0] in SIGNED_META]
    return False


# -- the mutation classes ----------------------------------------------------------------------


@dataclass
class Ctx:
    """One instance's folder, and what a mutation needs."""

    folder: Path
    base: Base
    rng: random.Random
    outside: bytes | None = None  # the latest checkpoint a monitor outside the machine has

    @property
    def db(self) -> Path:
        return self.folder / DB

    @property
    def size(self) -> int:
        return self.base.main.size

    def put(self, image: Image | None = None, sidecar: Any = _OWN) -> None:
        image = image or self.base.main
        image.put(self.folder, sidecar)
        self.outside = image.sidecar

    def sql(self, *statements: tuple[str, tuple], tree: bool = False) -> None:
        """Run ``statements`` behind the ledger's back, triggers dropped first (and with
        ``tree``, every tree node recomputed from the leaves afterwards)."""
        conn = _raw(self.db)
        try:
            _drop_triggers(conn)
            conn.execute("BEGIN")
            for sql, params in statements:
                conn.execute(sql, params)
            if tree:
                _recompute_tree(conn)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = _raw(self.db)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def leaf(self, low: int = 0, high: int | None = None) -> int:
        """A random leaf index in [low, high) (default: any)."""
        return self.rng.randrange(low, self.size if high is None else high)

    def flip(self, data: bytes, at: int) -> bytes:
        return data[:at] + bytes([data[at] ^ self.rng.randrange(1, 256)]) + data[at + 1 :]


def _raw(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None)


def _drop_triggers(conn: sqlite3.Connection) -> None:
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
    for name in names:
        conn.execute(f"DROP TRIGGER {name}")


def _stored_leaf_hash(entry: bytes, time: int) -> bytes:
    return leaf_hash(b'{"entry":' + entry + b',"time":' + str(time).encode() + b"}")


def _recompute_tree(conn: sqlite3.Connection) -> None:
    """Rewrite ``nodes`` from the leaves as they now are: a careful forger's tree."""
    level = [
        _stored_leaf_hash(e, t)
        for e, t in conn.execute("SELECT entry, time FROM leaves ORDER BY idx")
    ]
    rows = []
    depth = 0
    while level:
        rows += [(depth, i, h) for i, h in enumerate(level)]
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        depth += 1
    conn.execute("DELETE FROM nodes")
    conn.executemany("INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)", rows)


class _Nodes:
    """The stored tree through a raw connection (a HashReader)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def read_nodes(self, coords: Sequence[tuple[int, int]]) -> list[bytes]:
        out = []
        for level, idx in coords:
            row = self.conn.execute(
                "SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, idx)
            ).fetchone()
            out.append(row[0])
        return out


def _write_behind(conn: sqlite3.Connection, raw: bytes, kind: str, refs_like: int | None) -> int:
    """Append a leaf as the writer would (its nodes, a refs row) without any of its checks."""
    size, last = conn.execute("SELECT COUNT(*), MAX(time) FROM leaves").fetchone()
    digest = _stored_leaf_hash(raw, last)
    nodes = nodes_completed_by_append(size, digest, _Nodes(conn))
    conn.execute(
        "INSERT INTO leaves (idx, entry_id, kind, time, entry) VALUES (?, ?, ?, ?, ?)",
        (size, hashlib.sha256(raw).hexdigest(), kind, last, raw),
    )
    conn.executemany(
        "INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)",
        [(lv, i, h) for (lv, i), h in nodes],
    )
    if refs_like is not None:
        row = conn.execute("SELECT * FROM refs WHERE idx = ?", (refs_like,)).fetchone()
        conn.execute("INSERT INTO refs VALUES (?, ?, ?, ?, ?, ?, ?)", (size, *row[1:]))
    return size


def _without_unique_entry_id(conn: sqlite3.Connection) -> None:
    """Rebuild ``leaves`` without its UNIQUE entry_id (which would refuse a second copy)."""
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'leaves'").fetchone()
    conn.execute(
        sql.replace("UNIQUE", "").replace("CREATE TABLE leaves", "CREATE TABLE leaves_copy", 1)
    )
    conn.execute("INSERT INTO leaves_copy SELECT * FROM leaves")
    conn.execute("DROP TABLE leaves")
    conn.execute("ALTER TABLE leaves_copy RENAME TO leaves")


# leaves


def m_leaf_deleted(c: Ctx) -> str:
    i = c.leaf(0, c.size - 1)
    c.sql(("DELETE FROM leaves WHERE idx = ?", (i,)))
    return f"leaf {i} deleted"


def m_last_leaves(careful: bool, sidecar: bool) -> Callable[[Ctx], str]:
    def apply(c: Ctx) -> str:
        if not sidecar:
            c.put(sidecar=None)
        k = c.rng.randint(1, 3)
        n = c.size - k
        statements = [("DELETE FROM leaves WHERE idx >= ?", (n,))]
        if careful:  # and what points at them: refs, tree nodes, checkpoints
            statements += [
                ("DELETE FROM refs WHERE idx >= ?", (n,)),
                ("DELETE FROM nodes WHERE ((idx + 1) << level) > ?", (n,)),
                ("DELETE FROM checkpoints WHERE size > ?", (n,)),
            ]
        c.sql(*statements)
        return f"the last {k} leaves deleted"

    return apply


def m_leaf_retimed(tree: bool) -> Callable[[Ctx], str]:
    def apply(c: Ctx) -> str:
        i = c.leaf(1)
        delta = c.rng.choice([-1, 1]) * c.rng.randint(1, 30)
        statements = [("UPDATE leaves SET time = max(0, time + ?) WHERE idx = ?", (delta, i))]
        if tree:
            statements.append(("UPDATE refs SET time = max(0, time + ?) WHERE idx = ?", (delta, i)))
        c.sql(*statements, tree=tree)
        return f"leaf {i} time {delta:+d}"

    return apply


def m_leaf_entry_byte(c: Ctx) -> str:
    i = c.leaf()
    (raw,) = c.rows("SELECT entry FROM leaves WHERE idx = ?", (i,))[0]
    at = c.rng.randrange(len(raw))
    c.sql(("UPDATE leaves SET entry = ? WHERE idx = ?", (c.flip(raw, at), i)))
    return f"leaf {i} entry byte {at}"


def m_leaf_replaced(c: Ctx) -> str:
    i = c.leaf(1)
    e = c.base.grant(c.base.now - 1000)
    c.sql(
        (
            "UPDATE leaves SET entry = ?, entry_id = ?, kind = ? WHERE idx = ?",
            (e.raw, e.id, e.kind, i),
        )
    )
    return f"leaf {i} replaced by another valid grant, with its id"


def m_leaves_swapped(tree: bool) -> Callable[[Ctx], str]:
    def apply(c: Ctx) -> str:
        i, j = sorted(c.rng.sample(range(1, c.size), 2))
        a, b = (
            c.rows("SELECT entry_id, kind, time, entry FROM leaves WHERE idx = ?", (x,))[0]
            for x in (i, j)
        )
        set_leaf = "UPDATE leaves SET entry_id = ?, kind = ?, time = ?, entry = ? WHERE idx = ?"
        statements = [
            ("UPDATE leaves SET entry_id = 'swapping' WHERE idx = ?", (i,)),
            (set_leaf, (*a, j)),
            (set_leaf, (*b, i)),
        ]
        if tree:
            ra, rb = (c.rows("SELECT * FROM refs WHERE idx = ?", (x,))[0] for x in (i, j))
            set_ref = (
                "UPDATE refs SET kind = ?, time = ?, principal = ?, holder = ?, task = ?, "
                "credential = ? WHERE idx = ?"
            )
            statements += [(set_ref, (*ra[1:], j)), (set_ref, (*rb[1:], i))]
        c.sql(*statements, tree=tree)
        return f"leaves {i} and {j} swapped"

    return apply


def m_leaf_kind(c: Ctx) -> str:
    i = c.leaf()
    (kind,) = c.rows("SELECT kind FROM leaves WHERE idx = ?", (i,))[0]
    other = c.rng.choice(
        [
            k
            for k in ("genesis", "key", "policy", "grant", "delegation", "access", "revocation")
            if k != kind
        ]
    )
    c.sql(("UPDATE leaves SET kind = ? WHERE idx = ?", (other, i)))
    return f"leaf {i} kind {kind} -> {other}"


def m_leaf_duplicated(c: Ctx) -> str:
    i = c.leaf(1)
    conn = _raw(c.db)
    try:
        _drop_triggers(conn)
        conn.execute("BEGIN")
        _without_unique_entry_id(conn)
        raw, kind = conn.execute("SELECT entry, kind FROM leaves WHERE idx = ?", (i,)).fetchone()
        at = _write_behind(conn, raw, kind, i)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return f"leaf {i} written again at {at} (UNIQUE dropped, nodes and refs written)"


def m_leaf_forged(c: Ctx) -> str:
    body = {"kind": "policy", "v": 1, "log": ih.ORIGIN, "version": 999, "document": {}}
    e = sign_entry(body, [SigningKey.generate()])
    conn = _raw(c.db)
    try:
        _drop_triggers(conn)
        conn.execute("BEGIN")
        at = _write_behind(conn, e.raw, e.kind, None)
        conn.execute(
            "INSERT INTO refs (idx, kind, time) SELECT ?, 'policy', MAX(time) FROM leaves", (at,)
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return f"a policy signed by an unknown key written at {at} with its nodes"


def m_entry_id_index(c: Ctx) -> str:
    """One entry of the UNIQUE index on ``leaves.entry_id`` made to name another id (a hex
    digit changed in the index's own copy of the key): the table is untouched."""
    data = bytearray(c.db.read_bytes())
    page_size = int.from_bytes(data[16:18]) or 65536
    conn = sqlite3.connect(f"file:{c.db}?mode=ro", uri=True)
    try:
        (name,) = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'leaves'"
        ).fetchone()
        pages = [
            p
            for (p,) in conn.execute(
                "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf'", (name,)
            )
        ]
    finally:
        conn.close()
    page = c.rng.choice(pages)
    start = (page - 1) * page_size
    ncells = int.from_bytes(data[start + 3 : start + 5])
    cell = c.rng.randrange(ncells)
    at = start + int.from_bytes(data[start + 8 + 2 * cell : start + 10 + 2 * cell])
    _, at = _varint(data, at)  # payload size
    header, _ = _varint(data, at)
    text = at + header  # the entry id's 64 hex digits
    pos = text + c.rng.randrange(64)
    data[pos] = ord(c.rng.choice([ch for ch in "0123456789abcdef" if ord(ch) != data[pos]]))
    c.db.write_bytes(bytes(data))
    return f"index {name}: page {page}, cell {cell}, digit {pos - text}"


def _varint(data: bytes | bytearray, at: int) -> tuple[int, int]:
    value = 0
    for k in range(9):
        byte = data[at + k]
        if k == 8:
            return (value << 8) | byte, at + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + k + 1
    raise AssertionError("unreachable")


# tree and checkpoints


def m_node_changed(c: Ctx) -> str:
    level, idx, digest = c.rng.choice(c.rows("SELECT level, idx, hash FROM nodes"))
    c.sql(
        (
            "UPDATE nodes SET hash = ? WHERE level = ? AND idx = ?",
            (c.flip(digest, c.rng.randrange(32)), level, idx),
        )
    )
    return f"node ({level}, {idx})"


def m_node_deleted(c: Ctx) -> str:
    level, idx = c.rng.choice(c.rows("SELECT level, idx FROM nodes"))
    c.sql(("DELETE FROM nodes WHERE level = ? AND idx = ?", (level, idx)))
    return f"node ({level}, {idx}) deleted"


def m_checkpoint_deleted(latest: bool) -> Callable[[Ctx], str]:
    def apply(c: Ctx) -> str:
        sizes = sorted(s for (s,) in c.rows("SELECT size FROM checkpoints"))
        size = sizes[-1] if latest else c.rng.choice(sizes[:-1])
        c.sql(("DELETE FROM checkpoints WHERE size = ?", (size,)))
        return f"checkpoint {size} deleted"

    return apply


def m_checkpoint_signed(c: Ctx) -> str:
    sizes = [s for (s,) in c.rows("SELECT size FROM checkpoints")]
    size = c.rng.choice(sizes)
    (note,) = c.rows("SELECT note FROM checkpoints WHERE size = ?", (size,))[0]
    what = c.rng.choice(["note", "root", "size"])
    if what == "note":
        at = c.rng.randrange(len(note))
        c.sql(("UPDATE checkpoints SET note = ? WHERE size = ?", (c.flip(note, at), size)))
        return f"checkpoint {size}: note byte {at}"
    if what == "root":
        c.sql(("UPDATE checkpoints SET root = ? WHERE size = ?", (os.urandom(32), size)))
        return f"checkpoint {size}: root column"
    free = sorted(set(range(1, c.size + 5)) - set(sizes))
    new = c.rng.choice(free)
    c.sql(("UPDATE checkpoints SET size = ? WHERE size = ?", (new, size)))
    return f"checkpoint {size}: size column -> {new}"


def m_checkpoint_created(c: Ctx) -> str:
    (size,) = c.rng.choice(c.rows("SELECT size FROM checkpoints"))
    delta = c.rng.randint(1, 10**6)
    c.sql(("UPDATE checkpoints SET created = created - ? WHERE size = ?", (delta, size)))
    return f"checkpoint {size}: created -{delta}"


def m_checkpoint_forged(c: Ctx) -> str:
    sizes = {s for (s,) in c.rows("SELECT size FROM checkpoints")}
    size = c.rng.choice(sorted(set(range(1, c.size + 20)) - sizes))
    root = os.urandom(32)
    note = sign_checkpoint(Checkpoint(ih.ORIGIN, size, root), Signer.generate(ih.ORIGIN))
    c.sql(("INSERT INTO checkpoints VALUES (?, ?, ?, 0)", (size, root, note)))
    return f"a checkpoint of size {size} signed by another key inserted"


# indexes, meta, chain state


def m_refs_row(c: Ctx) -> str:
    i = c.leaf()
    row = c.rows("SELECT * FROM refs WHERE idx = ?", (i,))[0]
    columns = ["kind", "time", "principal", "holder", "task", "credential"]
    k = c.rng.randrange(len(columns))
    old = row[k + 1]
    if columns[k] == "time":
        new: Any = old + c.rng.choice([-1, 1])
    elif columns[k] == "kind":
        new = "grant" if old != "grant" else "access"
    else:
        new = (
            None if old is not None and c.rng.random() < 0.5 else f"tampered-{c.rng.randrange(99)}"
        )
    c.sql((f"UPDATE refs SET {columns[k]} = ? WHERE idx = ?", (new, i)))
    return f"refs {i}: {columns[k]} {old!r} -> {new!r}"


def m_meta_signed(c: Ctx) -> str:
    other = Signer.generate(c.rng.choice([ih.ORIGIN, "other.example/log"])).verifier
    what = c.rng.choice(["log_key", "origin"])
    value = other.vkey if what == "log_key" else "other.example/log"
    c.sql(("UPDATE meta SET value = ? WHERE key = ?", (value, what)))
    return f"meta {what} replaced"


def m_meta_service(c: Ctx) -> str:
    c.sql(("UPDATE meta SET value = ? WHERE key = 'dpop_nonce_secret'", (secrets.token_hex(32),)))
    return "meta dpop_nonce_secret replaced"


def _edit_row(
    c: Ctx,
    table: str,
    key: Sequence[str],
    edits: dict[str, Callable[[Any], Any]],
    insert: tuple | None,
) -> str:
    rows = c.rows(f"SELECT * FROM {table}")
    cols = [r[1] for r in c.rows(f"PRAGMA table_info({table})")]
    choices = [*(f"set {col}" for col in edits), "delete"]
    if insert is not None:
        choices.append("insert")
    if not rows:
        choices = ["insert"] if insert is not None else []
    if not choices:
        raise RuntimeError(f"{table} is empty and nothing can be inserted")
    what = c.rng.choice(choices)
    if what == "insert":
        c.sql((f"INSERT INTO {table} VALUES ({', '.join('?' * len(insert))})", insert))  # type: ignore[arg-type]
        return f"{table}: a row inserted"
    row = dict(zip(cols, c.rng.choice(rows), strict=True))
    where = " AND ".join(f"{k} = ?" for k in key)
    params = tuple(row[k] for k in key)
    if what == "delete":
        c.sql((f"DELETE FROM {table} WHERE {where}", params))
        return f"{table}: row {params} deleted"
    col = what.removeprefix("set ")
    new = edits[col](row[col])
    c.sql((f"UPDATE {table} SET {col} = ? WHERE {where}", (new, *params)))
    return f"{table}: {col} {row[col]!r} -> {new!r}"


def _toggle(v: Any) -> Any:
    return 7 if v is None else None


def m_credentials(c: Ctx) -> str:
    other = c.rows("SELECT id FROM credentials")[0][0]
    return _edit_row(
        c,
        "credentials",
        ["id"],
        {
            "uses": lambda v: max(0, v - 1) if v else 1,
            "children": lambda v: max(0, v - 1) if v else 1,
            "revoked": _toggle,
            "parent": lambda v: None if v is not None else other,
            "holder": lambda v: "x" * 43,
            "rate_window": lambda v: None if v is not None else 30,
        },
        None,
    )


def m_recent_uses(c: Ctx) -> str:
    (cred,) = c.rows("SELECT id FROM credentials WHERE rate_window IS NOT NULL LIMIT 1")[0]
    return _edit_row(
        c,
        "recent_uses",
        ["credential", "time", "seq"],
        {"time": lambda v: v - 1, "seq": lambda v: v + 1},
        (cred, c.base.now - 5, 99),
    )


def m_nonces(c: Ctx) -> str:
    (cred,) = c.rows("SELECT id FROM credentials LIMIT 1")[0]
    return _edit_row(
        c,
        "nonces",
        ["credential", "nonce"],
        {"allowed": lambda v: 1 - v},
        (cred, ih.nonce(), 1),
    )


def m_revoked_holders(c: Ctx) -> str:
    return _edit_row(
        c,
        "revoked_holders",
        ["kid"],
        {"idx": lambda v: v + 1},
        (SigningKey.generate().public.kid, c.size - 1),
    )


def m_chain_keys(c: Ctx) -> str:
    forged = SigningKey.generate().public
    return _edit_row(
        c,
        "chain_keys",
        ["kid"],
        {
            "retired": _toggle,
            "roles": lambda v: '["operator"]' if "operator" not in v else '["decision"]',
        },
        (forged.kid, forged.raw, '["operator"]', None, 1, None),
    )


def m_chain_state(c: Ctx) -> str:
    col = c.rng.choice(["size", "time", "policy_version", "policy_idx"])
    (old,) = c.rows(f"SELECT {col} FROM chain_state")[0]
    new = _toggle(old) if col == "policy_idx" else old + c.rng.choice([-1, 1])
    c.sql((f"UPDATE chain_state SET {col} = ?", (new,)))
    return f"chain_state {col} {old!r} -> {new!r}"


# the service's bookkeeping, the schema


def m_api_token(c: Ctx) -> str:
    """An operator token nobody issued: it authenticates (checked here), and nothing in
    the log says it should not."""
    token_id = "".join(c.rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(12))
    secret = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    c.sql(
        (
            "INSERT INTO api_tokens (id, name, role, hash, created) "
            "VALUES (?, ?, 'operator', ?, 0)",
            (token_id, "intruder", hashlib.sha256(secret.encode()).digest()),
        )
    )
    from lineage.ledger.store import SQLiteStore

    store = SQLiteStore(c.db)
    try:
        token = TokenStore(store).authenticate(f"lin_{token_id}_{secret}")
    finally:
        store.close()
    if token is None or token.role != "operator":
        raise RuntimeError("the inserted token does not authenticate")
    return "an operator token inserted (it authenticates)"


def m_dpop_jti(c: Ctx) -> str:
    c.sql(("DELETE FROM dpop_jti", ()))
    return "the DPoP replay cache emptied"


def m_triggers(c: Ctx) -> str:
    c.sql()
    return "every append-only trigger dropped"


# the files


def m_truncated(c: Ctx) -> str:
    n = c.rng.randrange(len(c.base.main.db))
    os.truncate(c.db, n)
    return f"truncated to {n} bytes"


def m_rollback(sidecar: str) -> Callable[[Ctx], str]:
    """An older copy put back; ``sidecar``: "kept" (the current one), "none", "old" (the
    one the copy had: db and sidecar rolled back together)."""

    def apply(c: Ctx) -> str:
        old = c.rng.choice(c.base.older)
        side = {"kept": c.base.main.sidecar, "none": None, "old": old.sidecar}[sidecar]
        old.put(c.folder, side)
        c.outside = c.base.main.sidecar
        return f"the copy at size {old.size} of {c.size}"

    return apply


def m_wal(how: str, where: str = "") -> Callable[[Ctx], str]:
    """The later image's -wal deleted, truncated or a byte changed; ``where``: "covered"
    (before the end of the commit the sidecar names) or "newer" (after it)."""

    def apply(c: Ctx) -> str:
        c.put(c.base.later)
        wal = c.db.with_name(DB + "-wal")
        n = wal.stat().st_size
        if how == "deleted":
            wal.unlink()
            return f"the -wal ({n} bytes, {c.base.later.size - c.size} appends) deleted"
        at = (
            c.rng.randrange(c.base.covered)
            if where == "covered"
            else c.rng.randrange(c.base.covered, n)
        )
        if how == "truncated":
            os.truncate(wal, at)
            return f"the -wal truncated to {at} of {n} bytes"
        wal.write_bytes(c.flip(wal.read_bytes(), at))
        return f"-wal byte {at} of {n}"

    return apply


@dataclass(frozen=True)
class MClass:
    name: str
    group: str
    apply: Callable[[Ctx], str]
    expect: str = "detected"  # "out of reach" (with why), or "clean" (the control)
    why: str = ""  # for "out of reach": why no check can see it
    when: Callable[[Base], bool] = lambda base: True  # whether the base has instances of it


def m_none(c: Ctx) -> str:
    image = c.rng.choice([c.base.main, c.base.later, *c.base.older])
    c.put(image)
    return f"the copy at size {image.size}, untouched, with its own sidecar"


def mutation_classes() -> list[MClass]:
    unsigned = (
        "unsigned bookkeeping: no signed entry or checkpoint covers it, so nothing in the "
        "file can contradict it"
    )
    newer = (
        "the sidecar trails the database by up to a second (SIDECAR_EVERY): appends newer "
        "than it are covered by checkpoints in the database only, which the cut removes with "
        "them; the receipts their clients hold (checked by the SIGKILL part) show the loss"
    )
    return [
        MClass("no mutation (control)", "control", m_none, "clean"),
        MClass("leaf deleted (middle)", "leaves", m_leaf_deleted),
        MClass("last leaves deleted, sidecar kept", "leaves", m_last_leaves(False, True)),
        MClass("last leaves deleted, no sidecar", "leaves", m_last_leaves(False, False)),
        MClass(
            "last leaves, nodes, refs, checkpoints deleted, sidecar kept",
            "leaves",
            m_last_leaves(True, True),
        ),
        MClass(
            "last leaves, nodes, refs, checkpoints deleted, no sidecar",
            "leaves",
            m_last_leaves(True, False),
        ),
        MClass("leaf re-timed", "leaves", m_leaf_retimed(False)),
        MClass("leaf re-timed, tree recomputed", "leaves", m_leaf_retimed(True)),
        MClass("leaf entry byte changed", "leaves", m_leaf_entry_byte),
        MClass("leaf replaced by another valid entry and its id", "leaves", m_leaf_replaced),
        MClass("two leaves swapped", "leaves", m_leaves_swapped(False)),
        MClass("two leaves swapped, tree and refs recomputed", "leaves", m_leaves_swapped(True)),
        MClass("leaves.kind changed", "leaves", m_leaf_kind),
        MClass("leaf duplicated (same entry id twice)", "leaves", m_leaf_duplicated),
        MClass("leaf forged, written behind with its nodes", "leaves", m_leaf_forged),
        MClass("entry-id index entry changed", "leaves", m_entry_id_index),
        MClass("tree node changed", "tree", m_node_changed),
        MClass("tree node deleted", "tree", m_node_deleted),
        MClass("latest checkpoint row deleted", "checkpoints", m_checkpoint_deleted(True)),
        MClass(
            "older checkpoint row deleted",
            "checkpoints",
            m_checkpoint_deleted(False),
            "out of reach",
            "the history of checkpoints is not chained: each one verifies alone, so a "
            "missing one is not a contradiction (anyone who kept it can still check it)",
        ),
        MClass("checkpoint note, root or size changed", "checkpoints", m_checkpoint_signed),
        MClass("checkpoint signed by another key inserted", "checkpoints", m_checkpoint_forged),
        MClass(
            "checkpoints.created changed",
            "checkpoints",
            m_checkpoint_created,
            "out of reach",
            unsigned,
        ),
        MClass("refs row changed", "indexes", m_refs_row),
        MClass("meta log_key or origin changed", "meta", m_meta_signed),
        MClass("meta dpop_nonce_secret changed", "meta", m_meta_service, "out of reach", unsigned),
        MClass("credentials row changed", "chain state", m_credentials),
        MClass("recent_uses row changed", "chain state", m_recent_uses),
        MClass("nonces row changed", "chain state", m_nonces),
        MClass("revoked_holders row changed", "chain state", m_revoked_holders),
        MClass("chain_keys row changed", "chain state", m_chain_keys),
        MClass("chain_state changed", "chain state", m_chain_state),
        MClass("API token row added", "service", m_api_token, "out of reach", unsigned),
        MClass("DPoP replay cache emptied", "service", m_dpop_jti, "out of reach", unsigned),
        MClass(
            "append-only triggers dropped",
            "schema",
            m_triggers,
            "out of reach",
            "no data changed; the triggers guard against the ledger's own mistakes, and "
            "whoever can drop them can write any row (which the audit then checks)",
        ),
        MClass("file truncated", "files", m_truncated),
        MClass("older copy put back, sidecar kept", "files", m_rollback("kept")),
        MClass("older copy put back, no sidecar", "files", m_rollback("none")),
        MClass(
            "older copy and its sidecar put back together",
            "files",
            m_rollback("old"),
            "out of reach",
            "a consistent older state: only a checkpoint kept outside the machine (a monitor, "
            "an auditor's `lineage-verify --since`, a client's receipt) shows it",
        ),
        MClass("-wal deleted (last appends in it)", "files", m_wal("deleted")),
        MClass(
            "-wal truncated, appends the sidecar covers lost",
            "files",
            m_wal("truncated", "covered"),
        ),
        MClass(
            "-wal byte changed, appends the sidecar covers lost", "files", m_wal("byte", "covered")
        ),
        MClass(
            "-wal truncated, only appends newer than the sidecar lost",
            "files",
            m_wal("truncated", "newer"),
            "out of reach",
            newer,
            lambda base: base.covered < len(base.later.wal or b""),
        ),
        MClass(
            "-wal byte changed, only appends newer than the sidecar lost",
            "files",
            m_wal("byte", "newer"),
            "out of reach",
            newer,
            lambda base: base.covered < len(base.later.wal or b""),
        ),
    ]


# -- byte flips --------------------------------------------------------------------------------


@dataclass
class Regions:
    """Byte ranges of the main image by what they hold; ``used`` excludes a b-tree page's
    unallocated space and the bodies of its freeblocks."""

    size: int
    ranges: dict[str, list[tuple[int, int]]]  # region -> [start, end) ranges
    owner: dict[int, str]  # page number -> b-tree or "freelist"
    page_size: int

    def where(self, at: int) -> str:
        page = at // self.page_size + 1
        if at < 100:
            return "file header"
        name = self.owner.get(page, "?")
        if name == "freelist":
            return "free page"
        inside = any(a <= at < b for a, b in self.ranges.get(name, []))
        return name if inside else f"{name} (unused space)"


def regions(db: Path) -> Regions:
    data = db.read_bytes()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        stat = conn.execute("SELECT name, pageno, pagetype FROM dbstat").fetchall()
    finally:
        conn.close()
    owner: dict[int, str] = {}
    ranges: dict[str, list[tuple[int, int]]] = {"file header": [(0, 100)]}
    for name, page, kind in stat:
        name = "sqlite_schema" if name in ("sqlite_master", "sqlite_schema") else name
        owner[page] = name
        start = (page - 1) * page_size
        body = data[start : start + page_size]
        used = [(0, page_size)] if kind == "overflow" else _used(body, page == 1)
        ranges.setdefault(name, []).extend((start + a, start + b) for a, b in used if b > a)
    free = [p for p in range(1, len(data) // page_size + 1) if p not in owner]
    for p in free:
        owner[p] = "freelist"
    ranges["freelist"] = [((p - 1) * page_size, p * page_size) for p in free]
    return Regions(len(data), ranges, owner, page_size)


def _used(page: bytes, first: bool) -> list[tuple[int, int]]:
    """The bytes of a b-tree page that hold something: its header, cell pointers, cells."""
    h = 100 if first else 0
    kind = page[h]
    if kind not in (2, 5, 10, 13):
        return [(h, len(page))]
    header = 12 if kind in (2, 5) else 8
    cells = int.from_bytes(page[h + 3 : h + 5])
    content = int.from_bytes(page[h + 5 : h + 7]) or 65536
    free = [(h + header + 2 * cells, content)]
    block, seen = int.from_bytes(page[h + 1 : h + 3]), 0
    while block and seen < 1000:
        size = int.from_bytes(page[block + 2 : block + 4])
        free.append((block + 4, block + size))
        block, seen = int.from_bytes(page[block : block + 2]), seen + 1
    out, at = [], h
    for a, b in sorted(free):
        if a > at:
            out.append((at, a))
        at = max(at, b)
    if at < len(page):
        out.append((at, len(page)))
    return out


def _pick(rng: random.Random, ranges: list[tuple[int, int]]) -> int:
    total = sum(b - a for a, b in ranges)
    k = rng.randrange(total)
    for a, b in ranges:
        if k < b - a:
            return a + k
        k -= b - a
    raise AssertionError("unreachable")


# -- the campaign ------------------------------------------------------------------------------


@dataclass
class ClassResult:
    name: str
    group: str
    expect: str
    why: str = ""
    instances: int = 0
    detected: int = 0
    by_audit: int = 0
    at_open: int = 0
    append_refused: int = 0
    no_effect: int = 0  # byte flips: nothing SQLite reads changed
    ignored: dict[str, int] = field(default_factory=dict)  # byte flips: by IGNORED reason
    checks: dict[str, int] = field(default_factory=dict)  # the audit's failing check
    undetected: list[str] = field(default_factory=list)  # a few, for the report
    examples: list[str] = field(default_factory=list)  # a few detected, and how
    crashes: list[str] = field(default_factory=list)  # not the ledger's own errors: findings
    seconds: float = 0.0

    @property
    def effective(self) -> int:
        return self.instances - self.no_effect

    @property
    def rate(self) -> float | None:
        return self.detected / self.effective if self.effective else None

    @property
    def missed(self) -> int:
        """Undetected instances that changed something signed or derived from the log."""
        return self.effective - self.detected - sum(self.ignored.values())

    def add(self, what: str, v: Verdict) -> None:
        self.instances += 1
        self.crashes += v.crashes[:2]
        if v.detected:
            self.detected += 1
            self.by_audit += v.audit is not None
            self.at_open += v.opened is not None
            if v.audit is not None:
                check = v.audit.split(":", 1)[0]
                self.checks[check] = self.checks.get(check, 0) + 1
            if len(self.examples) < 3:
                self.examples.append(f"{what}: {v.audit or v.opened}")
        elif v.effect == "none":
            self.no_effect += 1
        else:
            if v.effect in IGNORED:
                self.ignored[v.effect] = self.ignored.get(v.effect, 0) + 1
            if len(self.undetected) < 5:
                self.undetected.append(what)
        self.append_refused += v.append is not None

    def problems(self) -> list[str]:
        out = []
        if self.expect == "clean" and self.detected:
            out.append(f"{self.name}: untouched copies refused: {self.examples}")
        if self.expect == "detected" and self.missed:
            out.append(
                f"{self.name}: {self.missed} of {self.effective} not detected, e.g. "
                + "; ".join(self.undetected)
            )
        return out


def run_mutations(
    base: Base,
    *,
    instances: int,
    flips: int,
    anywhere: int,
    seed: int,
    only: Callable[[str], bool] = lambda name: True,
    say: Callable[[str], None] = lambda line: None,
) -> list[ClassResult]:
    """Every mutation class ``instances`` times, then byte flips: ``flips`` in each region
    (a b-tree's used bytes, the file header, the free pages) and ``anywhere`` uniformly
    over the file."""
    rng = random.Random(seed)
    ctx = Ctx(base.work / "instance", base, rng)
    quiet = logging.getLogger("lineage")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # a damaged ledger logs errors: expected here
    results: list[ClassResult] = []
    try:
        for cls in mutation_classes():
            if not only(cls.name) or not cls.when(base):
                continue
            res = ClassResult(cls.name, cls.group, cls.expect, cls.why)
            t0 = time.monotonic()
            for _ in range(instances):
                ctx.put()
                what = cls.apply(ctx)
                res.add(what, detect(ctx.db, base, ctx.outside))
            res.seconds = time.monotonic() - t0
            say(_row(res))
            results.append(res)
        reference = base.work / "reference"
        main = base.main.put(reference)
        where = regions(main)
        before = content(main)
        plan = [("flip: anywhere in the file", [(0, where.size)], anywhere)]
        for name in sorted(where.ranges, key=lambda n: (n != "file header", n)):
            if where.ranges[name]:
                plan.append((f"flip: {name}", where.ranges[name], flips))
        for name, ranges, n in plan:
            if not only(name) or n == 0:
                continue
            res = ClassResult(name, "byte flips", "detected")
            t0 = time.monotonic()
            for _ in range(n):
                at = _pick(rng, ranges)
                ctx.put()
                ctx.db.write_bytes(ctx.flip(base.main.db, at))
                change = effect(before, content(ctx.db))
                v = detect(ctx.db, base, ctx.outside)
                v.effect = change
                res.add(f"byte {at} ({where.where(at)})", v)
            res.seconds = time.monotonic() - t0
            say(_row(res))
            results.append(res)
    finally:
        quiet.setLevel(level)
    return results


def _row(r: ClassResult) -> str:
    rate = "n/a" if r.rate is None else f"{100 * r.rate:.0f}%"
    extra = []
    if r.no_effect:
        extra.append(f"{r.no_effect} no effect")
    extra += [f"{n} {why} only" for why, n in sorted(r.ignored.items())]
    if r.expect == "out of reach" and r.missed:
        extra.append(f"{r.missed} not detected (out of reach)")
    elif r.expect == "detected" and r.missed:
        extra.append(f"{r.missed} MISSED")
    elif r.expect == "clean":
        rate = "-"
        extra.append("control: must pass" + (" (REFUSED)" if r.detected else ""))
    return (
        f"{r.name[:58]:58} {r.instances:5} {r.detected:5} {rate:>5}  audit {r.by_audit:4} "
        f"open {r.at_open:4} append {r.append_refused:4}  {', '.join(extra)}"
    )


def mutation_table(results: Sequence[ClassResult]) -> str:
    head = (
        f"{'class':58} {'inst':>5} {'det':>5} {'rate':>5}  (detected by the audit, "
        "refused at open; first append refused)"
    )
    return "\n".join([head, *(_row(r) for r in results)])


# -- full disk -----------------------------------------------------------------------------------


@dataclass
class DiskReport:
    skipped: str | None = None
    mount_mb: int = 0
    entry_kb: int = 0
    acked: int = 0
    status: dict[str, int] = field(default_factory=dict)  # "<status> <error>" -> count
    not_503: list[str] = field(default_factory=list)  # failures that were not a 503
    health_answered: int = 0
    health_failed: int = 0
    health_status: dict[str, int] = field(default_factory=dict)
    full_at: int | None = None  # leaves when the first append was refused
    while_full: dict[str, str] = field(default_factory=dict)  # request -> "<status> <error>"
    thread_alive_full: bool | None = None
    thread_alive_after: bool | None = None
    recovered_seconds: float | None = None  # from freeing space to an acknowledged append
    lost: list[str] = field(default_factory=list)
    receipts_checked: int = 0
    receipt_problems: list[str] = field(default_factory=list)
    audit: dict[str, Any] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def problems(self) -> list[str]:
        out = [f"not a 503: {x}" for x in self.not_503] + self.lost + self.receipt_problems
        out += self.other
        for what, got in self.while_full.items():
            if not got.startswith("503"):
                out.append(f"while the disk was full, {what} answered {got}")
        if self.skipped is None:
            if self.health_failed:
                out.append(f"/healthz did not answer {self.health_failed} times")
            if not self.thread_alive_full or not self.thread_alive_after:
                out.append("the checkpoint thread died")
            if self.recovered_seconds is None:
                out.append("no append was acknowledged after space was freed")
            if not self.audit.get("ok"):
                out.append(f"lineage verify --db failed: {self.audit}")
        return out


def _mount_tmpfs(where: Path, size_mb: int) -> str | None:
    """Mount a tmpfs of ``size_mb`` MiB at ``where``; the reason it could not be, or None."""
    if os.geteuid() != 0:
        return "not root: mounting a tmpfs needs CAP_SYS_ADMIN"
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"mount could not run: {exc}"
    if done.returncode != 0:
        return f"mount -t tmpfs refused: {done.stderr.strip() or done.returncode}"
    return None


def _umount(where: Path) -> None:
    done = subprocess.run(["umount", str(where)], capture_output=True, timeout=30)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def _fill(path: Path) -> int:
    """Write ``path`` until the file system is full; the bytes written."""
    n, chunk = 0, b"\0" * 4096
    try:
        with path.open("wb") as f:
            while True:
                f.write(chunk)
                f.flush()
                n += len(chunk)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    return n


@contextlib.contextmanager
def serving(
    db: Path, keys: Path, settings: Settings, clock: Callable[[], float]
) -> Iterator[tuple[str, Log]]:
    """``lineage serve`` in this process: an existing ledger opened, uvicorn on a free
    port in a thread (as tests/api_server.py does for a fresh one), until the block ends."""
    import uvicorn

    from lineage.api.main import create_app

    log = open_ledger(db, keys, clock=clock, settings=settings)
    log.refuse_untrusted()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(log, settings, checkpoints=True),
            host="127.0.0.1",
            port=0,
            log_level="critical",
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, name="uvicorn-faults", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(15)
            log.close()
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", log
    finally:
        server.should_exit = True
        thread.join(15)
        if thread.is_alive():  # else the app's lifespan closed the log
            log.close()


class _Health(threading.Thread):
    """Asks ``/healthz`` every 50 ms, counting answers and statuses."""

    def __init__(self, base: str, report: DiskReport):
        super().__init__(name="faults-health", daemon=True)
        self.base, self.report, self.stop = base, report, threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self.stop.wait(0.05):
                try:
                    r = http.get(self.base + "/healthz")
                    status = r.json().get("status", "?") if r.status_code == 200 else r.status_code
                    self.report.health_answered += 1
                    key = str(status)
                    self.report.health_status[key] = self.report.health_status.get(key, 0) + 1
                except (httpx.HTTPError, ValueError):
                    self.report.health_failed += 1


def _answer(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        body = {}
    return f"{r.status_code} {body.get('error', '') if isinstance(body, dict) else ''}".strip()


def full_disk(
    work: Path, *, mount_mb: int = 4, ballast_kb: int = 768, entry_kb: int = 16, limit: int = 2000
) -> DiskReport:
    """A ledger on a tmpfs of ``mount_mb`` MiB, served, appended to until the disk is full."""
    t0 = time.monotonic()
    report = DiskReport(mount_mb=mount_mb, entry_kb=entry_kb)
    _empty(work)
    disk = work / "disk"
    reason = _mount_tmpfs(disk, mount_mb)
    if reason is not None:
        report.skipped = reason
        return report
    try:
        _full_disk(work, disk, report, ballast_kb, entry_kb, limit)
    finally:
        gc.collect()
        _umount(disk)
        report.seconds = time.monotonic() - t0
    return report


def _full_disk(
    work: Path, disk: Path, report: DiskReport, ballast_kb: int, entry_kb: int, limit: int
) -> None:
    db, keys = disk / DB, work / "keys"  # the keys on the ordinary disk
    settings = Settings(checkpoint_interval=0.1)
    clock = api_server.OffsetClock()
    log = init_ledger(db, keys, origin=api_server.ORIGIN, clock=clock, settings=settings)
    alice = api_server.key("alice@corp")
    log.append(bind_principal(api_server.ORIGIN, log.keys.operator, "alice@corp", alice.public))
    tokens = TokenStore(log.store)
    secret = {role: tokens.create(role, f"{role}-1")[1] for role in ROLES}
    vkey = log.log_key
    log.close()
    ballast = disk / "ballast"
    ballast.write_bytes(b"\1" * ballast_kb * 1024)
    acks: list[tuple[str, int, dict | None]] = []
    holders: list[tuple[str, SigningKey]] = []

    def post(http: httpx.Client, entry: Entry) -> httpx.Response:
        return http.post(
            "/v1/entries", content=entry.raw, headers={"Content-Type": "application/json"}
        )

    def grant(srv: api_server.Server, pad: int) -> tuple[Entry, SigningKey]:
        holder = SigningKey.generate()
        senders = sorted(
            {"a@vendor.example", *(os.urandom(30).hex() for _ in range(min(250, pad // 64)))}
        )
        body = grant_body(
            api_server.ORIGIN,
            "alice@corp",
            holder.public,
            task={"id": "fill", "description": "fills the disk"},
            scope=api_server.read_scope(constraints={"sender": {"in": senders}}),
            expires_at=srv.now + 900,
            max_depth=1,
        )
        return sign_entry(body, [alice]), holder

    def record(r: httpx.Response, what: str) -> bool:
        got = _answer(r)
        report.status[got] = report.status.get(got, 0) + 1
        if r.status_code >= 300 and r.status_code != 503:
            report.not_503.append(f"{what}: {got} {r.text[:200]}")
        return 200 <= r.status_code < 300

    with serving(db, keys, settings, clock) as (base, live):
        srv = api_server.Server(
            base,
            live,
            clock,
            secret["operator"],
            secret["auditor"],
            secret["enforcement"],
            alice=alice,
        )
        health = _Health(base, report)
        health.start()
        try:
            with httpx.Client(base_url=base, timeout=30) as http:
                refused = 0
                for _ in range(limit):  # large entries until the disk refuses three in a row
                    e, holder = grant(srv, entry_kb * 1024)
                    r = post(http, e)
                    if record(r, "append"):
                        body = r.json()
                        acks.append((body["id"], body["index"], body.get("receipt")))
                        holders.append((body["id"], holder))
                        refused = 0
                    else:
                        report.full_at = report.full_at or live.size
                        refused += 1
                        if refused == 3:
                            break
                if report.full_at is None:
                    report.other.append(f"the disk never filled in {limit} appends")
                    return
                _fill(disk / "filler")  # the last free blocks too: nothing more fits
                e, holder = grant(srv, 0)
                r = post(http, e)
                record(r, "small append")
                report.while_full["a small append"] = _answer(r)
                e, holder = grant(srv, 0)
                r = srv.exchange(e, holder)
                record(r, "token exchange")
                report.while_full["POST /oauth/token"] = _answer(r)
                cred, holder = holders[-1]
                r = srv.access(srv.invoke(holder, cred, api_server.request()))
                record(r, "access")
                report.while_full["POST /v1/access"] = _answer(r)
                r = http.get("/v1/log/checkpoint")
                if r.status_code != 200:
                    report.other.append(f"while full, GET /v1/log/checkpoint: {_answer(r)}")
                time.sleep(1.0)  # the checkpoint thread runs (and fails, if it has work)
                report.thread_alive_full = live.checkpointing
                (disk / "filler").unlink(missing_ok=True)
                ballast.unlink()
                freed = time.monotonic()
                while time.monotonic() - freed < 15:
                    e, holder = grant(srv, 0)
                    r = post(http, e)
                    if record(r, "append after freeing"):
                        body = r.json()
                        acks.append((body["id"], body["index"], body.get("receipt")))
                        report.recovered_seconds = time.monotonic() - freed
                        break
                    time.sleep(0.2)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    h = http.get("/healthz").json()
                    cp = open_checkpoint(
                        http.get("/v1/log/checkpoint").content, vkey, api_server.ORIGIN
                    )
                    if h["status"] == "ok" and cp.checkpoint.size == h["tree_size"]:
                        break
                    time.sleep(0.1)
                else:
                    report.other.append(
                        f"after freeing space: /healthz {h}, checkpoint {cp.checkpoint.size}"
                    )
                report.thread_alive_after = live.checkpointing
        finally:
            health.stop.set()
            health.join(10)
    report.acked = len(acks)
    checker = ReceiptCheck(vkey, api_server.ORIGIN, secret["operator"])
    for entry_id, index, receipt in acks:
        if receipt is not None:
            checker.keep(entry_id, index, receipt)
    with (
        serving(db, keys, settings, clock) as (base, _),
        httpx.Client(base_url=base, timeout=30) as http,
    ):
        checker.check(http, {i: eid for eid, i, _ in acks})  # after the restart
    report.lost += checker.lost
    report.receipt_problems += checker.problems
    report.receipts_checked = len(checker.kept)
    report.audit = _verify_db(db, vkey.vkey, work)


def _verify_db(db: Path, vkey: str, cwd: Path) -> dict[str, Any]:
    done = subprocess.run(
        [LINEAGE, "verify", "--db", db, "--log-key", vkey, "--json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ok": False, "error": done.stderr.strip()[-500:]}


# -- receipts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kept:
    """A receipt as received, verified then (its checkpoint under the pinned key, its
    inclusion proof against that checkpoint's root)."""

    entry_id: str
    index: int
    leaf: Leaf
    size: int  # its checkpoint's
    root: bytes


class ReceiptCheck:
    """Receipts kept as they arrive; checked against the log's current checkpoint."""

    def __init__(self, vkey: Verifier, origin: str, operator: str, sample: int | None = None):
        self.vkey, self.origin, self.operator, self.sample = vkey, origin, operator, sample
        self.kept: list[Kept] = []
        self.problems: list[str] = []
        self.lost: list[str] = []
        self.proofs = 0  # receipts checked with the server's own proofs
        self.checks = 0  # receipts checked against the leaves, summed over every check
        self._lock = threading.Lock()
        self._rng = random.Random(0)

    def keep(self, entry_id: str, index: int, receipt: Any) -> None:
        try:
            cp = open_checkpoint(receipt["checkpoint"].encode(), self.vkey, self.origin).checkpoint
            leaf = leaf_from_json(receipt["leaf"])
            path = [base64.b64decode(h) for h in receipt["inclusion"]]
            if receipt["index"] != index or leaf.entry.id != entry_id:
                raise ValueError(f"it is for {leaf.entry.id[:16]} at {receipt['index']}")
            verify_inclusion(index, cp.size, leaf.hash, path, cp.root_hash)
        except (LineageError, KeyError, TypeError, ValueError, AttributeError) as exc:
            with self._lock:
                self.problems.append(
                    f"the receipt of {entry_id[:16]} at {index} does not verify: {exc}"
                )
            return
        with self._lock:
            self.kept.append(Kept(entry_id, index, leaf, cp.size, cp.root_hash))

    def check(self, http: httpx.Client, acked: dict[int, str], when: str = "") -> None:
        """Every acknowledged index holds its entry; every receipt's leaf is the one
        served, and the current checkpoint extends the receipt's."""
        with self._lock:
            kept = list(self.kept)
        need = max([*acked, *(k.index for k in kept), 0]) + 1
        deadline = time.monotonic() + 20
        while True:  # the current checkpoint, once it covers every acknowledged entry
            r = http.get("/v1/log/checkpoint")
            r.raise_for_status()
            cp = open_checkpoint(r.content, self.vkey, self.origin).checkpoint
            if cp.size >= need:
                break
            if time.monotonic() > deadline:
                self.lost.append(
                    f"{when}the checkpoint covers {cp.size} leaves, {need} were acknowledged"
                )
                return
            time.sleep(0.05)
        # the leaves as served, as canonical bytes (an entry's id is the SHA-256 of them)
        served: list[tuple[bytes, int]] = []
        auth = {"Authorization": f"Bearer {self.operator}"}
        while len(served) < cp.size:
            r = http.get(
                "/v1/log/entries", params={"start": len(served), "end": cp.size}, headers=auth
            )
            r.raise_for_status()
            served += [(canonical(row["entry"]), row["time"]) for row in r.json()["entries"]]
        tree = MemoryTree(_stored_leaf_hash(raw, t) for raw, t in served)
        if tree.root(cp.size) != cp.root_hash:
            self.problems.append(f"{when}the served leaves do not give the checkpoint's root")
        for index, entry_id in acked.items():
            held = hashlib.sha256(served[index][0]).hexdigest()
            if held != entry_id:
                self.lost.append(
                    f"{when}{entry_id[:16]} acknowledged at {index}, which holds {held[:16]}"
                )
        for k in kept:
            if served[k.index] != (k.leaf.entry.raw, k.leaf.time):
                self.problems.append(f"{when}the leaf at {k.index} is not its receipt's")
            if tree.root(k.size) != k.root:
                self.problems.append(
                    f"{when}the leaves at size {k.size} do not give the receipt's root"
                )
        del served
        self.checks += len(kept)
        sample = (
            kept
            if self.sample is None or self.sample >= len(kept)
            else self._rng.sample(kept, self.sample)
        )
        for k in sample:
            try:
                if k.size < cp.size:
                    r = http.get(
                        "/v1/log/proof/consistency", params={"first": k.size, "second": cp.size}
                    )
                    r.raise_for_status()
                    path = [base64.b64decode(h) for h in r.json()["consistency"]]
                    verify_consistency(k.size, cp.size, k.root, cp.root_hash, path)
                elif k.root != cp.root_hash:
                    raise ValueError("same size, another root")
                r = http.get(
                    "/v1/log/proof/inclusion", params={"index": k.index, "tree_size": cp.size}
                )
                r.raise_for_status()
                path = [base64.b64decode(h) for h in r.json()["audit_path"]]
                verify_inclusion(k.index, cp.size, k.leaf.hash, path, cp.root_hash)
                self.proofs += 1
            except (LineageError, httpx.HTTPError, KeyError, ValueError) as exc:
                self.problems.append(f"{when}the receipt at {k.index} (size {k.size}): {exc}")


# -- restore without the sidecar ----------------------------------------------------------------


@dataclass
class RestoreReport:
    old_size: int = 0
    latest_size: int = 0
    steps: list[tuple[str, str, bool]] = field(default_factory=list)  # (step, outcome, as expected)
    seconds: float = 0.0

    def problems(self) -> list[str]:
        return [f"{step}: {outcome}" for step, outcome, ok in self.steps if not ok]


class _Serve:
    """``lineage serve`` as a subprocess on one ledger (kill_bench's ServerProcess)."""

    def __init__(self, work: Path, db: Path, keys: Path):
        env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
        env["LINEAGE_CHECKPOINT_INTERVAL"] = "0.2"
        self.proc = kb.ServerProcess(work, db, keys, env)

    def attempt(self, entry: Entry) -> tuple[str, bool]:
        """Start it. ("refused: <message>", False) if it exits; ("<status>", True) with the
        answer to appending ``entry`` if it serves (it is stopped again either way)."""
        self.proc.start()
        try:
            self.proc.wait_serving()
        except RuntimeError:
            self.proc.kill()
            tail = self.proc.tail(5).strip().splitlines()
            return "refused to start: " + (tail[-1] if tail else "?"), False
        try:
            r = httpx.post(
                self.proc.base + "/v1/entries",
                content=entry.raw,
                headers={"Content-Type": "application/json"},
                timeout=30,
            )
            return _answer(r), True
        finally:
            self.proc.stop()


def restore_without_sidecar(
    work: Path, *, first: int = 4, more: int = 4, quick: bool = False
) -> RestoreReport:
    """The database copied at ``first`` appends, ``more`` appended, the copy put back and
    the sidecar deleted: what ``lineage serve`` and ``lineage log trust`` do. ``quick``
    (CI) opens the ledger in this process, as ``lineage serve`` does, where another
    ``lineage serve`` would only repeat a refusal already seen."""
    t0 = time.monotonic()
    report = RestoreReport()
    _empty(work)
    db, keys = work / DB, work / "keys"
    log = init_ledger(db, keys, origin=ih.ORIGIN)
    alice = ih.key("alice@corp")
    log.append(bind_principal(ih.ORIGIN, log.keys.operator, "alice@corp", alice.public))
    for _ in range(first):
        log.append(_grant(alice, int(time.time())))
    log.close()
    gc.collect()
    old = db.read_bytes()
    report.old_size = _leaves(db)
    log = open_ledger(db, keys)
    for _ in range(more):
        log.append(_grant(alice, int(time.time())))
    log.close()
    gc.collect()
    newest = db.read_bytes()
    latest = work / "latest-checkpoint.txt"  # what a monitor outside the machine kept
    latest.write_bytes(sidecar_path(db).read_bytes())
    report.latest_size = _leaves(db)
    serve = _Serve(work, db, keys)

    def put(data: bytes, keep_sidecar: bool) -> None:
        for p in [db.with_name(DB + s) for s in ("-wal", "-shm")]:
            p.unlink(missing_ok=True)
        if not keep_sidecar:
            sidecar_path(db).unlink(missing_ok=True)
        db.write_bytes(data)

    def step(name: str, outcome: str, ok: bool) -> None:
        report.steps.append((name, outcome, ok))

    def trust() -> tuple[str, bool]:
        done = subprocess.run(
            [LINEAGE, "log", "trust", latest, "--db", db, "--keys", keys],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return (done.stdout + done.stderr).strip().splitlines()[-1][:200], done.returncode == 0

    def serve_refuses(what: str) -> None:
        """``lineage serve`` (or, ``quick``, the same open in this process) refuses."""
        if quick:
            step(*_in_process(what, db, keys, alice))
            return
        outcome, served = serve.attempt(_grant(alice, int(time.time())))
        step(f"{what}: lineage serve", outcome, not served or outcome.startswith("503"))

    put(old, keep_sidecar=False)
    step(*_in_process("the old copy, no sidecar", db, keys, alice))
    outcome, served = serve.attempt(_grant(alice, int(time.time())))
    step("the old copy, no sidecar: lineage serve", outcome, not served or outcome[:3] == "503")
    outcome, ok = trust()
    step("the old copy: lineage log trust LATEST", outcome, not ok and "rolled back" in outcome)
    serve_refuses("the old copy, after the refused trust")
    put(newest, keep_sidecar=False)
    serve_refuses("the latest copy, no sidecar")
    outcome, ok = trust()
    step("the latest copy: lineage log trust LATEST", outcome, ok)
    outcome, served = serve.attempt(_grant(alice, int(time.time())))
    step("the latest copy, trusted: lineage serve, one append", outcome, outcome[:3] == "201")
    put(old, keep_sidecar=True)
    outcome, served = serve.attempt(_grant(alice, int(time.time())))
    step(
        "the old copy beside the sidecar trust wrote: lineage serve",
        outcome,
        not served and "rolled back" in outcome,
    )
    report.seconds = time.monotonic() - t0
    return report


def _in_process(what: str, db: Path, keys: Path, alice: SigningKey) -> tuple[str, str, bool]:
    """Open the ledger as ``lineage serve`` does and append: a RollbackError is expected."""
    log = open_ledger(db, keys)
    try:
        log.append(_grant(alice, int(time.time())))
        return f"{what}: open_ledger, Log.append", "accepted", False
    except LineageError as exc:
        outcome = f"{type(exc).__name__}: {exc}"[:200]
        return f"{what}: open_ledger, Log.append", outcome, type(exc).__name__ == "RollbackError"
    finally:
        log.close()


def _leaves(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM leaves").fetchone()[0]
    finally:
        conn.close()


# -- SIGKILL with receipts -----------------------------------------------------------------------


class ReceiptClient(kb.Client):
    """kill_bench's client, keeping the receipt of each acknowledged answer that has one."""

    def _answer(self, op: str, kind: str, key: str, generation: int, r: httpx.Response):
        attempt = super()._answer(op, kind, key, generation, r)
        if attempt.outcome == "ack":
            try:
                body = r.json()
            except ValueError:
                body = {}
            receipt = None  # POST /oauth/token answers name it lineage_receipt
            if isinstance(body, dict):
                receipt = body.get("receipt", body.get("lineage_receipt"))
            with self.h._lock:
                self.h.receipt_ops[f"{op} ({'receipt' if receipt is not None else 'none'})"] += 1
            if receipt is not None:
                self.h.receipts.keep(
                    attempt.id or "", attempt.index if attempt.index is not None else -1, receipt
                )
        return attempt


class ReceiptHarness(kb.Harness):
    """kill_bench's Harness, with every acknowledged entry and receipt checked against the
    log after every restart (the checks at the end are kill_bench's own)."""

    def __init__(self, workdir: Path, *, proof_sample: int | None = None, **kw: Any):
        super().__init__(workdir, **kw)
        self.proof_sample = proof_sample
        self.restarts_checked = 0
        self.receipt_ops: Counter[str] = Counter()  # acknowledged answers by op, receipt or not

    def setup(self) -> None:
        super().setup()
        self.receipts = ReceiptCheck(self.vkey, kb.ORIGIN, self.operator, self.proof_sample)

    def check_restart(self) -> None:
        acked = {
            a.index: a.id
            for a in list(self.rec.attempts)
            if a.outcome == "ack" and a.index is not None and a.id is not None
        }
        if not acked:
            return
        self.restarts_checked += 1
        when = f"after start {self.server.generation}: "
        try:
            with httpx.Client(base_url=self.server.base, timeout=60) as http:
                self.receipts.check(http, acked, when)
        except (httpx.HTTPError, LineageError, KeyError, ValueError) as exc:
            self.receipts.problems.append(f"{when}{type(exc).__name__}: {exc}")

    def run(self, kills: int) -> Any:
        """kill_bench.Harness.run, with ``ReceiptClient`` and ``check_restart`` after each
        start that serves."""
        report = kb.Report(seed=self.seed, workdir=str(self.workdir))
        t0 = time.monotonic()
        self.setup()
        self.server.start()
        report.startup_seconds.append(self.server.wait_serving())
        self.clients = [
            ReceiptClient(self, n, self.rng.randrange(2**32)) for n in range(self.n_clients)
        ]
        self.poller = kb.Poller(self)
        for t in [*self.clients, self.poller]:
            t.start()
        try:
            serving = True
            for _ in range(kills):
                if serving:
                    time.sleep(self.rng.uniform(*self.uptime))
                else:
                    time.sleep(self.rng.uniform(0, 1.2 * kb._median(report.startup_seconds)))
                    report.startup_kills += not self._answers()
                self.server.kill()
                report.kills += 1
                self.server.start()
                serving = self.rng.random() >= self.startup_kill_rate
                if serving:
                    report.startup_seconds.append(self.server.wait_serving())
                    self.check_restart()
            if not serving:
                report.startup_seconds.append(self.server.wait_serving())
                self.check_restart()
            time.sleep(self.settle)
        except RuntimeError as exc:
            report.findings.other.append(str(exc))
            report.generations = self.server.generation
            report.seconds = time.monotonic() - t0
            self.close()
            return report
        self.stop.set()
        for t in [*self.clients, self.poller]:
            t.join(kb.REQUEST_TIMEOUT + 5)
        for c in self.clients:
            if c.crashed is not None:
                raise RuntimeError(f"{c.name} crashed") from c.crashed
        self.check_restart()  # the last process, load stopped
        self.verify(report)
        report.findings.other += self.receipts.problems + self.receipts.lost
        report.generations = self.server.generation
        report.seconds = time.monotonic() - t0
        return report


@dataclass
class KillResult:
    summary: str
    problems: list[str]
    kills: int
    restarts_checked: int
    acked_entries: int
    acked_decisions: int
    receipts: int  # receipts kept (0: the answers carry none; index checks only)
    receipt_ops: dict[str, int]  # acknowledged answers by op, with a receipt or not
    receipt_checks: int  # receipts checked, summed over the checks after every restart
    proofs_checked: int
    final_size: int
    seconds: float


def run_kills(
    work: Path,
    *,
    kills: int,
    clients: int,
    seed: int | None,
    proof_sample: int | None = None,
    **kw: Any,
) -> KillResult:
    with ReceiptHarness(work, clients=clients, seed=seed, proof_sample=proof_sample, **kw) as h:
        report = h.run(kills)
    receipts = len(h.receipts.kept) if hasattr(h, "receipts") else 0
    summary = report.summary()
    summary += (
        f"\nafter every restart: {h.restarts_checked} checks of every acknowledged index; "
        + (
            f"{receipts} receipts kept, each checked after every restart "
            f"({h.receipts.proofs} with the server's consistency and inclusion proofs)"
            if receipts
            else "no answer carried a receipt: index checks only"
        )
        + f"\nacknowledged answers by operation: {dict(sorted(h.receipt_ops.items()))}"
    )
    return KillResult(
        summary,
        report.problems(),
        report.kills,
        h.restarts_checked,
        report.acked_entries,
        report.acked_decisions,
        receipts,
        dict(sorted(h.receipt_ops.items())),
        h.receipts.checks if hasattr(h, "receipts") else 0,
        h.receipts.proofs if hasattr(h, "receipts") else 0,
        report.final_size,
        report.seconds,
    )


# -- the command ------------------------------------------------------------------------------


def _git() -> str:
    def run(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    try:
        rev = run("rev-parse", "--short", "HEAD")
        return rev + (" with uncommitted changes" if run("status", "--porcelain", "-uno") else "")
    except OSError:
        return "?"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help="the sizes CI runs")
    p.add_argument("--only", default="mutations,disk,restore,kill", help="parts to run")
    p.add_argument("--seed", type=int, default=None)
    for name in LONG:
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=None,
            help=f"long {LONG[name]}, short {SHORT[name]}"
            + ("; 0: every receipt" if name == "proof_sample" else ""),
        )
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--workdir", type=Path, default=None, help="default: a fresh temporary one")
    p.add_argument("--keep", action="store_true", help="keep the workdir")
    args = p.parse_args(argv)
    sizes = dict(SHORT if args.short else LONG)
    for name in sizes:
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    parts = set(args.only.split(","))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lineage-faults-"))
    out: dict[str, Any] = {
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}",
        "seed": seed,
        "sizes": sizes,
        "git": _git(),
    }
    print(f"{out['date']}; {out['machine']}; git {out['git']}; seed {seed}")
    print(f"sizes {sizes}; workdir {work}")
    problems: list[str] = []
    findings: list[str] = []  # exceptions that are not the ledger's own (a traceback, a 500)
    if "mutations" in parts:
        base = build_ledger(work / "mutations", sizes["rounds"], seed)
        print(
            f"\n== mutations: {base.main.size} leaves ({base.seconds:.1f} s to build): {base.mix}"
        )
        t = time.monotonic()
        results = run_mutations(
            base,
            instances=sizes["instances"],
            flips=sizes["flips"],
            anywhere=sizes["anywhere"],
            seed=seed,
            say=print,
        )
        print(f"({time.monotonic() - t:.0f} s)")
        for r in results:
            problems += r.problems()
            findings += [f"{r.name}: {c}" for c in r.crashes]
        out["mutations"] = {
            "leaves": base.main.size,
            "mix": base.mix,
            "seconds": time.monotonic() - t,
            "classes": [{**asdict(r), "rate": r.rate, "missed": r.missed} for r in results],
        }
    if "disk" in parts:
        d = full_disk(work / "disk")
        print("\n== full disk:", "SKIPPED: " + d.skipped if d.skipped else "")
        print(json.dumps(asdict(d), indent=1))
        problems += d.problems()
        out["disk"] = asdict(d)
    if "restore" in parts:
        rr = restore_without_sidecar(work / "restore", quick=args.short)
        print(f"\n== restore without the sidecar ({rr.seconds:.1f} s)")
        for step, outcome, ok in rr.steps:
            print(f"  {'ok ' if ok else 'BAD'} {step}: {outcome}")
        problems += rr.problems()
        out["restore"] = asdict(rr)
    if "kill" in parts:
        kr = run_kills(
            work / "kill",
            kills=sizes["kills"],
            clients=sizes["clients"],
            seed=seed,
            proof_sample=sizes["proof_sample"] or None,
        )
        print("\n== SIGKILL under load\n" + kr.summary)
        problems += kr.problems
        out["kill"] = asdict(kr)
    out["problems"] = problems
    out["findings"] = findings
    if findings:
        print(f"\n{len(findings)} exceptions that are not the ledger's own:")
        for line in sorted(set(findings))[:40]:
            print(f"  {line}")
    print(f"\n{len(problems)} problems" + "".join(f"\n  {x}" for x in problems[:40]))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    if not args.keep and args.workdir is None and not problems:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
