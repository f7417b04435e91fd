"""A caller told an append failed must find it absent, now and later (the chain-state issue).

Regression: a caller that timed out got ``TimeoutError`` (HTTP 500) and its entry was
appended anyway 18-130 s later. Now work the writer has not taken up is withdrawn on
timeout (``Busy``: nothing written), and work it has taken up is waited for.
"""

from __future__ import annotations

import threading
import time

import pytest

from lineage.ledger.errors import Busy
from tests.conftest import key_add


def test_an_append_that_times_out_is_never_written_later(log):
    taken, withdrawn = key_add(log, 1), key_add(log, 2)
    results = []
    with log._state_lock:  # the writer (started by the genesis) blocks on its next batch
        started = time.monotonic()
        first = threading.Thread(target=lambda: results.append(log.append(taken, timeout=1.0)))
        first.start()
        deadline = time.monotonic() + 30
        while not (log._writer is not None and log._queue.empty()):  # `taken` was taken up
            assert time.monotonic() < deadline, "the writer never took the entry up"
            time.sleep(0.01)
        time.sleep(0.2)  # and the writer is past forming its batch, waiting for the lock
        with pytest.raises(Busy, match="nothing was written"):
            log.append(withdrawn, timeout=0.2)
        time.sleep(max(0.0, started + 1.5 - time.monotonic()))  # past `taken`'s own timeout
    first.join(30)
    assert results and results[0].index == 1  # taken up: its caller waited past its timeout
    time.sleep(0.3)
    assert log.store.find(withdrawn.id) is None  # withdrawn: never written, not even later
    assert log.append(withdrawn).index == 2  # and it can be sent again


def test_busy_is_a_503_that_says_nothing_was_written():
    from lineage.api.errors import lineage_status

    status, code, detail = lineage_status(Busy("nothing was written"))
    assert (status, code) == (503, "temporarily_unavailable") and "nothing" in detail
