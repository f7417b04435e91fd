"""SIGKILL harness: a real ``lineage serve``, killed at random moments under load, restarted.

    .venv/bin/python bench/kill_bench.py --kills 100 [--clients 4] [--seed N] [--keep]

One ledger (``lineage init``, ``lineage principal add alice@corp --generate-key``, an
enforcement and an operator token) is served by ``lineage serve`` on 127.0.0.1, a
subprocess, while client threads append entries and ask for decisions over HTTP, and a
poller fetches the checkpoint. At random moments (mostly while it serves, sometimes
while it starts) the server gets SIGKILL and is started again on the same database.

The clients record every answer, on the client side only:

- ``ack``: a 2xx with the entry id and index (``POST /v1/entries``, ``POST /oauth/token``,
  ``POST /v1/access``);
- ``refused``: a 4xx or 503, which the API promises wrote nothing (docs/API.md, Errors);
- ``unknown``: no answer (the connection died with the server); the client then sends
  the same request again (the same signed entry, the same invocation) until it gets an
  answer, as a careful client would;
- ``error``: any other 5xx, which the API promises never to send.

Afterwards, with the clients stopped and the last server still up, it checks:

1. every acknowledged entry is in the log at its acknowledged index, with that id;
2. nothing is in the log that every caller who sent it was told failed, nor was a
   request refused after the same entry had been acknowledged; a decision's invocation
   is logged at most once (its nonce is never accepted twice, across crashes too);
3. every checkpoint served (verified under the pinned log key when fetched) is
   consistent with the next one served (a consistency proof from the server, verified
   with ``lineage.verifier.merkle.verify_consistency``; sizes never go back) and with the
   final log (its root is the root of the final leaves at its size, recomputed here from
   the leaves, and a consistency proof to the final checkpoint verifies);
4. what must always be refused was (a widening delegation, a lifetime over the ceiling,
   a stale policy version, an invocation not signed by the holder), and no credential
   allowed more uses than its ``max_uses`` (subtree total);
5. the leaves served are the leaves in the file (same root, read back with the server
   stopped), and ``lineage verify --db`` passes on it, at the final size.

tests/test_sigkill.py runs a short version of this; the checks are the same code.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: ``tests`` is importable from the root
    sys.path.insert(0, str(ROOT))

from lineage.client.dpop import make_proof  # noqa: E402
from lineage.ledger.ledger import open_ledger  # noqa: E402
from lineage.verifier.bodies import delegation_body, grant_body  # noqa: E402
from lineage.verifier.checkpoint import open_checkpoint  # noqa: E402
from lineage.verifier.entry import Entry, Leaf, entry_from_json, sign_entry  # noqa: E402
from lineage.verifier.errors import LineageError  # noqa: E402
from lineage.verifier.invocation import sign_invocation  # noqa: E402
from lineage.verifier.keys import SigningKey, load_key_file  # noqa: E402
from lineage.verifier.merkle import MemoryTree, verify_consistency  # noqa: E402
from lineage.verifier.note import Verifier, parse_vkey  # noqa: E402
from tests.api_server import free_port, wait_until_serving  # noqa: E402

__all__ = [
    "Attempt",
    "FinalLog",
    "Findings",
    "Harness",
    "Report",
    "Served",
    "check_answers",
    "check_checkpoints",
    "main",
]

LINEAGE = Path(sys.executable).with_name("lineage")
ORIGIN = "kill-bench.example/log"
PRINCIPAL = "alice@corp"
MAIL = "https://mail.example.com:443"
SCOPE = [{"type": "email", "actions": ["read", "send"], "locations": [MAIL]}]
NARROW = [{"type": "email", "actions": ["read"], "locations": [MAIL]}]
WIDER = [{"type": "email", "actions": ["delete", "read"], "locations": [MAIL]}]
READ = {"type": "email", "action": "read", "location": MAIL}
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
SIGNED_ENTRY = "urn:lineage:params:oauth:token-type:signed-entry"
REQUEST_TIMEOUT = 15.0
START_TIMEOUT = 60.0
POOL = 64  # credentials the clients draw on (the latest acknowledged ones)

# What the clients do, and how often. The ``refuse`` ones must always be refused.
OPS = {
    "access": 5.0,  # a decision on a credential the client holds
    "grant": 1.5,  # alice's grant, POST /v1/entries
    "token": 1.0,  # alice's grant, POST /oauth/token (DPoP by the new holder)
    "delegation": 2.0,  # a narrower delegation, by the parent's holder
    "policy": 0.4,  # an operator-signed policy, the next version as the client knows it
    "forged": 0.4,  # refuse: an invocation not signed by the credential's holder
    "widening": 0.3,  # refuse: a delegation that widens its parent (adds "delete")
    "ceiling": 0.3,  # refuse: a grant living longer than ttl_max (3600 s)
    "stale-policy": 0.2,  # refuse: a policy version already in force or older
}
MUST_REFUSE = frozenset({"forged", "widening", "ceiling", "stale-policy"})


# -- what the clients record ---------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One request and what its caller was told."""

    op: str  # a key of OPS
    kind: str  # "entry" (an append) or "access" (a decision)
    key: str  # the entry id; for a decision "<credential>:<nonce>"
    outcome: str  # ack | refused | unknown | error
    order: int  # when the answer (or its absence) was recorded, over all clients
    generation: int  # which server process the request was sent to
    status: int | None = None
    id: str | None = None  # acknowledged: the id the server returned
    index: int | None = None  # acknowledged: the index the server returned
    decision: str | None = None  # an acknowledged decision: allow | deny
    detail: str = ""


