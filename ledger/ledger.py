"""Creating and opening a ledger: a database file, its key directory and its genesis.

    ledger = init_ledger("lineage.db", "lineage-keys", origin="lineage.example/prod")
    ledger = open_ledger("lineage.db")            # keys from ./lineage-keys or $LINEAGE_KEYS

``init_ledger`` creates the keys (owner-only), writes the genesis entry at
index 0 (origin, log key, operator and decision keys; signed by the log key)
and publishes the first checkpoint. The database records the origin and the
log's verifier key; opening it with any other log key is refused.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path

from lineage.verifier.entry import sign_entry
from lineage.verifier.note import parse_vkey

from .config import Settings
from .errors import ConfigError, StorageError
from .issuance import admission
from .keys import KeyRing, keys_dir
from .log import Log
from .store import SQLiteStore

__all__ = ["DEFAULT_DB", "init_ledger", "open_ledger", "sidecar_path"]

DEFAULT_DB = "lineage.db"


def sidecar_path(db: Path) -> Path:
    """Where the last published checkpoint is kept outside the database."""
    return db.with_name(db.name + ".checkpoint")


def default_origin() -> str:
    return f"lineage.local/{secrets.token_hex(4)}"


def init_ledger(
    db: str | Path = DEFAULT_DB,
    keys: str | Path | None = None,
    *,
    origin: str | None = None,
    clock: Callable[[], float] = time.time,
    settings: Settings | None = None,
) -> Log:
    """Create a ledger with its genesis entry; refuses a database that already has leaves."""
    db, directory = Path(db), keys_dir(keys)
    if db.exists() and SQLiteStore(db).size() > 0:
        raise StorageError(f"{db} already holds a ledger")
    if (directory / "log.key").exists():
        ring = KeyRing.load(directory)
        if origin is not None and origin != ring.log.name:
            raise ConfigError(f"{directory} holds keys for {ring.log.name!r}, not {origin!r}")
    else:
        ring = KeyRing.create(directory, origin or default_origin())
    store = SQLiteStore(db, create=True)  # owner-only, with its -wal and -shm (store.py)
    vkey = ring.log.verifier
    store.set_meta("origin", vkey.name)
    store.set_meta("log_key", vkey.vkey)
    log = Log(
        store,
        vkey,
        signer=ring.log,
        sidecar=sidecar_path(db),
        clock=clock,
        keys=ring,
        key_dir=directory,
        admit=admission(settings or Settings()),
        invocation_window=(settings or Settings()).invocation_window,
    )
    genesis = sign_entry(
        {
            "kind": "genesis",
            "v": 1,
            "log": vkey.name,
            "log_key": vkey.vkey,
            "keys": sorted(
                [
                    {"key": ring.operator.public.b64, "roles": ["operator"]},
                    {"key": ring.decision.public.b64, "roles": ["decision"]},
                ],
                key=lambda k: k["key"],
            ),
        },
        [ring.log_entry_key],
    )
    log.append(genesis)
    log.checkpoint()
    return log


def open_ledger(
    db: str | Path = DEFAULT_DB,
    keys: str | Path | None = None,
    *,
    log_key: str | None = None,
    clock: Callable[[], float] = time.time,
    settings: Settings | None = None,
) -> Log:
    """Open an existing ledger with its keys (or, read-only, with just its verifier key)."""
    db = Path(db)
    store = SQLiteStore(db)
    if log_key is not None:
        return Log(store, parse_vkey(log_key), sidecar=sidecar_path(db), clock=clock)
    directory = keys_dir(keys)
    ring = KeyRing.load(directory)
    return Log(
        store,
        ring.log.verifier,
        signer=ring.log,
        sidecar=sidecar_path(db),
        clock=clock,
        keys=ring,
        key_dir=directory,
        admit=admission(settings or Settings()),
        invocation_window=(settings or Settings()).invocation_window,
    )
