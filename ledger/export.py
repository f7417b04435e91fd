"""Export: evidence bundles (FORMAT.md §9), JSON lines, CSV and Graphviz.

A bundle proves its entries against one checkpoint: the latest published one
covering them (a fresh one is signed when the log has grown past it and the
ledger holds its key). ``since`` (an older tree size; ``older_checkpoint_size``
checks a saved checkpoint and gives its size) adds the consistency proof that
``lineage-verify --since OLD`` needs to show the log only grew since OLD.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from lineage.verifier.bundle import encode_hashes
from lineage.verifier.checkpoint import open_checkpoint
from lineage.verifier.errors import FormatError, ProofError, SignatureError
from lineage.verifier.kinds import Access, Result, Revocation

from .errors import NotFound
from .log import Log
from .query import Filter, entries, related
from .refs import credential_of

__all__ = [
    "bundle",
    "credential_bundle",
    "older_checkpoint_size",
    "principal_bundle",
    "rows_csv",
    "rows_dot",
    "rows_jsonl",
]


def _checkpoint(log: Log) -> tuple[bytes, int]:
    note = log.latest_checkpoint()
    if log.signer is not None and (note is None or _size(log, note) < log.size):
        note = log.checkpoint()
    if note is None:
        raise NotFound("the log has published no checkpoint")
    return note, _size(log, note)


def _size(log: Log, note: bytes) -> int:
    return open_checkpoint(note, log.log_key, log.origin).checkpoint.size


def older_checkpoint_size(log: Log, note: bytes) -> int:
    """The tree size of ``note``, an older checkpoint of this log (a saved
    ``lineage log checkpoint``, or the ``.checkpoint`` file), once it is shown to be one:
    signed by this log's key for this origin, no larger than the log, and with the root
    this log has at that size. Anything else is refused, naming what is wrong."""
    try:
        cp = open_checkpoint(note, log.log_key, log.origin).checkpoint
    except SignatureError as exc:
        raise SignatureError(f"the older checkpoint is not this log's: {exc}") from None
    except FormatError as exc:
        raise FormatError(f"the older checkpoint is not a checkpoint: {exc}") from None
    if cp.size > log.size:
        raise NotFound(f"the older checkpoint has {cp.size} leaves; this log has {log.size}")
    if cp.size > 0 and log.root(cp.size) != cp.root_hash:
        raise ProofError(
            f"the older checkpoint's root at size {cp.size} is not this log's root at that "
            "size: it was signed for a fork of this log"
        )
    return cp.size


def bundle(log: Log, indexes: Sequence[int], since: int | None = None) -> dict[str, Any]:
    """A bundle of the leaves at ``indexes`` (0 is always included) against a checkpoint,
    with a consistency proof from the older tree size ``since`` when it is smaller."""
    note, size = _checkpoint(log)
    wanted = sorted({0, *indexes})
    if wanted[-1] >= size:
        raise NotFound(f"leaf {wanted[-1]} is not yet covered by a checkpoint")
    if since is not None and since > size:
        raise NotFound(f"no published checkpoint covers {since} leaves yet")
    out: dict[str, Any] = {
        "origin": log.origin,
        "log_key": log.log_key.vkey,
        "checkpoint": note.decode(),
        "entries": [
            {
                "index": i,
                "leaf": log.leaf(i).to_json(),
                "inclusion": encode_hashes(log.inclusion_proof(i, size)),
            }
            for i in wanted
        ],
    }
    if since is not None and 0 < since < size:
        out["consistency"] = {
            "from_size": since,
            "proof": encode_hashes(log.consistency_proof(since, size)),
        }
    return out


def credential_bundle(
    log: Log, credential: str, since: int | None = None, within: str | None = None
) -> dict[str, Any]:
    """Everything that proves ``credential``: its lineage, subtree, revocations, accesses.

    ``within``: only what the holder of that credential may see (``query.related``).
    """
    return bundle(log, related(log, [credential], within), since)


def principal_bundle(
    log: Log,
    principal: str | None,
    start: int | None = None,
    end: int | None = None,
    since: int | None = None,
) -> dict[str, Any]:
    """Every entry about ``principal`` integrated in [start, end), and what proves them.

    The window's entries are those ``Filter(principal, since=start, until=end)`` selects
    (its grants, and every delegation, access and revocation in chains it authorised,
    whenever the grant was made), plus the revocations of a holder key in the window that
    hold one of those credentials. What proves them: the genesis, every key and policy
    entry, and the whole chain, up to the grant, of every credential they are about, even
    when the grant is older than ``start``. With no principal: every entry in the window.
    An access and its result go together (FORMAT.md §4.8): a result in the window brings
    the access it answers, and an access in the window its result, if it has one.
    """
    log.index_refs()
    with log.store.snapshot():  # one committed state throughout
        wanted = _principal_indexes(log, principal, start, end)
    return bundle(log, wanted, since)


def _principal_indexes(
    log: Log, principal: str | None, start: int | None, end: int | None
) -> list[int]:
    state = log.state()
    known = state.size  # leaves the state has applied; later ones are not looked at
    window = Filter(principal=principal, since=start, until=end)
    wanted: set[int] = {0, *log.store.anchor_indexes(known)}
    about: set[str] = set()  # credentials whose chains the bundle must hold
    holder_revocations: list[tuple[int, str]] = []

    def take(index: int, leaf: Any) -> None:
        wanted.add(index)
        body = leaf.entry.body
        if isinstance(body, Revocation) and body.holder is not None:
            holder_revocations.append((index, body.holder.kid))
        elif isinstance(body, Access):
            answer = state.result_of(leaf.entry.id)
            if answer is not None and answer < known:
                wanted.add(answer)
        elif isinstance(body, Result):
            answered = state.access(body.access)
            if answered is not None:
                wanted.add(answered.index)

    for index, leaf in entries(log, window, 0, known):
        take(index, leaf)
        rec = credential_of(state, leaf)
        if rec is not None:
            about.add(rec.id)
    if principal is not None:  # a holder revocation is about a key, not a principal
        theirs = {rec.holder.kid for rec in state.credentials_where(principal=principal)}
        revocations = Filter(kind="revocation", since=start, until=end)
        for index, leaf in entries(log, revocations, 0, known):
            body = leaf.entry.body
            if isinstance(body, Revocation) and body.holder and body.holder.kid in theirs:
                take(index, leaf)
    for index, kid in holder_revocations:
        # a holder revoking its own key must be shown to hold an earlier credential
        held = state.credentials_where(holder=kid, before=index)
        if principal is not None:
            held = [r for r in held if r.principal == principal] or held
        if held:
            about.add(min(held, key=lambda r: r.index).id)
    for cid in about:
        rec = state.credential(cid)
        if rec is not None:
            wanted.update(node.index for node in rec.chain())
    return sorted(wanted)


def _row(index: int, leaf: Any) -> dict[str, Any]:
    return {
        "index": index,
        "id": leaf.entry.id,
        "time": leaf.time,
        "kind": leaf.entry.kind,
        "leaf_hash": leaf.hash.hex(),
        "entry": leaf.entry.obj,
    }


def rows_jsonl(log: Log, f: Filter) -> Iterator[str]:
    for index, leaf in entries(log, f):
        yield json.dumps(_row(index, leaf), sort_keys=True) + "\n"


def rows_csv(log: Log, f: Filter) -> Iterator[str]:
    columns = ["index", "time", "kind", "id", "principal", "holder", "task", "detail"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    yield _drain(buf)
    state = log.state()
    for index, leaf in entries(log, f):
        obj = leaf.entry.obj
        rec = credential_of(state, leaf)
        detail = obj.get("decision", "") + (" " + obj.get("reason", "") if "reason" in obj else "")
        if leaf.entry.kind == "result":
            status = obj.get("upstream_status")
            detail = f"upstream_status {status}" if status is not None else obj.get("failure", "")
        writer.writerow(
            _cell(v)
            for v in [
                index,
                leaf.time,
                leaf.entry.kind,
                leaf.entry.id,
                rec.principal if rec else obj.get("principal", ""),
                rec.holder.kid if rec else "",
                rec.credential.limits.task.id if rec else "",
                detail.strip(),
            ]
        )
        yield _drain(buf)


def _cell(value: object) -> object:
    """Keep spreadsheet programs from running a cell as a formula (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _drain(buf: io.StringIO) -> str:
    text = buf.getvalue()
    buf.seek(0)
    buf.truncate()
    return text


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def rows_dot(log: Log, f: Filter) -> Iterable[str]:
    """The delegation graph, human first, in Graphviz dot."""
    state = log.state()
    yield "digraph lineage {\n  rankdir=LR;\n"
    seen_principals = set()
    for index, leaf in entries(log, f):
        rec = state.credential(leaf.entry.id)
        if rec is None:
            continue
        label = _dot_escape(leaf.entry.obj.get("agent") or rec.holder.kid[:8])
        yield f'  "{rec.id[:12]}" [label="{label}\\n{rec.credential.limits.task.id}\\n#{index}"];\n'
        if rec.parent is None:
            if rec.principal not in seen_principals:
                seen_principals.add(rec.principal)
                yield f'  "{rec.principal}" [shape=box];\n'
            yield f'  "{rec.principal}" -> "{rec.id[:12]}" [label="grant"];\n'
        else:
            yield f'  "{rec.parent.id[:12]}" -> "{rec.id[:12]}" [label="delegates"];\n'
    yield "}\n"
