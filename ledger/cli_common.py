"""What every ``lineage`` command shares: the app, options, errors, opening a ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .errors import StorageError
from .keys import keys_dir
from .ledger import open_ledger
from .log import Log
from .store import SQLiteStore

__all__ = ["DbOption", "KeysOption", "app", "err", "fail", "log_app", "open_for_reading"]

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Lineage: a credential ledger for AI agents."
)
log_app = typer.Typer(no_args_is_help=True, help="Read the transparency log.")
app.add_typer(log_app, name="log")
err = Console(stderr=True, soft_wrap=True)

DbOption = Annotated[Path, typer.Option("--db", help="ledger database file")]
KeysOption = Annotated[
    Path | None,
    typer.Option("--keys", help="key directory (default $LINEAGE_KEYS or ./lineage-keys)"),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]lineage:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code)


def open_for_reading(db: Path, keys: Path | None) -> Log:
    """Open with the keys when they are there; read-only with the stored key otherwise."""
    if (keys_dir(keys) / "log.key").exists():
        return open_ledger(db, keys)
    vkey = SQLiteStore(db).get_meta("log_key")
    if vkey is None:
        raise StorageError(f"{db} has no log key recorded")
    return open_ledger(db, log_key=vkey)