@dataclass(frozen=True)
class Served:
    """A checkpoint as served (``GET /v1/log/checkpoint``), verified under the pinned key."""

    size: int
    root: bytes
    raw: bytes
    generation: int
    order: int


@dataclass
class Cred:
    id: str
    holder: SigningKey
    depth: int  # 0 for a grant
    expires_at: int
    max_uses: int | None
    max_children: int | None


class Recorder:
    """Everything the clients were told, in the order it was told (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._order = itertools.count()
        self.attempts: list[Attempt] = []
        self.served: list[Served] = []
        self.bad_checkpoints: list[str] = []  # served but not verifying under the pinned key

    def attempt(self, **fields: Any) -> Attempt:
        with self._lock:
            a = Attempt(order=next(self._order), **fields)
            self.attempts.append(a)
            return a

    def checkpoint(self, size: int, root: bytes, raw: bytes, generation: int) -> None:
        with self._lock:
            if self.served and self.served[-1].raw == raw:
                return  # the same note again: keep each distinct one once, in served order
            self.served.append(Served(size, root, raw, generation, next(self._order)))


# -- the final log, read back from the server -----------------------------------------------


@dataclass
class FinalLog:
    """The log's leaves as served at the end, re-hashed here into a tree of our own."""

    ids: list[str]
    entries: list[dict[str, Any]]
    tree: MemoryTree
    index_of: dict[str, int]
    accesses: dict[str, list[int]]  # "<credential>:<nonce>" -> indexes of access entries

    @property
    def size(self) -> int:
        return len(self.ids)

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, Any]]) -> FinalLog:
        """Rows as ``GET /v1/log/entries`` serves them to an operator: index, leaf_hash,
        time, id, entry. Each leaf hash is recomputed from the entry and time."""
        ids: list[str] = []
        entries: list[dict[str, Any]] = []
        tree = MemoryTree()
        index_of: dict[str, int] = {}
        accesses: dict[str, list[int]] = defaultdict(list)
        for row in rows:
            index = len(ids)
            if row["index"] != index:
                raise AssertionError(f"leaf {row['index']} served where {index} was expected")
            if "entry" not in row:
                raise AssertionError(f"the body of leaf {index} was not served to the operator")
            entry = entry_from_json(row["entry"])
            leaf = Leaf(entry, row["time"])
            if leaf.hash.hex() != row["leaf_hash"] or entry.id != row["id"]:
                raise AssertionError(f"leaf {index}: the served hash or id is not the entry's")
            if entry.id in index_of:
                raise AssertionError(f"entry {entry.id} is in the log twice")
            ids.append(entry.id)
            entries.append(row["entry"])
            tree.append(leaf.hash)
            index_of[entry.id] = index
            if entry.kind == "access":
                inv = row["entry"]["invocation"]
                accesses[f"{inv['credential']}:{inv['nonce']}"].append(index)
        return cls(ids, entries, tree, index_of, dict(accesses))


# -- the checks -------------------------------------------------------------------------------


@dataclass
class Findings:
    lost: list[str] = field(default_factory=list)  # acknowledged, not at its index
    present_but_refused: list[str] = field(default_factory=list)
    refused_after_ack: list[str] = field(default_factory=list)
    duplicate_decisions: list[str] = field(default_factory=list)  # a nonce logged twice
    accepted_forbidden: list[str] = field(default_factory=list)  # a MUST_REFUSE op acked
    server_errors: list[str] = field(default_factory=list)  # 5xx other than 503
    over_budget: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)  # inconsistent or rolled back
    other: list[str] = field(default_factory=list)  # start failures, audit, file vs API

    def problems(self) -> list[str]:
        out = []
        for name, items in vars(self).items():
            out += [f"{name}: {item}" for item in items]
        return out


