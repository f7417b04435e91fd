"""Rotating the ledger's operator or decision key: a logged ``add``, then a logged ``retire``.

    lineage key rotate operator

1. a new key is generated and written owner-only beside the old one
   (``operator.key.next``), so a crash never loses it;
2. a ``key`` entry adds it with the same role, signed by the current operator key;
3. the key files are swapped (the old one is kept as ``operator.key.retired``);
4. a ``key`` entry retires the old key, signed by an operator key (the new one,
   when rotating the operator key).

Every step is in the log, so an auditor sees when each key's authority began
and ended; entries signed before the rotation stay valid.
"""

from __future__ import annotations

import os
from pathlib import Path

from lineage.verifier.entry import sign_entry
from lineage.verifier.keys import SigningKey, key_file_text

from .errors import ConfigError
from .keys import KeyRing, write_secret
from .log import Log

__all__ = ["rotate_key"]

ROLES = ("operator", "decision")


def rotate_key(log: Log, directory: Path, role: str) -> tuple[str, str, int]:
    """Rotate ``role``'s key; returns (old kid, new kid, index of the retirement)."""
    if role not in ROLES:
        raise ConfigError(f"only the {' and '.join(ROLES)} keys rotate (the log key is the log)")
    ring: KeyRing | None = log.keys
    if ring is None:
        raise ConfigError("rotation needs the ledger's keys")
    old: SigningKey = getattr(ring, role)
    current = directory / f"{role}.key"
    pending = directory / f"{role}.key.next"
    new = SigningKey.generate()
    if pending.exists():
        raise ConfigError(f"{pending} exists: a rotation was interrupted; move it aside first")
    write_secret(pending, key_file_text(new))
    body = {"kind": "key", "v": 1, "log": log.origin}
    log.append(
        sign_entry({**body, "op": "add", "key": new.public.b64, "roles": [role]}, [ring.operator])
    )
    retired = directory / f"{role}.key.retired"
    if retired.exists():
        retired.unlink()
    os.replace(current, retired)
    os.replace(pending, current)
    signer = new if role == "operator" else ring.operator
    result = log.append(sign_entry({**body, "op": "retire", "key": old.public.b64}, [signer]))
    return old.kid, new.kid, result.index
