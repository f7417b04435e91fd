"""Lineage's verifier: the format, its proofs, and offline verification.

What an auditor installs: it depends on pynacl and the standard library alone.
Verification functions take bytes, keys and times, and do no I/O.
"""

from .attenuation import covers
from .bundle import VerifiedBundle, parse_bundle, verify_bundle
from .chain import Replay
from .checkpoint import Checkpoint, SignedCheckpoint, open_checkpoint, parse_checkpoint
from .entry import Entry, Leaf, parse_entry, parse_leaf, sign_entry
from .errors import (
    AttenuationError,
    ChainError,
    FormatError,
    LineageError,
    ProofError,
    SignatureError,
    VerificationError,
)
from .invocation import SignedInvocation, parse_signed_invocation, sign_invocation
from .jcs import canonical
from .keys import PublicKey, SigningKey
from .merkle import leaf_hash, verify_consistency, verify_inclusion
from .note import Signer, Verifier, open_note, parse_vkey
from .request import Request, permits
from .scope import Credential

__all__ = [
    "AttenuationError",
    "ChainError",
    "Checkpoint",
    "Credential",
    "Entry",
    "FormatError",
    "Leaf",
    "LineageError",
    "ProofError",
    "PublicKey",
    "Replay",
    "Request",
    "SignatureError",
    "SignedCheckpoint",
    "SignedInvocation",
    "Signer",
    "SigningKey",
    "VerificationError",
    "VerifiedBundle",
    "Verifier",
    "canonical",
    "covers",
    "leaf_hash",
    "open_checkpoint",
    "open_note",
    "parse_bundle",
    "parse_checkpoint",
    "parse_entry",
    "parse_leaf",
    "parse_signed_invocation",
    "parse_vkey",
    "permits",
    "sign_entry",
    "sign_invocation",
    "verify_bundle",
    "verify_consistency",
    "verify_inclusion",
]