def check_answers(attempts: Sequence[Attempt], final: FinalLog, findings: Findings) -> None:
    """Checks 1, 2 and 4 (what clients were told against the final log)."""
    groups: dict[tuple[str, str], list[Attempt]] = defaultdict(list)
    for a in sorted(attempts, key=lambda a: a.order):
        groups[(a.kind, a.key)].append(a)
        if a.outcome == "error":
            findings.server_errors.append(f"{a.op} {a.key[:16]}: {a.status} {a.detail}")
        if a.outcome == "ack" and a.op in MUST_REFUSE:
            findings.accepted_forbidden.append(f"{a.op} {a.key[:16]} at index {a.index}")
    for (kind, key), group in groups.items():
        acks = [a for a in group if a.outcome == "ack"]
        for ack in acks:
            if ack.index is None or not 0 <= ack.index < final.size:
                findings.lost.append(
                    f"{ack.op} {ack.id} acknowledged at {ack.index}, beyond the log's "
                    f"{final.size} leaves (generation {ack.generation})"
                )
            elif final.ids[ack.index] != ack.id:
                findings.lost.append(
                    f"{ack.op} {ack.id} acknowledged at {ack.index}, where the log has "
                    f"{final.ids[ack.index]} (generation {ack.generation})"
                )
            if kind == "entry" and ack.id != key:
                findings.lost.append(f"{ack.op} {key} acknowledged as another id, {ack.id}")
        if kind == "entry":
            present = [final.index_of[key]] if key in final.index_of else []
        else:
            present = final.accesses.get(key, [])
        told_maybe = [a for a in group if a.outcome in ("ack", "unknown", "error")]
        if present and not told_maybe:
            told = "; ".join(f"{a.status} {a.detail}" for a in group)
            findings.present_but_refused.append(
                f"{group[0].op} {key} is at {present} but every caller was told it failed: {told}"
            )
        if present and acks:
            late = [a for a in group if a.outcome == "refused" and a.order > acks[0].order]
            findings.refused_after_ack += [
                f"{a.op} {key}: refused ({a.status} {a.detail}) after it was acknowledged"
                for a in late
            ]
    for key, present in final.accesses.items():  # whoever sent it: an invocation is used once
        if len(present) > 1:
            findings.duplicate_decisions.append(f"invocation {key} logged at {present}")
    _check_budgets(final, findings)


def _check_budgets(final: FinalLog, findings: Findings) -> None:
    """No credential allowed more uses than its ``max_uses``, counting its subtree."""
    parent: dict[str, str | None] = {}
    max_uses: dict[str, int] = {}
    allowed: Counter[str] = Counter()
    for i, obj in enumerate(final.entries):
        if obj["kind"] in ("grant", "delegation"):
            parent[final.ids[i]] = obj.get("parent")
            if obj.get("max_uses") is not None:
                max_uses[final.ids[i]] = obj["max_uses"]
        elif obj["kind"] == "access" and obj["decision"] == "allow":
            cid: str | None = obj["invocation"]["credential"]
            while cid is not None:
                allowed[cid] += 1
                cid = parent.get(cid)
    for cid, limit in max_uses.items():
        if allowed[cid] > limit:
            findings.over_budget.append(f"{cid}: {allowed[cid]} uses allowed of {limit}")


def check_checkpoints(
    served: Sequence[Served],
    final: FinalLog,
    final_checkpoint: Served,
    proof: Callable[[int, int], list[bytes]],
    findings: Findings,
) -> int:
    """Check 3; ``proof(first, second)`` fetches a consistency proof. Returns how many
    checkpoints were checked."""
    everything = [*served, final_checkpoint]
    for cp in everything:
        if cp.size > final.size:
            findings.checkpoints.append(
                f"a checkpoint of size {cp.size} was served (generation {cp.generation}); "
                f"the final log has {final.size} leaves"
            )
        elif final.tree.root(cp.size) != cp.root:
            findings.checkpoints.append(
                f"the checkpoint of size {cp.size} (generation {cp.generation}) is not the "
                "root of the final log's first leaves"
            )
    pairs = [(a, b) for a, b in itertools.pairwise(everything)]
    pairs += [(cp, final_checkpoint) for cp in served]  # each one against the final log
    for a, b in pairs:
        if b.size < a.size:
            findings.checkpoints.append(
                f"size went back from {a.size} (generation {a.generation}) to {b.size} "
                f"(generation {b.generation})"
            )
            continue
        if a.size == 0:
            continue
        try:
            path = proof(a.size, b.size) if a.size < b.size else []
            verify_consistency(a.size, b.size, a.root, b.root, path)
        except (LineageError, httpx.HTTPError, KeyError, ValueError) as exc:
            findings.checkpoints.append(
                f"checkpoint {a.size} (generation {a.generation}) -> {b.size} (generation "
                f"{b.generation}): {exc}"
            )
    return len(everything)


