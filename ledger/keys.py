"""The operator's key files: the log key, an operator key and a decision key.

    lineage-keys/            mode 0700
        log.key              C2SP/Go note signer key: PRIVATE+KEY+<origin>+<id>+<base64>
        operator.key         "lineage-ed25519-seed:" base64url(seed) (FORMAT.md §3.1)
        decision.key         "lineage-ed25519-seed:" base64url(seed)

Every file is written owner-only (0600) by creating it with that mode, never
by tightening it afterwards; loading refuses files that group or others can
read. The directory is ``--keys``, else ``$LINEAGE_KEYS``, else
``./lineage-keys``. No seed is ever printed or logged: the classes holding
them show only key ids.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lineage.verifier.errors import FormatError, KeyFormatError
from lineage.verifier.keys import SigningKey, key_file_text, parse_key_file, read_owner_only
from lineage.verifier.kinds import PRINCIPAL_NAME
from lineage.verifier.note import Signer, format_skey, parse_skey

from .errors import ConfigError

__all__ = [
    "DEFAULT_KEYS_DIR",
    "KeyRing",
    "check_principal_name",
    "keys_dir",
    "principal_key_file",
    "read_seed_file",
    "write_secret",
]

DEFAULT_KEYS_DIR = "lineage-keys"


def keys_dir(explicit: str | Path | None = None) -> Path:
    return Path(explicit or os.environ.get("LINEAGE_KEYS") or DEFAULT_KEYS_DIR)


def check_principal_name(name: str) -> str:
    """``name`` if it is a principal name the format accepts (FORMAT.md: lower-case
    letters, digits and ``._+-``, an optional ``@domain``; no ``/``, no leading ``.``),
    else ConfigError. Such a name is also a safe file name."""
    if not isinstance(name, str) or not PRINCIPAL_NAME.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a principal name: lower-case letters, digits and ._+- "
            "(starting with a letter or digit, at most 64), then optionally @domain"
        )
    return name


def principal_key_file(directory: Path, name: str) -> Path:
    """Where ``lineage principal add --generate-key`` keeps a principal's key, inside
    ``directory/principals/``; the name is checked first, so it cannot point elsewhere."""
    return directory / "principals" / f"{check_principal_name(name)}.key"


def write_secret(path: Path, text: str) -> None:
    """Create ``path`` owner-only (0600) and write ``text``; never overwrite a key."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _read_secret(path: Path) -> str:
    try:
        return read_owner_only(path).strip()
    except FileNotFoundError:
        raise ConfigError(f"key file {path} not found (run `lineage init`)") from None
    except KeyFormatError as exc:
        raise ConfigError(str(exc)) from None


def read_seed_file(path: Path) -> SigningKey:
    try:
        return parse_key_file(_read_secret(path), str(path))
    except KeyFormatError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class KeyRing:
    """The keys a ledger runs with. ``log`` signs checkpoints and the genesis entry."""

    log: Signer
    operator: SigningKey
    decision: SigningKey

    @property
    def log_entry_key(self) -> SigningKey:
        """The log key as an entry signer (for the genesis entry)."""
        return SigningKey(self.log.seed)

    @classmethod
    def create(cls, directory: Path, origin: str) -> KeyRing:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        ring = cls(Signer.generate(origin), SigningKey.generate(), SigningKey.generate())
        write_secret(directory / "log.key", format_skey(ring.log) + "\n")
        write_secret(directory / "operator.key", key_file_text(ring.operator))
        write_secret(directory / "decision.key", key_file_text(ring.decision))
        return ring

    @classmethod
    def load(cls, directory: Path) -> KeyRing:
        try:
            log = parse_skey(_read_secret(directory / "log.key"))
        except FormatError:
            raise ConfigError(f"{directory / 'log.key'} holds a malformed key") from None
        return cls(
            log,
            read_seed_file(directory / "operator.key"),
            read_seed_file(directory / "decision.key"),
        )

    def __repr__(self) -> str:
        return f"KeyRing(log={self.log.verifier.vkey!r}, operator={self.operator.kid!r})"
