"""A real Lineage service for the API tests: uvicorn on 127.0.0.1, in a background thread.

    with running(tmp_path) as srv:            # a fresh ledger, alice bound, three tokens
        httpx.get(srv.url("/healthz"))
        srv.clock.advance(120)                 # the log's clock (real time plus an offset)

``running`` creates a ledger with ``lineage.ledger.ledger.init_ledger`` under ``tmp_path``,
binds ``alice@corp`` to a fixed key (an operator-signed ``key`` entry), creates an
operator, an auditor and an enforcement token, and serves
``lineage.api.main.create_app(log, settings, checkpoints=True)`` with a real
``uvicorn.Server`` on a free port. Leaving the block stops the server (which
closes the ledger).

The builders below make what a client makes: bodies from ``lineage.ledger.issuance``,
signed by the party whose authority they exercise, base64url for the token
exchange, DPoP proofs with ``lineage.client.dpop.make_proof``.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from lineage.api.main import create_app
from lineage.client.dpop import make_proof
from lineage.ledger.config import Settings
from lineage.ledger.issuance import bind_principal
from lineage.ledger.ledger import init_ledger
from lineage.ledger.log import Log
from lineage.ledger.tokens import TokenStore
from lineage.verifier.bodies import delegation_body, grant_body
from lineage.verifier.checkpoint import SignedCheckpoint, open_checkpoint
from lineage.verifier.entry import Entry, sign_entry
from lineage.verifier.invocation import SignedInvocation, sign_invocation
from lineage.verifier.keys import SigningKey
from lineage.verifier.note import parse_vkey

__all__ = [
    "CREDENTIAL",
    "MAIL",
    "ORIGIN",
    "SIGNED_ENTRY",
    "TOKEN_EXCHANGE",
    "OffsetClock",
    "Server",
    "b64u",
    "checkpoint_at_least",
    "free_port",
    "in_thread",
    "key",
    "read_scope",
    "request",
    "running",
    "wait_until_serving",
]

ORIGIN = "api-test.example/log"
MAIL = "https://mail.example.com:443"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
SIGNED_ENTRY = "urn:lineage:params:oauth:token-type:signed-entry"
CREDENTIAL = "urn:lineage:params:oauth:token-type:credential"
START_TIMEOUT = 10.0


class OffsetClock:
    """The log's clock: real time plus an offset the test moves forward by hand.

    Real time, so that DPoP proofs (checked against the server's wall clock) and
    invocations (checked against the log's clock) agree until a test advances it.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the log's clock only moves forward")
        self.offset += seconds


def key(name: str) -> SigningKey:
    """A fixed key per name, so that failures reproduce."""
    return SigningKey(hashlib.sha256(b"api test key: " + name.encode()).digest())


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def wait_until_serving(base: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait for a ``lineage serve`` started as ``process`` to answer ``/healthz`` at ``base``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_scope(**over: Any) -> list[dict[str, Any]]:
    """alice's mailbox, read only, from two senders (fields overridable)."""
    detail: dict[str, Any] = {
        "type": "email",
        "actions": ["read"],
        "locations": [MAIL],
        "resources": ["mailbox:alice/*"],
        "constraints": {"sender": {"in": ["a@vendor.example", "b@vendor.example"]}},
    }
    detail.update(over)
    return [detail]


def request(**over: Any) -> dict[str, Any]:
    """A request every ``read_scope`` credential permits."""
    out: dict[str, Any] = {
        "type": "email",
        "action": "read",
        "location": MAIL,
        "resource": "mailbox:alice/inbox/msg-1",
        "attributes": {"sender": "a@vendor.example"},
    }
    out.update(over)
    return out


@dataclass
class Server:
    """A running service and what a test needs to talk to it."""

    base: str
    log: Log
    clock: OffsetClock
    operator: str  # bearer secrets
    auditor: str
    enforcement: str
    alice: SigningKey = field(default_factory=lambda: key("alice@corp"))
    agent: SigningKey = field(default_factory=lambda: key("agent"))
    reader: SigningKey = field(default_factory=lambda: key("reader"))

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def now(self) -> int:
        return int(self.clock())

    def bearer(self, secret: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"}

    def dpop(
        self, holder: SigningKey, method: str, path: str, handle: str | None = None
    ) -> dict[str, str]:
        """Headers for a request as ``holder``: a DPoP proof, bound to ``handle`` if given."""
        proof = make_proof(holder.seed, method, self.url(path), access_token=handle)
        headers = {"DPoP": proof}
        if handle is not None:
            headers["Authorization"] = f"DPoP {handle}"
        return headers

    def size(self) -> int:
        """The tree size, as anyone sees it (``GET /healthz``)."""
        r = httpx.get(self.url("/healthz"), timeout=10)
        r.raise_for_status()
        return r.json()["tree_size"]

    # -- what clients build ----------------------------------------------------------------

    def grant(
        self,
        holder: SigningKey | None = None,
        *,
        ttl: int = 900,
        scope: Sequence[Mapping[str, Any]] | None = None,
        **limits: Any,
    ) -> Entry:
        """alice's grant to ``holder`` (default: the agent), signed by alice."""
        limits.setdefault("max_depth", 2)
        body = grant_body(
            ORIGIN,
            "alice@corp",
            (holder or self.agent).public,
            task={"id": "inbox-triage", "description": "Triage alice's inbox"},
            scope=scope if scope is not None else read_scope(),
            expires_at=self.now + ttl,
            **limits,
        )
        return sign_entry(body, [self.alice])

    def delegation(
        self,
        parent: str,
        signer: SigningKey,
        holder: SigningKey | None = None,
        *,
        ttl: int = 600,
        scope: Sequence[Mapping[str, Any]] | None = None,
        **limits: Any,
    ) -> Entry:
        """A delegation under ``parent``, signed by ``signer`` (the parent's holder)."""
        limits.setdefault("max_depth", 0)
        body = delegation_body(
            ORIGIN,
            parent,
            (holder or self.reader).public,
            task={"id": "inbox-triage/read", "description": "Read invoices"},
            scope=scope if scope is not None else read_scope(),
            expires_at=self.now + ttl,
            **limits,
        )
        return sign_entry(body, [signer])

    def exchange_form(self, entry: Entry, **extra: str) -> dict[str, str]:
        return {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token_type": SIGNED_ENTRY,
            "subject_token": b64u(entry.raw),
            **extra,
        }

    def exchange(self, entry: Entry, holder: SigningKey, **extra: str) -> httpx.Response:
        """POST /oauth/token with ``entry``, proving ``holder``'s key (DPoP)."""
        return httpx.post(
            self.url("/oauth/token"),
            data=self.exchange_form(entry, **extra),
            headers=self.dpop(holder, "POST", "/oauth/token"),
            timeout=10,
        )

    def invoke(
        self, holder: SigningKey, handle: str, req: Mapping[str, Any] | None = None
    ) -> SignedInvocation:
        return sign_invocation(holder, handle, dict(req or request()), self.now)

    def access(
        self, invocation: SignedInvocation, context: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        """POST /v1/access as the enforcement point."""
        body = {"invocation": dict(invocation.to_json()), "context": dict(context or {})}
        return httpx.post(
            self.url("/v1/access"), json=body, headers=self.bearer(self.enforcement), timeout=10
        )


def checkpoint_at_least(srv: Server, size: int, timeout: float = 10.0) -> SignedCheckpoint:
    """The latest checkpoint once it covers ``size`` leaves, verified under ``GET /v1/log/key``
    (the service publishes one every ``checkpoint_interval`` seconds when there are new leaves).
    """
    if size < 1:
        raise ValueError("a checkpoint covers at least the genesis")
    vkey = parse_vkey(httpx.get(srv.url("/v1/log/key"), timeout=10).text.strip())
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(srv.url("/v1/log/checkpoint"), timeout=10)
        r.raise_for_status()
        opened = open_checkpoint(r.content, vkey, ORIGIN)
        if opened.checkpoint.size >= size:
            return opened
        if time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint of size {size} within {timeout} s")
        time.sleep(0.05)


@contextmanager
def in_thread(config: uvicorn.Config) -> Iterator[int]:
    """Serve ``config`` (port 0: the kernel picks one) in a background thread until the block
    ends; yields the port it bound."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(START_TIMEOUT)
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT)


@contextmanager
def running(
    tmp_path: Path,
    settings: Settings | None = None,
    *,
    checkpoint_interval: float = 0.2,
    gateway: Any = None,
) -> Iterator[Server]:
    """A fresh ledger under ``tmp_path``, served by uvicorn on 127.0.0.1 until the block ends;
    with ``gateway`` (a ``GatewayConfig``), that ``[gateway]`` table too (mounted if it has a
    ``mount``)."""
    if not isinstance(tmp_path, Path):
        raise TypeError("running() takes the test's tmp_path")
    settings = settings or Settings(checkpoint_interval=checkpoint_interval)
    clock = OffsetClock()
    log = init_ledger(
        tmp_path / "lineage.db",
        tmp_path / "lineage-keys",
        origin=ORIGIN,
        clock=clock,
        settings=settings,
    )
    alice = key("alice@corp")
    log.append(bind_principal(ORIGIN, log.keys.operator, "alice@corp", alice.public))
    log.checkpoint()
    tokens = TokenStore(log.store)
    secrets = {
        role: tokens.create(role, f"{role}-1")[1] for role in ("operator", "auditor", "enforcement")
    }
    config = uvicorn.Config(
        create_app(log, settings, checkpoints=True, gateway=gateway),
        host="127.0.0.1",
        port=0,  # the kernel picks a free port; read it back once bound
        log_level="warning",
        lifespan="on",
    )
    try:
        with in_thread(config) as port:
            yield Server(
                f"http://127.0.0.1:{port}",
                log,
                clock,
                secrets["operator"],
                secrets["auditor"],
                secrets["enforcement"],
                alice=alice,
            )
    finally:
        log.close()  # idempotent: the app's lifespan closed it already