# -- the server -------------------------------------------------------------------------------


class ServerProcess:
    """``lineage serve`` on one database, started and killed again and again."""

    def __init__(self, workdir: Path, db: Path, keys: Path, env: dict[str, str]):
        self.workdir, self.db, self.keys, self.env = workdir, db, keys, env
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.generation = 0
        self.log_path: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.generation += 1
        self.log_path = self.workdir / f"serve-{self.generation:04d}.log"
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [LINEAGE, "serve", "--db", self.db, "--keys", self.keys, "--port", str(self.port)],
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_serving(self) -> float:
        """Wait until it answers; a port taken meanwhile is given up for another, once."""
        assert self.proc is not None
        t = time.monotonic()
        for again in (True, False):
            try:
                wait_until_serving(self.base, self.proc, START_TIMEOUT)
                return time.monotonic() - t
            except RuntimeError as exc:
                tail = self.tail()
                if again and "address already in use" in tail.lower():
                    self.port = free_port()
                    self.start()
                    continue
                raise RuntimeError(f"generation {self.generation}: {exc}:\n{tail}") from None
        raise AssertionError("unreachable")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no lifespan."""
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> int | None:
        """SIGTERM (a clean shutdown); SIGKILL if that takes too long."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def tail(self, n: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def _cli(*args: object, cwd: Path) -> str:
    done = subprocess.run(
        [LINEAGE, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"lineage {' '.join(map(str, args))}: {done.stderr.strip()}")
    return done.stdout.strip()


# -- the clients ----------------------------------------------------------------------------


class Client(threading.Thread):
    """Appends and decisions in a loop; every answer goes to the recorder."""

    def __init__(self, harness: Harness, n: int, seed: int):
        super().__init__(name=f"kill-client-{n}", daemon=True)
        self.h = harness
        self.rng = random.Random(seed)
        self.crashed: BaseException | None = None

    def run(self) -> None:
        ops, weights = list(OPS), list(OPS.values())
        try:
            with httpx.Client(timeout=REQUEST_TIMEOUT) as self.http:
                while not self.h.stop.is_set():
                    op = self.rng.choices(ops, weights)[0]
                    getattr(self, "op_" + op.replace("-", "_"))()
        except BaseException as exc:  # a harness bug: reported, never hidden
            self.crashed = exc

    # -- sending, retrying what got no answer --------------------------------------------

    def send(
        self, op: str, kind: str, key: str, request: Callable[[], httpx.Response]
    ) -> Attempt | None:
        """Send until there is an answer; ``request`` builds a fresh request each time
        (a new DPoP proof, say) around the same signed entry or invocation."""
        delay = 0.02
        while True:
            generation = self.h.server.generation
            try:
                r = request()
            except httpx.TransportError as exc:
                self.h.rec.attempt(
                    op=op,
                    kind=kind,
                    key=key,
                    outcome="unknown",
                    generation=generation,
                    detail=type(exc).__name__,
                )
                if self.h.stop.wait(delay):
                    return None
                delay = min(delay * 2, 0.25)
                continue
            return self._answer(op, kind, key, generation, r)

    def _answer(self, op: str, kind: str, key: str, generation: int, r: httpx.Response):
        status = r.status_code
        common = dict(op=op, kind=kind, key=key, generation=generation, status=status)
        try:
            body = r.json()
        except ValueError:
            body = {}
        if 200 <= status < 300:
            if "lineage_index" in body:  # /oauth/token
                ident, index = body.get("access_token"), body.get("lineage_index")
            else:
                ident, index = body.get("id"), body.get("index")
            return self.h.rec.attempt(
                outcome="ack", id=ident, index=index, decision=body.get("decision"), **common
            )
        detail = f"{body.get('error', '')}: {body.get('detail') or body.get('error_description')}"
        outcome = "refused" if 400 <= status < 500 or status == 503 else "error"
        return self.h.rec.attempt(outcome=outcome, detail=detail[:300], **common)

    def post_entry(self, op: str, entry: Entry) -> Attempt | None:
        return self.send(
            op,
            "entry",
            entry.id,
            lambda: self.http.post(
                self.h.server.base + "/v1/entries",
                content=entry.raw,
                headers={"Content-Type": "application/json"},
            ),
        )

    def exchange(self, op: str, entry: Entry, holder: SigningKey) -> Attempt | None:
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token_type": SIGNED_ENTRY,
            "subject_token": base64.urlsafe_b64encode(entry.raw).rstrip(b"=").decode(),
        }

        def request() -> httpx.Response:
            url = self.h.server.base + "/oauth/token"
            return self.http.post(
                url, data=form, headers={"DPoP": make_proof(holder.seed, "POST", url)}
            )

        return self.send(op, "entry", entry.id, request)

    def access(self, op: str, cred: Cred, signer: SigningKey) -> Attempt | None:
        inv = sign_invocation(signer, cred.id, READ, int(time.time()))
        body = {"invocation": dict(inv.to_json()), "context": {}}
        return self.send(
            op,
            "access",
            f"{cred.id}:{inv.nonce}",
            lambda: self.http.post(
                self.h.server.base + "/v1/access",
                json=body,
                headers={"Authorization": f"Bearer {self.h.enforcement}"},
            ),
        )

    # -- the operations ------------------------------------------------------------------

    def _grant(self, ttl: int, holder: SigningKey) -> Entry:
        body = grant_body(
            ORIGIN,
            PRINCIPAL,
            holder.public,
            task={"id": "inbox-triage", "description": "kill bench"},
            scope=SCOPE,
            expires_at=int(time.time()) + ttl,
            max_depth=1,
            max_uses=self.rng.choice([None, None, 3, 8]),
            max_children=self.rng.choice([None, 2]),
        )
        return sign_entry(body, [self.h.alice])

    def _keep(self, a: Attempt | None, entry: Entry, holder: SigningKey, depth: int) -> None:
        if a is not None and a.outcome == "ack":
            obj = entry.obj
            self.h.remember(
                Cred(
                    entry.id,
                    holder,
                    depth,
                    obj["expires_at"],
                    obj.get("max_uses"),
                    obj.get("max_children"),
                )
            )

    def op_grant(self) -> None:
        holder = SigningKey.generate()
        entry = self._grant(1800, holder)
        self._keep(self.post_entry("grant", entry), entry, holder, 0)

    def op_token(self) -> None:
        holder = SigningKey.generate()
        entry = self._grant(1800, holder)
        self._keep(self.exchange("token", entry, holder), entry, holder, 0)

    def op_ceiling(self) -> None:
        self.post_entry("ceiling", self._grant(7200, SigningKey.generate()))

    def _delegation(self, scope: list[dict[str, Any]]) -> tuple[Entry, Cred, SigningKey] | None:
        parent = self.h.pick(self.rng, depth=0)
        if parent is None:
            return None
        holder = SigningKey.generate()
        uses = self.rng.choice([None, 2, 4])
        if parent.max_uses is not None:  # a child restates its parent's limits, or narrows
            uses = min(uses or parent.max_uses, parent.max_uses)
        body = delegation_body(
            ORIGIN,
            parent.id,
            holder.public,
            task={"id": "inbox-triage/read", "description": "kill bench"},
            scope=scope,
            expires_at=min(parent.expires_at, int(time.time()) + 1200),
            max_depth=0,
            max_uses=uses,
            max_children=None if parent.max_children is None else 0,
        )
        return sign_entry(body, [parent.holder]), parent, holder

    def op_delegation(self) -> None:
        made = self._delegation(NARROW)
        if made is None:
            return self.op_grant()
        entry, _, holder = made
        if self.rng.random() < 0.5:
            a = self.post_entry("delegation", entry)
        else:
            a = self.exchange("delegation", entry, holder)
        self._keep(a, entry, holder, 1)

    def op_widening(self) -> None:
        made = self._delegation(WIDER)
        if made is not None:
            self.post_entry("widening", made[0])

    def op_access(self) -> None:
        cred = self.h.pick(self.rng)
        if cred is None:
            return self.op_grant()
        self.access("access", cred, cred.holder)

    def op_forged(self) -> None:
        cred = self.h.pick(self.rng)
        if cred is not None:
            self.access("forged", cred, SigningKey.generate())

    def _policy(self, version: int) -> Entry:
        """A policy that changes no decision here (it is about payments); its rule id is
        unique, so that no two policy entries are the same entry."""
        document = {
            "rules": [
                {
                    "id": f"v{version}-{os.urandom(6).hex()}",
                    "match": {"type": "payments"},
                    "max_chain_depth": 3,
                }
            ]
        }
        body = {"kind": "policy", "v": 1, "log": ORIGIN, "version": version, "document": document}
        return sign_entry(body, [self.h.operator_key])

    def op_policy(self) -> None:
        version = self.h.next_policy_version()
        a = self.post_entry("policy", self._policy(version))
        if a is not None and a.outcome == "ack":
            self.h.policy_acked(version)

    def op_stale_policy(self) -> None:
        version = self.h.policy_version  # in force already, or overtaken: always refused
        if version >= 1:
            self.post_entry("stale-policy", self._policy(version))


