"""Response shapes, for the OpenAPI document (the routers build the JSON themselves)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "AppendResult",
    "Bundle",
    "ConsistencyProof",
    "EntryPage",
    "Health",
    "InclusionProof",
    "Introspection",
    "LeafPage",
    "LeafView",
    "TokenResponse",
]


class Receipt(BaseModel):
    """FORMAT.md §9.4: the evidence an append is acknowledged with."""

    checkpoint: str = Field(description="the signed checkpoint (C2SP note) covering the leaf")
    index: int = Field(description="the leaf index")
    leaf: dict[str, Any] = Field(description='the leaf: {"entry": <entry>, "time": <seconds>}')
    inclusion: list[str] = Field(description="RFC 9162 inclusion proof, base64 hashes")


class AppendResult(BaseModel):
    id: str = Field(description="the entry id: hex SHA-256 of its canonical bytes")
    index: int = Field(description="its leaf index; the original one for a repeat")
    receipt: Receipt = Field(description="the checkpoint covering it and its inclusion proof")


class LeafView(BaseModel):
    index: int
    leaf_hash: str = Field(description="hex RFC 9162 leaf hash")
    time: int = Field(description="integrated time, Unix seconds")
    id: str | None = Field(None, description="entry id (authorised readers)")
    entry: dict[str, Any] | None = Field(None, description="the signed entry (authorised readers)")


class LeafPage(BaseModel):
    entries: list[LeafView]
    tree_size: int


class EntryPage(BaseModel):
    entries: list[LeafView]
    next_cursor: int | None


class InclusionProof(BaseModel):
    leaf_index: int
    tree_size: int
    audit_path: list[str] = Field(description="base64 hashes, RFC 9162 §2.1.3")


class ConsistencyProof(BaseModel):
    first: int
    second: int
    consistency: list[str] = Field(description="base64 hashes, RFC 9162 §2.1.4")


class TokenResponse(BaseModel):
    access_token: str = Field(description="the credential handle")
    issued_token_type: str
    token_type: str = "DPoP"
    expires_in: int
    authorization_details: list[dict[str, Any]]
    lineage_index: int
    lineage_receipt: Receipt = Field(description="the credential entry's receipt (FORMAT.md §9.4)")


class Introspection(BaseModel):
    active: bool
    iss: str | None = None
    sub: str | None = Field(None, description="the principal at the root of the chain")
    token_type: str | None = None
    exp: int | None = None
    iat: int | None = None
    nbf: int | None = None
    cnf: dict[str, str] | None = Field(None, description='{"jkt": holder key thumbprint}')
    act: dict[str, Any] | None = Field(None, description="RFC 8693 actors, current outermost")
    authorization_details: list[dict[str, Any]] | None = None
    lineage: dict[str, Any] | None = Field(
        None,
        description="status: active, expired, not-yet-valid, revoked, spent or rate-limited "
        "(the rules a decision applies first); when inactive also reason and credential "
        "(the one in the chain the rule is about); when active also log, task, depth, "
        "index and chain",
    )


class Health(BaseModel):
    status: str = Field(
        description="ok; degraded while checkpoints are failing; damaged once a proof or "
        "leaf did not verify against a signed checkpoint (nothing built on it is served)"
    )
    origin: str
    tree_size: int
    checkpoint_failures: int = Field(0, description="checkpoint publications that failed")
    checkpoint_error: str | None = Field(None, description="why the last one failed")
    proof_failures: int = Field(0, description="proofs or leaves refused as damaged")
    damage: str | None = Field(None, description="what did not verify (see lineage verify --db)")


class BundleEntry(BaseModel):
    index: int
    leaf: dict[str, Any] = Field(description="the leaf: its entry and integrated time")
    inclusion: list[str] = Field(description="base64 hashes up to the bundle's checkpoint")


class BundleConsistency(BaseModel):
    from_size: int
    proof: list[str] = Field(description="base64 hashes, RFC 9162 §2.1.4")


class Bundle(BaseModel):
    """An evidence bundle (docs/FORMAT.md §9): verifies offline under the log key."""

    origin: str
    log_key: str = Field(description="the log's C2SP verifier-key string")
    checkpoint: str = Field(description="the signed checkpoint the proofs are against")
    entries: list[BundleEntry]
    consistency: BundleConsistency | None = Field(
        None, description="from an older tree size (export with from_size)"
    )
