"""The query index (refs): written with each leaf, backfilled when missing, audited."""

import pytest

from lineage.ledger.audit import AuditFailure, audit
from lineage.ledger.ledger import open_ledger
from lineage.ledger.query import Filter, entries
from tests.conftest import drop_triggers, raw_connection
from tests.issuance_helpers import world


def _story(tmp_path):
    w = world(tmp_path)
    g = w.grant()
    w.append(g)
    d = w.delegate(g, w.agent)
    w.append(d)
    w.decide(w.invoke(w.reader, d.id))
    return w, g, d


def test_every_leaf_is_indexed_with_what_it_is_about(tmp_path):
    w, _grant, d = _story(tmp_path)
    rows = w.log.store._query("SELECT idx, kind, principal, credential FROM refs ORDER BY idx")
    assert [r[0] for r in rows] == list(range(w.log.size))
    by_index = {r[0]: r for r in rows}
    access = w.log.size - 1
    assert by_index[access][1:] == ("access", "alice@corp", d.id)
    assert [i for i, _ in entries(w.log, Filter(holder=w.reader.public.b64))] == [
        w.log.find(d.id),
        access,
    ]
    w.close()


def test_a_ledger_without_refs_is_indexed_before_it_is_queried(tmp_path):
    w, g, d = _story(tmp_path)
    db, keys = w.db, w.keys
    size = w.log.size
    w.close()
    conn = raw_connection(db)
    drop_triggers(conn)
    conn.execute("DELETE FROM refs")  # as before the query index (and its access rows)
    conn.execute("DELETE FROM access_refs")
    conn.close()
    log = open_ledger(db, keys, clock=w.clock)
    found = [i for i, _ in entries(log, Filter(principal="alice@corp"))]
    assert log.find(g.id) in found and log.find(d.id) in found
    log.append(w.grant(task={"id": "later", "description": ""}))
    assert [i for i, _ in entries(log, Filter(task="later"))] == [size]
    log.close()


def test_a_tampered_index_row_fails_the_audit(tmp_path):
    w, _grant, d = _story(tmp_path)
    db = w.db
    index = w.log.find(d.id)
    key = w.log.log_key
    w.close()
    conn = raw_connection(db)
    drop_triggers(conn)
    conn.execute("UPDATE refs SET principal = 'mallory@corp' WHERE idx = ?", (index,))
    conn.close()
    with pytest.raises(AuditFailure) as info:
        audit(db, key)
    assert info.value.what == "index" and info.value.index == index
