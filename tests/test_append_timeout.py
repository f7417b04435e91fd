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
    with log._state_lock:  # the writer blocks on the first batch it takes up
        first = threading.Thread(target=lambda: results.append(log.append(taken, timeout=0.2)))
        first.start()
        time.sleep(0.5)  # the writer has taken `taken` up, and waits
        with pytest.raises(Busy, match="nothing was written"):
            log.append(withdrawn, timeout=0.2)
    first.join(30)
    assert results and results[0].index == 1  # taken up: its caller waited for it
    time.sleep(0.3)
    assert log.store.find(withdrawn.id) is None  # withdrawn: never written, not even later
    assert log.append(withdrawn).index == 2  # and it can be sent again


def test_busy_is_a_503_that_says_nothing_was_written():
    from lineage.api.errors import lineage_status

    status, code, detail = lineage_status(Busy("nothing was written"))
    assert (status, code) == (503, "temporarily_unavailable") and "nothing" in detail
