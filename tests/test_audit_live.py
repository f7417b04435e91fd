"""``lineage verify --db`` on a ledger that is being written to (the chain-state issue).

Regression: the audit read the file statement by statement, so under load it mixed
sizes and reported corruption ("level 0 has 4 stored nodes, expected 3"). It now reads
one snapshot, and takes the sidecar before it.
"""

from __future__ import annotations

import threading
import time

from lineage.ledger.audit import audit
from tests.conftest import key_add


def test_the_audit_passes_on_a_ledger_being_written_to(log, db):
    for n in range(200):
        log.append(key_add(log, n))
    log.checkpoint()
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        n = 1000
        try:
            while not stop.is_set():
                log.append(key_add(log, n))
                n += 1
                if n % 7 == 0:
                    log.checkpoint()
        except BaseException as exc:  # reported below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while log.size < 205 and writer.is_alive():  # the log is growing before the first audit
            time.sleep(0.01)
        sizes = [audit(db, log.log_key).size for _ in range(8)]
    finally:
        stop.set()
        writer.join(30)
    assert not errors, errors
    assert sizes == sorted(sizes) and sizes[-1] > 201, sizes  # the log grew meanwhile
