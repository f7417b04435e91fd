"""The ledger's exceptions, under the verifier's root ``LineageError``.

    LineageError
    └── LedgerError                 every error the ledger raises of its own
        ├── RejectedEntry           an entry the log will not append (bad input or authority)
        ├── NotFound                no such entry, index or checkpoint
        ├── StorageError            the database is unusable, tampered with, or from the future
        │   ├── Busy                the writer did not take the entry up in time
        │   ├── Damaged             the file disagrees with what the log signed
        │   └── RollbackError       the database is behind a checkpoint the log published
        └── ConfigError             missing or unsafe keys and settings

Format and verification errors from ``verifier`` pass through unchanged: an
entry that does not parse raises ``lineage.verifier.errors.FormatError``.
"""

from __future__ import annotations

from lineage.verifier.errors import LineageError

__all__ = [
    "Busy",
    "ConfigError",
    "Damaged",
    "LedgerError",
    "NotFound",
    "RejectedEntry",
    "RollbackError",
    "StorageError",
]


class LedgerError(LineageError):
    """Base of the ledger's own errors."""


class RejectedEntry(LedgerError):
    """An entry refused at append: ``check`` names the rule, ``field`` the field if any."""

    def __init__(self, message: str, check: str = "rejected", field: str | None = None):
        super().__init__(message)
        self.check = check
        self.field = field


class NotFound(LedgerError):
    """No such entry, leaf index or checkpoint."""


class StorageError(LedgerError):
    """The database cannot be used: corrupt, tampered with, or not a Lineage ledger."""


class Busy(StorageError):
    """The writer did not take the entry up in time: it was withdrawn, nothing written."""


class Damaged(StorageError):
    """The stored tree or leaves disagree with a checkpoint the log signed: a proof that
    does not verify, a leaf missing below the size. Nothing built on them is served.

    ``noted`` is set once the log has raised the alarm for it (``Log.note_damage``)."""

    noted = False


class RollbackError(StorageError):
    """The database holds fewer leaves than a checkpoint the log already published."""


class ConfigError(LedgerError):
    """Keys or settings that are missing, malformed or unsafe."""