class Poller(threading.Thread):
    """Fetches the checkpoint over and over, keeping each distinct one served."""

    def __init__(self, harness: Harness, interval: float = 0.05):
        super().__init__(name="kill-checkpoints", daemon=True)
        self.h, self.interval = harness, interval

    def run(self) -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT) as http:
            while not self.h.stop.wait(self.interval):
                generation = self.h.server.generation
                try:
                    r = http.get(self.h.server.base + "/v1/log/checkpoint")
                except httpx.TransportError:
                    continue
                if r.status_code != 200:
                    if r.status_code >= 500 and r.status_code != 503:
                        self.h.rec.bad_checkpoints.append(f"{r.status_code} {r.text[:200]}")
                    continue
                self.h.record_checkpoint(r.content, generation)


# -- the harness ------------------------------------------------------------------------------


@dataclass
class Report:
    seed: int
    kills: int = 0
    startup_kills: int = 0  # killed before it answered /healthz
    generations: int = 0
    seconds: float = 0.0
    startup_seconds: list[float] = field(default_factory=list)
    final_size: int = 0
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)  # (op, outcome)
    decisions: Counter[str] = field(default_factory=Counter)  # allow / deny, acknowledged
    acked_entries: int = 0  # distinct entries acknowledged (appends)
    acked_decisions: int = 0  # distinct decisions acknowledged
    # requests that once got no answer: how many were in the log in the end, how many not
    unknown_present: int = 0
    unknown_absent: int = 0
    verify_seconds: float = 0.0
    checkpoints_checked: int = 0
    audit: dict[str, Any] = field(default_factory=dict)
    findings: Findings = field(default_factory=Findings)
    workdir: str = ""

    def problems(self) -> list[str]:
        return self.findings.problems()

    def count(self, outcome: str) -> int:
        return sum(n for (_, o), n in self.answers.items() if o == outcome)

    def summary(self) -> str:
        f = self.findings
        ops = sorted({op for op, _ in self.answers})
        lines = [
            f"seed {self.seed}; {self.seconds:.1f} s; workdir {self.workdir}",
            f"kills: {self.kills} ({self.startup_kills} while starting), "
            f"{self.generations} server processes; start to /healthz median "
            f"{_median(self.startup_seconds):.2f} s",
            f"final log: {self.final_size} leaves; acknowledged: {self.acked_entries} entries, "
            f"{self.acked_decisions} decisions ({self.decisions['allow']} allow, "
            f"{self.decisions['deny']} deny)",
            f"answers: {self.count('ack')} ack, {self.count('refused')} refused, "
            f"{self.count('unknown')} unknown (attempts with no answer), {self.count('error')} 5xx",
            f"requests left without an answer by a kill: {self.unknown_present} were "
            f"written anyway, {self.unknown_absent} were not",
        ]
        for op in ops:
            counts = ", ".join(
                f"{o} {self.answers[(op, o)]}"
                for o in ("ack", "refused", "unknown", "error")
                if self.answers[(op, o)]
            )
            lines.append(f"  {op:13} {counts}")
        lines += [
            f"lost={len(f.lost)} present-but-refused={len(f.present_but_refused)} "
            f"refused-after-ack={len(f.refused_after_ack)} "
            f"duplicate-decisions={len(f.duplicate_decisions)} "
            f"accepted-forbidden={len(f.accepted_forbidden)} over-budget={len(f.over_budget)} "
            f"server-errors={len(f.server_errors)}",
            f"checkpoints checked: {self.checkpoints_checked} (problems {len(f.checkpoints)})",
            f"lineage verify --db: {json.dumps(self.audit)}; checks took "
            f"{self.verify_seconds:.1f} s",
        ]
        problems = self.problems()
        lines.append("OK" if not problems else f"{len(problems)} PROBLEMS:")
        lines += [f"  {p}" for p in problems[:50]]
        return "\n".join(lines)


