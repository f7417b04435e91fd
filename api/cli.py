"""``lineage``: the ledger's command line plus the commands that need the service.

    lineage serve [--db PATH] [--host 127.0.0.1] [--port 8000]
    lineage gateway [--config lineage.toml] [--host 127.0.0.1] [--port 8080]
    lineage token create --role operator|auditor|enforcement --name NAME
    lineage token list [--json]
    lineage token revoke TOKEN_ID

Every other command is ``lineage.ledger.cli``'s; this module only adds these, so
the ledger never imports the web layer.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from lineage.ledger.cli import app
from lineage.ledger.cli_common import DbOption, KeysOption, fail
from lineage.ledger.cli_credentials import DEMO_STEPS
from lineage.ledger.config import load_settings
from lineage.ledger.keys import keys_dir
from lineage.ledger.ledger import DEFAULT_DB, init_ledger, open_ledger
from lineage.ledger.store import SQLiteStore
from lineage.ledger.tokens import ROLES, TokenInfo, TokenStore
from lineage.verifier.errors import LineageError

from .gateway.config import load_gateway_config
from .gateway.demo import gateway_step

__all__ = ["main"]

token_app = typer.Typer(
    no_args_is_help=True, help="API tokens for operators, auditors and enforcement points."
)
app.add_typer(token_app, name="token")
DEMO_STEPS.append(gateway_step)  # `lineage demo` shows the gateway too
log = logging.getLogger("lineage")


@app.command()
def serve(
    db: DbOption = Path(DEFAULT_DB),
    keys: KeysOption = None,
    host: Annotated[str | None, typer.Option(help="default 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default 8000")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file")] = None,
    trust_checkpoint: Annotated[
        Path | None,
        typer.Option(help="after a restore: the latest checkpoint the log published"),
    ] = None,
) -> None:
    """Run the service; creates the ledger (and its keys) on first start."""
    import uvicorn

    from .main import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        settings = load_settings(config)
        if not db.exists():
            init_ledger(db, keys, settings=settings).close()
            log.info("created ledger %s", db)
        ledger = open_ledger(db, keys, settings=settings)
        if trust_checkpoint is not None:
            ledger.trust(trust_checkpoint.read_bytes())
        ledger.refuse_untrusted()  # never serve a copy that might be behind what it published
    except OSError as exc:
        raise fail(f"{trust_checkpoint}: {exc.strerror}") from None
    except LineageError as exc:
        raise fail(str(exc)) from None
    try:
        gateway_cfg = load_gateway_config(config)
    except LineageError as exc:
        ledger.close()
        raise fail(str(exc)) from None
    log.info("ledger %s: log %s, %d leaves", db, ledger.origin, ledger.size)
    log.info("keys in %s/ (owner-only); verifier key: %s", keys_dir(keys), ledger.log_key.vkey)
    host, port = host or settings.host, port or settings.port
    log.info("auditors fetch the verifier key at http://%s:%d/v1/log/key", host, port)
    log.info("the explorer (auditor or operator token): http://%s:%d/ui", host, port)
    if gateway_cfg is not None and gateway_cfg.mount:
        names = ", ".join(gateway_cfg.upstreams) or "no upstreams"
        log.info("gateway at http://%s:%d%s (%s)", host, port, gateway_cfg.mount, names)
    app_ = create_app(ledger, settings, gateway=gateway_cfg)
    # proxy_headers: the peer is the client (a mounted gateway logs it as source_ip); an
    # operator behind a proxy on this host sets public_url, not X-Forwarded-*.
    uvicorn.run(app_, host=host, port=port, log_level="info", proxy_headers=False)


@app.command()
def gateway(
    config: Annotated[Path | None, typer.Option(help="TOML settings file with [gateway]")] = None,
    host: Annotated[str | None, typer.Option(help="default gateway.host, 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default gateway.port, 8080")] = None,
) -> None:
    """Run the gateway on its own: agents' requests, decided by the service at
    gateway.service, forwarded to the upstreams with secrets the agents never hold."""
    import uvicorn

    from .gateway.app import Gateway
    from .gateway.decider import RemoteDecider
    from .gateway.secrets import SecretCache, SecretError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = load_gateway_config(config)
    except LineageError as exc:
        raise fail(str(exc)) from None
    if cfg is None:
        raise fail("no [gateway] table: pass --config FILE or write one into lineage.toml")
    if not cfg.service or cfg.token is None:
        raise fail("gateway.service and gateway.token: the decision point and the token to ask it")
    try:
        token = SecretCache(cfg.token).get().reveal()
    except SecretError as exc:
        raise fail(f"gateway.token: {exc}") from None
    decider = RemoteDecider(cfg.service, token, cfg.log_key or None)
    host, port = host or cfg.host, port or cfg.port
    log.info("gateway on http://%s:%d for %s", host, port, ", ".join(cfg.upstreams) or "nothing")
    uvicorn.run(
        Gateway(cfg, decider),
        host=host,
        port=port,
        log_level="info",
        limit_concurrency=cfg.max_requests,  # beyond it, 503 at once rather than a queue
        timeout_keep_alive=5,
        proxy_headers=False,  # the logged source_ip is the peer, never X-Forwarded-For
        server_header=False,  # an upstream's Server and Date pass through, once
        date_header=False,
    )


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help=f"one of {', '.join(ROLES)}")],
    name: Annotated[str, typer.Option(help="who holds it, e.g. gateway-1")],
    db: DbOption = Path(DEFAULT_DB),
    keys: KeysOption = None,
) -> None:
    """Create a token and print it once (only its hash is stored)."""
    try:
        ledger = open_ledger(db, keys)
        try:
            token, secret = TokenStore(ledger.store).create(role, name)
        finally:
            ledger.close()
    except (LineageError, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(secret)
    typer.echo(
        f"created {token.role} token {token.id} for {token.name}; it is shown only once", err=True
    )


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tokens(db: Path) -> tuple[SQLiteStore, TokenStore]:
    """The token table needs no keys: whoever may write the database file may revoke."""
    store = SQLiteStore(db)
    return store, TokenStore(store)


@token_app.command("list")
def token_list(
    db: DbOption = Path(DEFAULT_DB),
    as_json: Annotated[bool, typer.Option("--json", help="a JSON array")] = False,
) -> None:
    """List every token: id, role, name, created, revoked (never a secret or its hash)."""
    try:
        store, tokens = _tokens(db)
        try:
            found = tokens.list()
        finally:
            store.close()
    except LineageError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps([_token_json(t) for t in found]))
        return
    if not found:
        typer.echo("no tokens", err=True)
    width = max((len(t.name) for t in found), default=0)
    for t in found:
        line = f"{t.id}  {t.role:<11}  {t.name:<{width}}  created {_iso(t.created)}"
        typer.echo(line + (f"  revoked {_iso(t.revoked)}" if t.revoked is not None else ""))


def _token_json(t: TokenInfo) -> dict[str, str | None]:
    return {
        "id": t.id,
        "role": t.role,
        "name": t.name,
        "created": _iso(t.created),
        "revoked": None if t.revoked is None else _iso(t.revoked),
    }


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="the id `lineage token list` shows")],
    db: DbOption = Path(DEFAULT_DB),
) -> None:
    """Revoke a token: every process serving the database refuses it from the next request."""
    try:
        store, tokens = _tokens(db)
        try:
            token, revoked_now = tokens.revoke(token_id)
        finally:
            store.close()
    except LineageError as exc:
        raise fail(str(exc)) from None
    if revoked_now:
        typer.echo(f"revoked {token.role} token {token.id} ({token.name})")
    else:
        when = "" if token.revoked is None else f" at {_iso(token.revoked)}"
        typer.echo(
            f"{token.role} token {token.id} ({token.name}) was already revoked{when}; "
            "nothing changed"
        )


def main() -> None:
    from lineage.ledger.cli import main as ledger_main

    ledger_main()
