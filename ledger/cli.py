"""``lineage``: the operator's command line.

    lineage init [--db PATH] [--keys DIR] [--origin NAME]
    lineage log key|checkpoint|entries|proof [--db PATH]
    lineage verify --db PATH            full audit of a ledger file
    lineage verify BUNDLE --log-key KEY offline check of an evidence bundle

Errors go to standard error as one line, with exit status 1 (2 for usage).
No command prints a secret.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from lineage.verifier.cli import main as verify_bundle_main
from lineage.verifier.errors import LineageError
from lineage.verifier.note import parse_vkey

from . import cli_credentials  # noqa: F401  (registers principal, grant, ... on the app)
from .audit import AuditFailure, CannotOpen, audit
from .cli_common import DbOption, KeysOption, app, err, fail, log_app, open_for_reading
from .config import load_settings
from .errors import ConfigError
from .keys import KeyRing, keys_dir
from .ledger import DEFAULT_DB, init_ledger, open_ledger
from .rotation import rotate_key

__all__ = ["app", "main"]


@app.command()
def init(
    db: DbOption = Path(DEFAULT_DB),
    keys: KeysOption = None,
    origin: Annotated[str | None, typer.Option(help="the log's name (default: random)")] = None,
) -> None:
    """Create a ledger: keys (owner-only), the genesis entry, the first checkpoint."""
    try:
        log = init_ledger(db, keys, origin=origin)
        log.close()
    except LineageError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"created {db} with log {log.origin}")
    typer.echo(f"keys in {keys_dir(keys)}/ (owner-only)")
    typer.echo(f"verifier key: {log.log_key.vkey}")


@log_app.command("key")
def log_key(db: DbOption = Path(DEFAULT_DB), keys: KeysOption = None) -> None:
    """Print the log's verifier-key string (all an auditor needs)."""
    try:
        typer.echo(open_for_reading(db, keys).log_key.vkey)
    except LineageError as exc:
        raise fail(str(exc)) from None


@log_app.command("trust")
def log_trust(
    checkpoint: Annotated[
        Path, typer.Argument(help="the latest checkpoint the log published, from outside")
    ],
    db: DbOption = Path(DEFAULT_DB),
    keys: KeysOption = None,
) -> None:
    """After a restore: take a checkpoint from outside the database (a monitor's, an
    auditor's, a mirror's) as the latest the log published. Refused if the database is
    behind it or disagrees with it; recorded in the database."""
    try:
        note = checkpoint.read_bytes()
    except OSError as exc:
        raise fail(f"{checkpoint}: {exc.strerror}") from None
    try:
        log = open_ledger(db, keys)
        try:
            size = log.trust(note)
        finally:
            log.close()
    except LineageError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"trusted the checkpoint of size {size}; the ledger may append again")


@log_app.command("checkpoint")
def log_checkpoint(
    db: DbOption = Path(DEFAULT_DB),
    keys: KeysOption = None,
    new: Annotated[
        bool, typer.Option("--new", help="sign a checkpoint of the current size")
    ] = False,
) -> None:
    """Print the latest signed checkpoint (C2SP signed note)."""
    try:
        log = open_for_reading(db, keys)
        try:
            note = log.checkpoint() if new else log.latest_checkpoint()
        finally:
            log.close()
    except LineageError as exc:
        raise fail(str(exc)) from None
    if note is None:
        raise fail("no checkpoint published yet")
    sys.stdout.write(note.decode())


@log_app.command("entries")
def log_entries(
    db: DbOption = Path(DEFAULT_DB),
    keys: KeysOption = None,
    start: Annotated[int, typer.Option(min=0)] = 0,
    end: Annotated[int | None, typer.Option(min=0, help="exclusive (default: the end)")] = None,
) -> None:
    """Print leaves as JSON lines: index, id, time, leaf hash and entry."""
    try:
        log = open_for_reading(db, keys)
        for index, leaf in log.leaves(start, end):
            typer.echo(
                json.dumps(
                    {
                        "index": index,
                        "id": leaf.entry.id,
                        "time": leaf.time,
                        "leaf_hash": leaf.hash.hex(),
                        "entry": leaf.entry.obj,
                    },
                    sort_keys=True,
                )
            )
    except LineageError as exc:
        raise fail(str(exc)) from None


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


