"""The demo's gateway step: an agent reads mail through the gateway, never holding the key.

``lineage demo`` tells it after the first access (``lineage.ledger.demo.run_demo(extra=)``):
a mail API is started on 127.0.0.1 that answers only its own key; a gateway before it reads
that key from a file the agent never sees; triage delegates to a new 'fetcher' agent, whose
requests through the gateway are decided, logged and forwarded with the key attached.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from lineage.client.flows import Agent
from lineage.client.gateway import gateway_session
from lineage.ledger.config import Settings
from lineage.ledger.log import Log
from lineage.ledger.tokens import TokenStore
from lineage.verifier.bodies import delegation_body
from lineage.verifier.entry import sign_entry
from lineage.verifier.keys import SigningKey

from ..service import Service
from .app import Gateway
from .config import parse_gateway
from .decider import LocalDecider

__all__ = ["gateway_step"]

MAIL = "https://mail.example.com:443"


class _MailApi:
    """alice's mailbox, for whoever shows ``X-Api-Key``; it counts what it served."""

    def __init__(self, key: str):
        self.key, self.served = key, 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        ok = headers.get(b"x-api-key") == self.key.encode()
        status = 200 if ok else 401
        body: dict[str, Any] = {"error": "a valid X-Api-Key is required"}
        if ok:
            self.served += 1
            body = {
                "id": scope["path"].rsplit("/", 1)[-1],
                "from": "billing@vendor.example",
                "subject": "Invoice 2026-11",
            }
        data = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": data})


@contextmanager
def _serving(app: Any) -> Iterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="lineage-demo", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("a demo server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def gateway_step(
    log: Log,
    settings: Settings,
    grant: str,
    triage: SigningKey,
    say: Callable[[str], None],
    number: int,
) -> None:
    key = secrets.token_urlsafe(24)
    mail = _MailApi(key)
    with tempfile.TemporaryDirectory() as tmp, _serving(mail) as upstream:
        key_file = Path(tmp) / "mail.key"
        key_file.touch(0o600)
        key_file.write_text(key + "\n")
        cfg = parse_gateway(
            {
                "name": "demo-gateway",
                "upstreams": {
                    "mail": {
                        "url": upstream,
                        "type": "email",
                        "location": MAIL,
                        "resource": "mailbox:alice",
                        "actions": {"GET": "read", "DELETE": "delete"},
                        "secret": {"from": "file", "path": str(key_file)},
                        "attach": "header:X-Api-Key",
                    }
                },
            }
        )
        service = Service(log, settings, TokenStore(log.store))
        fetcher = Agent.ephemeral()
        now = int(log.clock())
        entry = sign_entry(
            delegation_body(
                log.origin,
                grant,
                fetcher.key.public,
                agent="fetcher",
                task={"id": "inbox-triage/fetch", "description": "Fetch invoices"},
                scope=[
                    {
                        "type": "email",
                        "actions": ["read"],
                        "locations": [MAIL],
                        "resources": ["mailbox:alice/inbox/*"],
                    }
                ],
                expires_at=now + min(300, settings.ttl_default),
                max_depth=0,
                max_children=0,
            ),
            [triage],
        )
        handle = log.append(entry).id
        gateway = Gateway(cfg, LocalDecider(service, cfg.name))
        with _serving(gateway) as base, gateway_session(base, fetcher, handle) as agent:
            read = agent.get(f"{MAIL}/inbox/msg-17")
            wiped = agent.delete(f"{MAIL}/inbox/msg-17")
        say(
            f"{number}. A gateway fronts the mail API, whose key only the gateway can read. "
            f"triage delegates 'fetcher' ({handle[:16]}…), which calls the real URL:"
        )
        access = read.headers.get("lineage-access", "")[:16]
        subject = read.json().get("subject")
        say(f"   GET {MAIL}/inbox/msg-17 -> {read.status_code} '{subject}' (access {access}…)")
        reason = wiped.json().get("error_description", "")
        say(f"   DELETE the same -> {wiped.status_code} DENY ({reason}); the API never saw it")
        say(
            f"   the mail API served {mail.served} request; fetcher never held its key "
            "(docs/GATEWAY.md)"
        )