def _median(xs: Sequence[float]) -> float:
    return sorted(xs)[len(xs) // 2] if xs else 0.0


class Harness:
    """One ledger, one ``lineage serve`` at a time, clients and a checkpoint poller.

    with Harness(workdir, seed=1) as h:
        report = h.run(kills=5)
    """

    def __init__(
        self,
        workdir: Path,
        *,
        clients: int = 4,
        seed: int | None = None,
        checkpoint_interval: float = 0.2,
        uptime: tuple[float, float] = (0.5, 2.0),
        startup_kill_rate: float = 0.2,
        settle: float = 1.5,
    ):
        self.workdir = Path(workdir)
        self.seed = seed if seed is not None else random.randrange(2**32)
        self.rng = random.Random(self.seed)
        self.n_clients = clients
        self.uptime = uptime
        self.startup_kill_rate = startup_kill_rate
        self.settle = settle
        self.db, self.keys = self.workdir / "lineage.db", self.workdir / "lineage-keys"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LINEAGE_")}
        env["LINEAGE_CHECKPOINT_INTERVAL"] = str(checkpoint_interval)
        self.server = ServerProcess(self.workdir, self.db, self.keys, env)
        self.rec = Recorder()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._pool: list[Cred] = []
        self.policy_version = 0  # the highest version acknowledged
        self._policy_tried = 0
        self.clients: list[Client] = []
        self.poller: Poller | None = None

    # -- shared client state ------------------------------------------------------------------

    def remember(self, cred: Cred) -> None:
        with self._lock:
            self._pool.append(cred)
            del self._pool[:-POOL]

    def pick(self, rng: random.Random, depth: int | None = None) -> Cred | None:
        with self._lock:
            pool = [c for c in self._pool if depth is None or c.depth == depth]
            return rng.choice(pool) if pool else None

    def next_policy_version(self) -> int:
        with self._lock:
            self._policy_tried = max(self._policy_tried, self.policy_version) + 1
            return self._policy_tried

    def policy_acked(self, version: int) -> None:
        with self._lock:
            self.policy_version = max(self.policy_version, version)

    def record_checkpoint(self, raw: bytes, generation: int) -> None:
        try:
            cp = open_checkpoint(raw, self.vkey, ORIGIN).checkpoint
        except LineageError as exc:
            self.rec.bad_checkpoints.append(f"generation {generation}: {exc}")
            return
        self.rec.checkpoint(cp.size, cp.root_hash, raw, generation)

    # -- set-up and tear-down -----------------------------------------------------------------

    def setup(self) -> None:
        """A ledger made the way an operator makes one, with the command line."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        w, db, keys = self.workdir, self.db, self.keys
        created = _cli("init", "--db", db, "--keys", keys, "--origin", ORIGIN, cwd=w)
        # pinned here, from what `lineage init` printed: "verifier key: <vkey>"
        self.log_key = created.rsplit("verifier key: ", 1)[1].strip()
        self.vkey: Verifier = parse_vkey(self.log_key)
        _cli("principal", "add", PRINCIPAL, "--generate-key", "--db", db, "--keys", keys, cwd=w)
        self.enforcement = _cli(
            "token",
            "create",
            "--role",
            "enforcement",
            "--name",
            "gw-1",
            "--db",
            db,
            "--keys",
            keys,
            cwd=w,
        )
        self.operator = _cli(
            "token",
            "create",
            "--role",
            "operator",
            "--name",
            "op-1",
            "--db",
            db,
            "--keys",
            keys,
            cwd=w,
        )
        self.alice = load_key_file(keys / "principals" / f"{PRINCIPAL}.key")
        self.operator_key = load_key_file(keys / "operator.key")

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the clients and whatever server is running (always)."""
        self.stop.set()
        for t in [*self.clients, *([self.poller] if self.poller else [])]:
            t.join(REQUEST_TIMEOUT + 5)
        self.server.kill()

    # -- the run ---------------------------------------------------------------------------

    def run(self, kills: int) -> Report:
        report = Report(seed=self.seed, workdir=str(self.workdir))
        t0 = time.monotonic()
        self.setup()
        self.server.start()
        report.startup_seconds.append(self.server.wait_serving())
        self.clients = [Client(self, n, self.rng.randrange(2**32)) for n in range(self.n_clients)]
        self.poller = Poller(self)
        for t in [*self.clients, self.poller]:
            t.start()
        try:
            serving = True  # the first process always serves: it times a start
            for _ in range(kills):
                if serving:
                    time.sleep(self.rng.uniform(*self.uptime))
                else:  # while it starts: imports, opening the database, binding the port
                    time.sleep(self.rng.uniform(0, 1.2 * _median(report.startup_seconds)))
                    report.startup_kills += not self._answers()
                self.server.kill()
                report.kills += 1
                self.server.start()
                serving = self.rng.random() >= self.startup_kill_rate
                if serving:
                    report.startup_seconds.append(self.server.wait_serving())
            if not serving:
                report.startup_seconds.append(self.server.wait_serving())
            time.sleep(self.settle)  # the last process serves; retries get their answers
        except RuntimeError as exc:  # the ledger did not come back: a finding, not a crash
            report.findings.other.append(str(exc))
            report.generations = self.server.generation
            report.seconds = time.monotonic() - t0
            self.close()
            return report
        self.stop.set()
        for t in [*self.clients, self.poller]:
            t.join(REQUEST_TIMEOUT + 5)
        for c in self.clients:
            if c.crashed is not None:
                raise RuntimeError(f"{c.name} crashed") from c.crashed
        self.verify(report)
        report.generations = self.server.generation
        report.seconds = time.monotonic() - t0
        return report

    def _answers(self) -> bool:
        try:
            return httpx.get(self.server.base + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    # -- the checks --------------------------------------------------------------------------

    def verify(self, report: Report) -> None:
        t0 = time.monotonic()
        findings = report.findings
        base = self.server.base
        with httpx.Client(base_url=base, timeout=60) as http:
            size = http.get("/healthz").json()["tree_size"]
            final_cp = self._checkpoint_of(http, size)
            rows: list[dict[str, Any]] = []
            auth = {"Authorization": f"Bearer {self.operator}"}
            while len(rows) < size:
                r = http.get(
                    "/v1/log/entries", params={"start": len(rows), "end": size}, headers=auth
                )
                r.raise_for_status()
                rows += r.json()["entries"]
            final = FinalLog.from_rows(rows)

            def proof(first: int, second: int) -> list[bytes]:
                r = http.get("/v1/log/proof/consistency", params={"first": first, "second": second})
                r.raise_for_status()
                return [base64.b64decode(h) for h in r.json()["consistency"]]

            check_answers(self.rec.attempts, final, findings)
            findings.checkpoints += self.rec.bad_checkpoints
            report.checkpoints_checked = check_checkpoints(
                self.rec.served, final, final_cp, proof, findings
            )
        report.final_size = final.size
        for a in self.rec.attempts:
            report.answers[(a.op, a.outcome)] += 1
        acked = {(a.kind, a.key): a for a in self.rec.attempts if a.outcome == "ack"}
        report.acked_entries = sum(1 for kind, _ in acked if kind == "entry")
        report.acked_decisions = sum(1 for kind, _ in acked if kind == "access")
        report.decisions = Counter(a.decision for a in acked.values() if a.kind == "access")
        for key in {a.key for a in self.rec.attempts if a.outcome == "unknown"}:
            if key in final.index_of or key in final.accesses:
                report.unknown_present += 1
            else:
                report.unknown_absent += 1

        status = self.server.stop()  # a clean stop, then the file itself
        if status not in (0, -signal.SIGTERM):
            findings.other.append(f"the last server exited with {status}: {self.server.tail()}")
        self._check_file(final, report)
        report.verify_seconds = time.monotonic() - t0

    def _checkpoint_of(self, http: httpx.Client, size: int, timeout: float = 30) -> Served:
        """The checkpoint the server publishes of the final size (within a few intervals)."""
        deadline = time.monotonic() + timeout
        while True:
            r = http.get("/v1/log/checkpoint")
            r.raise_for_status()
            cp = open_checkpoint(r.content, self.vkey, ORIGIN).checkpoint
            if cp.size >= size:
                return Served(cp.size, cp.root_hash, r.content, self.server.generation, -1)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no checkpoint of size {size} within {timeout} s")
            time.sleep(0.05)

    def _check_file(self, final: FinalLog, report: Report) -> None:
        """What the file holds, with no server: the same leaves, and a passing audit."""
        log = open_ledger(self.db, log_key=self.log_key)  # read-only, the verifier key alone
        try:
            if log.size != final.size or log.root() != final.tree.root():
                report.findings.other.append(
                    f"the file holds {log.size} leaves with another root than the "
                    f"{final.size} served"
                )
        finally:
            log.close()
        done = subprocess.run(
            [LINEAGE, "verify", "--db", self.db, "--log-key", self.log_key, "--json"],
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=600,
        )
        try:
            report.audit = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            report.audit = {"ok": False, "error": done.stderr.strip()}
        if done.returncode != 0 or not report.audit.get("ok"):
            report.findings.other.append(f"lineage verify --db failed: {done.stdout}{done.stderr}")
        elif report.audit.get("size") != final.size:
            report.findings.other.append(
                f"lineage verify --db audited {report.audit.get('size')} leaves, not {final.size}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--min-uptime", type=float, default=0.5, help="seconds serving before a kill")
    p.add_argument("--max-uptime", type=float, default=3.0)
    p.add_argument("--startup-kill-rate", type=float, default=0.2)
    p.add_argument("--checkpoint-interval", type=float, default=0.2)
    p.add_argument("--workdir", type=Path, default=None, help="default: a fresh temporary one")
    p.add_argument("--keep", action="store_true", help="keep the workdir even when all is well")
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lineage-kill-"))
    with Harness(
        workdir,
        clients=args.clients,
        seed=args.seed,
        checkpoint_interval=args.checkpoint_interval,
        uptime=(args.min_uptime, args.max_uptime),
        startup_kill_rate=args.startup_kill_rate,
    ) as h:
        report = h.run(args.kills)
    print(report.summary())
    if report.problems():
        print(f"kept {workdir} (server logs serve-NNNN.log, the database)")
        return 1
    if not args.keep and args.workdir is None:
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