@log_app.command("proof")
def log_proof(
    db: DbOption = Path(DEFAULT_DB),
    keys: KeysOption = None,
    index: Annotated[int | None, typer.Option(min=0, help="inclusion proof for this leaf")] = None,
    first: Annotated[int | None, typer.Option(min=1, help="consistency proof from size")] = None,
    size: Annotated[int | None, typer.Option(min=1, help="tree size (default: current)")] = None,
) -> None:
    """Print an inclusion (--index) or consistency (--first) proof as JSON."""
    if (index is None) == (first is None):
        raise fail("give exactly one of --index and --first", 2)
    try:
        log = open_for_reading(db, keys)
        n = size or log.size
        if index is not None:
            out = {
                "leaf_index": index,
                "tree_size": n,
                "audit_path": _b64(log.inclusion_proof(index, n)),
            }
        else:
            out = {
                "first": first,
                "second": n,
                "consistency": _b64(log.consistency_proof(first, n)),
            }
    except LineageError as exc:
        raise fail(str(exc)) from None
    typer.echo(json.dumps(out, indent=2))


key_app = typer.Typer(no_args_is_help=True, help="The ledger's own keys.")
app.add_typer(key_app, name="key")


@key_app.command("rotate")
def key_rotate(
    role: Annotated[str, typer.Argument(help="operator or decision")],
    db: DbOption = Path(DEFAULT_DB),
    keys: KeysOption = None,
) -> None:
    """Replace the operator or decision key: the new key is added, then the old retired."""
    try:
        log = open_ledger(db, keys)
        old, new, index = rotate_key(log, keys_dir(keys), role)
        log.close()
    except LineageError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{role} key {old} retired at index {index}; now {new}")


@app.command()
def verify(
    bundle: Annotated[Path | None, typer.Argument(help="an evidence bundle to verify")] = None,
    db: Annotated[Path | None, typer.Option("--db", help="audit this ledger file")] = None,
    log_key: Annotated[str | None, typer.Option("--log-key", help="trusted verifier key")] = None,
    keys: KeysOption = None,
    since: Annotated[Path | None, typer.Option(help="older checkpoint (bundles)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    config: Annotated[
        Path | None, typer.Option(help="TOML settings file (for invocation_window, with --db)")
    ] = None,
) -> None:
    """Audit a whole ledger (--db) or verify an evidence bundle offline."""
    if (bundle is None) == (db is None):
        raise fail("give a BUNDLE or --db PATH", 2)
    if bundle is not None:
        if log_key is None:
            raise fail("a bundle is verified against --log-key", 2)
        argv = [str(bundle), "--log-key", log_key] + (["--since", str(since)] if since else [])
        raise typer.Exit(verify_bundle_main(argv + (["--json"] if as_json else [])))
    try:
        trusted = _trusted_key(db, keys, log_key)
        with Progress(
            TextColumn("{task.description:8}"),
            BarColumn(),
            TaskProgressColumn(),
            console=err,
            transient=True,
            disable=as_json or not err.is_terminal,
        ) as bar:
            tasks: dict[str, int] = {}

            def tick(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done)

            window = load_settings(config).invocation_window
            report = audit(db, trusted, progress=tick, invocation_window=window)
    except AuditFailure as exc:
        if as_json:
            typer.echo(
                json.dumps({"ok": False, "check": exc.what, "index": exc.index, "error": str(exc)})
            )
        raise fail(f"FAIL {exc}") from None
    except CannotOpen as exc:  # nothing was checked: not a verdict on the file
        if as_json:
            typer.echo(json.dumps({"ok": False, "check": "open", "index": None, "error": str(exc)}))
        raise fail(str(exc)) from None
    except LineageError as exc:
        raise fail(str(exc)) from None
    result = {
        "ok": True,
        "size": report.size,
        "root": report.root.hex(),
        "checkpoints": report.checkpoints,
        "credentials": report.credentials,
        "accesses": report.accesses,
    }
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(
            f"OK  {db}: {report.size} leaves, root {report.root.hex()}; "
            f"{report.checkpoints} checkpoints, {report.credentials} credentials and "
            f"{report.accesses} accesses replayed"
        )


def _trusted_key(db: Path, keys: Path | None, explicit: str | None):
    if explicit is not None:
        if "+" in explicit:  # a verifier-key string, not a file name
            return parse_vkey(explicit)
        try:
            return parse_vkey(Path(explicit).read_text().strip())
        except OSError as exc:
            raise ConfigError(f"--log-key: {exc.strerror}: {explicit}") from None
    if (keys_dir(keys) / "log.key").exists():
        return KeyRing.load(keys_dir(keys)).log.verifier
    raise ConfigError("give --log-key (or --keys): an audit trusts only the key you name")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
