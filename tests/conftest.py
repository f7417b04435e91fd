"""Shared helpers for the ledger tests: a real ledger on a SQLite file under tmp_path.

Entries are built for the ledger's own origin (``fixtures/generate.py`` has another):

* ``policy(log, v)``: an operator-signed policy entry; versions must strictly increase.
* ``key_add(log, n)``: an operator adding decision key number ``n``; any order is valid,
  so these are the entries for concurrent appends.
"""

from __future__ import annotations

import gc
import hashlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import hypothesis
import pytest

from lineage.ledger.ledger import init_ledger
from lineage.ledger.log import Log
from lineage.verifier.entry import Entry, sign_entry
from lineage.verifier.keys import SigningKey

__all__ = [
    "ORIGIN",
    "T0",
    "TABLES",
    "FixedClock",
    "close",
    "drop_triggers",
    "key_add",
    "numbered_key",
    "policy",
    "raw_connection",
]

ORIGIN = "test.example/ledger"

# httpx's default timeout is 5 s. CI runs the suite on two shared cores beside a headless
# chromium, where one request to a test server once took longer than that (a fixture's
# first append timed out, nothing was wrong). Calls that leave the timeout at httpx's
# default get 60 s in the tests; any timeout a test or the code sets is kept as it is.
_HTTPX_DEFAULT = httpx.Timeout(5.0)
_PATIENT = httpx.Timeout(60.0)
_timeout = httpx.Client.timeout


def _patient_timeout(client: object) -> httpx.Timeout:
    chosen = _timeout.fget(client)
    return _PATIENT if chosen == _HTTPX_DEFAULT else chosen


httpx._client.BaseClient.timeout = property(_patient_timeout, _timeout.fset)  # type: ignore[attr-defined]
T0 = 1767225600  # 2026-01-01T00:00:00Z
TABLES = ("leaves", "nodes", "checkpoints", "meta")


class FixedClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def policy(log: Log, version: int, signer: SigningKey | None = None) -> Entry:
    body = {"kind": "policy", "v": 1, "log": log.origin, "version": version, "document": {}}
    return sign_entry(body, [signer or log.keys.operator])


def numbered_key(n: int) -> SigningKey:
    return SigningKey(hashlib.sha256(b"ledger test key %d" % n).digest())


def key_add(log: Log, n: int) -> Entry:
    body = {
        "kind": "key",
        "v": 1,
        "log": log.origin,
        "op": "add",
        "key": numbered_key(n).public.b64,
        "roles": ["decision"],
    }
    return sign_entry(body, [log.keys.operator])


def close(log: Log) -> None:
    """Close the log and every SQLite connection it holds, so the files can be copied."""
    log.close()
    log.store.close()
    gc.collect()  # connections of finished threads live in thread-locals until collected


def raw_connection(db: Path) -> sqlite3.Connection:
    """A connection behind the ledger's back (autocommit)."""
    return sqlite3.connect(db, isolation_level=None)


def drop_triggers(conn: sqlite3.Connection) -> None:
    """What someone tampering with the file would do first."""
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
    for name in names:
        conn.execute(f"DROP TRIGGER {name}")


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "lineage.db"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return tmp_path / "lineage-keys"


@pytest.fixture
def log(db: Path, keys: Path, clock: FixedClock) -> Iterator[Log]:
    """A fresh ledger: the genesis at index 0 and a checkpoint of size 1."""
    ledger = init_ledger(db, keys, origin=ORIGIN, clock=clock)
    yield ledger
    close(ledger)


# `make test-fast` runs the property tests with fewer examples; CI runs the default.
hypothesis.settings.register_profile("fast", max_examples=20)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
