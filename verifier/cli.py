"""``lineage-verify BUNDLE --log-key KEY [--since CHECKPOINT] [--json]``: offline bundle audit.

``lineage-verify RECEIPT --receipt --log-key KEY [--entry-id ID] [--json]`` checks an
append's receipt instead (FORMAT.md §9.4): the log key signed a checkpoint that
includes this leaf at this index.

Exit status: 0 when everything holds; 1 when a check fails (the first failure
is named: which entry, which check); 2 for unusable input (unreadable files,
a malformed key). Needs nothing but this package and pynacl.

Everything printed that came from the bundle (labels, names, error messages that
quote it) is escaped: text through ``errors.printable``, JSON with every
non-ASCII and control character as a ``\\u`` escape of four hex digits (FORMAT.md §4.4).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .bundle import VerifiedBundle, verify_bundle
from .errors import (
    ChainError,
    FormatError,
    LineageError,
    ProofError,
    SignatureError,
    printable,
)
from .note import parse_vkey
from .receipt import VerifiedReceipt, verify_receipt

__all__ = ["main"]


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


def _key_arg(value: str) -> str:
    """A verifier-key string, or the path of a file holding one."""
    if "+" not in value and Path(value).is_file():
        return Path(value).read_text().strip()
    return value.strip()


def summary(vb: VerifiedBundle) -> dict:
    cp = vb.checkpoint.checkpoint
    chains = []
    for chain in vb.chains():
        chains.append(
            {
                "principal": chain[0].principal,
                "credential": chain[-1].id,
                "task": chain[-1].credential.limits.task.id,
                "links": [
                    {
                        "id": r.id,
                        "kind": r.entry.kind,
                        "index": r.index,
                        "holder": r.holder.kid,
                        "agent": r.entry.obj.get("agent"),
                    }
                    for r in chain
                ],
            }
        )
    return {
        "ok": True,
        "origin": cp.origin,
        "tree_size": cp.size,
        "root_hash": cp.root_hash.hex(),
        "entries": len(vb.entries),
        "accesses": len(vb.replay.accesses),
        "results": len(vb.replay.results),
        "chains": chains,
        "consistent_with": vb.since.checkpoint.size if vb.since else None,
    }


def receipt_summary(vr: VerifiedReceipt) -> dict:
    cp = vr.checkpoint.checkpoint
    return {
        "ok": True,
        "origin": cp.origin,
        "tree_size": cp.size,
        "root_hash": cp.root_hash.hex(),
        "index": vr.index,
        "entry": vr.leaf.entry.id,
        "kind": vr.leaf.entry.kind,
        "time": vr.leaf.time,
    }


def _human_receipt(s: dict) -> str:
    lines = [
        f"OK  {s['origin']}: checkpoint of {s['tree_size']} leaves, root {s['root_hash']}",
        f"    includes entry {s['entry']} ({s['kind']}) at index {s['index']}, time {s['time']}",
    ]
    return "\n".join(printable(line) for line in lines)


def _human(s: dict) -> str:
    lines = [
        f"OK  {s['origin']}: checkpoint of {s['tree_size']} leaves, root {s['root_hash']}",
        f"    {s['entries']} entries included, {s['accesses']} access records and "
        f"{s['results']} results replayed",
    ]
    if s["consistent_with"] is not None:
        lines.append(f"    the log grew from size {s['consistent_with']} by appends only")
    for chain in s["chains"]:
        path = " -> ".join(
            [chain["principal"]]
            + [(link["agent"] or link["holder"][:12]) for link in chain["links"]]
        )
        lines.append(f"    chain  {path}   task {chain['task']}  ({len(chain['links'])} links)")
    return "\n".join(printable(line) for line in lines)


def _json(value: dict) -> str:
    """JSON with only printable ASCII: json escapes controls and non-ASCII, not DEL."""
    return json.dumps(value, indent=2, ensure_ascii=True).replace("\x7f", "\\u007f")


def _failure(exc: LineageError) -> dict:
    kind = {ChainError: "chain", ProofError: "proof", SignatureError: "signature"}
    category = next((v for k, v in kind.items() if isinstance(exc, k)), "format")
    out = {"ok": False, "check": category, "error": str(exc)}
    if isinstance(exc, ChainError):
        out["entry"], out["check"] = exc.entry_id, exc.check
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lineage-verify", description=__doc__.splitlines()[0])
    ap.add_argument(
        "bundle", help="evidence bundle (JSON), a receipt with --receipt, or - for standard input"
    )
    ap.add_argument("--log-key", required=True, help="the log's verifier-key string, or a file")
    ap.add_argument("--since", help="an older checkpoint (signed note file) to prove growth from")
    ap.add_argument("--receipt", action="store_true", help="the file is an append's receipt")
    ap.add_argument("--entry-id", help="with --receipt: the id of the entry you appended")
    ap.add_argument("--json", action="store_true", help="machine-readable result")
    args = ap.parse_args(argv)
    if args.receipt and args.since:
        ap.error("--since checks a bundle; a receipt names its own checkpoint")
    if args.entry_id and not args.receipt:
        ap.error("--entry-id goes with --receipt")
    try:
        data = _read(args.bundle)
        since = _read(args.since) if args.since else None
        log_key = parse_vkey(_key_arg(args.log_key))
    except OSError as exc:
        print(printable(f"lineage-verify: {exc}"), file=sys.stderr)
        return 2
    except FormatError as exc:
        print(printable(f"lineage-verify: --log-key: {exc}"), file=sys.stderr)
        return 2
    try:
        if args.receipt:
            result = receipt_summary(verify_receipt(data, log_key, args.entry_id))
        else:
            result = summary(verify_bundle(data, log_key, since))
    except LineageError as exc:
        failure = _failure(exc)
        if args.json:
            print(_json(failure))
        else:
            print(printable(f"FAIL  {failure['check']}: {exc}"), file=sys.stderr)
        return 1
    human = _human_receipt if args.receipt else _human
    print(_json(result) if args.json else human(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
