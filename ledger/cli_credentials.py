"""``lineage`` commands for principals and credentials, export and the demo.

    lineage keygen FILE                                   an agent or principal key file
    lineage principal add NAME --public-key K [--role R ...]   K from the principal's keygen
    lineage principal add NAME --generate-key [--key-file F]   demos and tests only
    lineage grant --principal NAME --holder K --task ID --scope JSON [--ttl S] ...
    lineage delegate --parent ID --key F --holder K --task ID --scope JSON ...
    lineage revoke [ID | --holder K] (--key F | --operator) [--reason R]
    lineage policy set (JSON | @file) / lineage policy show
    lineage export [--format bundle|jsonl|csv|dot] [--principal P] [--since T] [--until T]
                   [--credential ID] [--since-checkpoint OLD]
    lineage demo [--db PATH]

Scopes are JSON (inline, or ``@file``). Times are Unix seconds or RFC 3339 with
an explicit offset (``2026-11-01T09:00:00Z``, ``...+02:00``): a time without one
is refused, naming the option, since it would mean another moment on a machine
in another time zone. Signing happens here, with the signing party's own key
file; the ledger only checks and appends.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from lineage.verifier.bodies import delegation_body, grant_body, revocation_body
from lineage.verifier.entry import sign_entry
from lineage.verifier.errors import FormatError, LineageError
from lineage.verifier.keys import PublicKey, SigningKey, key_file_text

from .cli_common import DbOption, KeysOption, app, fail, open_for_reading
from .config import load_settings
from .demo import run_demo
from .errors import ConfigError, RejectedEntry
from .export import (
    credential_bundle,
    older_checkpoint_size,
    principal_bundle,
    rows_csv,
    rows_dot,
    rows_jsonl,
)
from .invites import InviteStore
from .issuance import binding_body
from .keys import check_principal_name, keys_dir, principal_key_file, read_seed_file, write_secret
from .ledger import DEFAULT_DB, open_ledger
from .query import Filter
from .store import SQLiteStore

__all__: list[str] = []

principal_app = typer.Typer(no_args_is_help=True, help="Principals: humans and their keys.")
app.add_typer(principal_app, name="principal")
policy_app = typer.Typer(no_args_is_help=True, help="The organisation's logged policy.")
app.add_typer(policy_app, name="policy")


RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


def _time(value: str | None, option: str) -> int | None:
    """Unix seconds, or an RFC 3339 time: an explicit offset, ``Z`` or ``±HH:MM``.

    A time without an offset is refused rather than read in this machine's time zone,
    which would move the moment by up to 14 hours from one machine to another.
    """
    if value is None:
        return None
    try:
        if value.isascii() and value.isdigit():
            return int(value)
        if RFC3339.fullmatch(value):  # RFC 3339 §5.6: T and Z in either case
            moment = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
            return int(moment.timestamp())
        naive = datetime.fromisoformat(value).utcoffset() is None
        if not naive:  # an offset, but not RFC 3339's (+0200, +02): refuse, do not guess
            raise ValueError(value)
    except (ValueError, OverflowError):
        raise fail(
            f"{option}: {value!r} is neither Unix seconds nor an RFC 3339 time "
            "(e.g. 2026-11-01T09:00:00Z or 2026-11-01T10:00:00+01:00)",
            2,
        ) from None
    example = value + ("Z" if "T" in value or " " in value else "T00:00:00Z")
    raise fail(
        f"{option}: {value!r} has no UTC offset; give one (e.g. {example} for UTC) "
        "so that it names the same moment on every machine",
        2,
    )


def _json(value: str) -> Any:
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"not JSON: {exc}", 2) from None


def _holder(holder: str | None, holder_key: Path | None) -> PublicKey:
    if (holder is None) == (holder_key is None):
        raise fail("give exactly one of --holder KEY and --holder-key FILE", 2)
    try:
        return PublicKey.from_b64(holder) if holder else read_seed_file(holder_key).public
    except (FormatError, ConfigError) as exc:
        raise fail(f"holder: {exc}", 2) from None


@policy_app.command("set")
def policy_set(
    document: Annotated[str, typer.Argument(help="policy JSON, or @file (docs/POLICY.md)")],
    db: DbOption = Path(DEFAULT_DB),
    keys: KeysOption = None,
) -> None:
    """Log a new policy version, signed by the operator key; refused if it does not parse."""
    try:
        log = open_ledger(db, keys)
        version = log.state().policy_version + 1
        body = {
            "kind": "policy",
            "v": 1,
            "log": log.origin,
            "version": version,
            "document": _json(document),
        }
        result = log.append_as("operator", body)
        log.close()
    except LineageError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"policy version {version} logged at index {result.index}")


@policy_app.command("show")
def policy_show(db: DbOption = Path(DEFAULT_DB), keys: KeysOption = None) -> None:
    """Print the policy in force (version and document)."""
    try:
        state = open_for_reading(db, keys).state()
    except LineageError as exc:
        raise fail(str(exc)) from None
    if state.policy is None:
        typer.echo("no policy logged (version 0: every decision is the chain's alone)")
        return
    typer.echo(
        json.dumps(
            {"version": state.policy.version, "document": state.policy.document},
            indent=2,
            sort_keys=True,
        )
    )


@app.command()
def keygen(path: Path) -> None:
    """Create an Ed25519 key file (owner-only) and print its public key."""
    try:
        key = SigningKey.generate()
        write_secret(path, key_file_text(key))
    except LineageError as exc:
        raise fail(str(exc)) from None
    typer.echo(key.public.b64)


@principal_app.command("invite")
def principal_invite(
    name: Annotated[str, typer.Argument(help="the principal's name, e.g. alice@corp")],
    role: Annotated[list[str] | None, typer.Option(help="organisational role (repeatable)")] = None,
    ttl: Annotated[int, typer.Option(help="seconds the link stays good (1 to 604800)")] = 900,
    url: Annotated[
        str | None,
        typer.Option(
            help="the service's address as the principal's browser reaches it "
            "(default: public_url, else http://HOST:PORT of the settings)"
        ),
    ] = None,
    db: DbOption = Path(DEFAULT_DB),
) -> None:
    """Print a one-time, short-lived enrolment link for NAME (the real way a person gets a
    key: their browser makes it and keeps it; only its public half is bound).

    Send the link to the person. Opening it, their browser makes a non-extractable
    Ed25519 key, proves it holds it, and the service binds it to NAME in the log. The
    link works once and expires after --ttl seconds; only a hash of it is stored.
    """
    try:
        check_principal_name(name)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    settings = load_settings()
    base = (url or settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    try:
        store = SQLiteStore(db)
        try:
            invite, secret = InviteStore(store).create(name, role or (), ttl)
        finally:
            store.close()
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    except LineageError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{base}/enroll#invite={secret}")
    typer.echo(
        f"invitation {invite.id} for {name}: one use, until "
        f"{datetime.fromtimestamp(invite.expires, UTC):%Y-%m-%dT%H:%M:%SZ}; shown only once",
        err=True,
    )


@principal_app.command("keys")
def principal_keys(
    name: Annotated[str, typer.Argument(help="the principal's name")],
    as_json: Annotated[bool, typer.Option("--json", help="a JSON array")] = False,
    db: DbOption = Path(DEFAULT_DB),
    keys: KeysOption = None,
) -> None:
    """The keys bound to NAME, one per enrolled browser or key file, active or retired."""
    log = open_for_reading(db, keys)
    try:
        found = [k for k in log.state().principal_keys(name)]
    finally:
        log.close()
    rows = [
        {"kid": k.key.kid, "roles": list(k.roles), "bound": k.added, "retired": k.retired}
        for k in found
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo(f"no key is bound to {name}", err=True)
    for r in rows:
        state = f"retired at index {r['retired']}" if r["retired"] is not None else "active"
        typer.echo(f"{r['kid']}  bound at index {r['bound']}  {state}")


@principal_app.command("retire")
def principal_retire(
    kid: Annotated[str, typer.Argument(help="the key's id (`lineage principal keys NAME`)")],
    db: DbOption = Path(DEFAULT_DB),
    keys: KeysOption = None,
) -> None:
    """Retire one of a principal's keys (a lost laptop, a browser given up): a logged
    `retire` signed by the operator. The principal's other keys stay; what the retired
    key signed before stays valid, and it signs nothing from now on."""
    try:
        log = open_ledger(db, keys)
        try:
            record = log.state().key(kid)
            if record is None or record.principal is None:
                raise fail(f"no principal's key {kid} (lineage principal keys NAME)")
            if record.retired is not None:
                raise fail(f"{kid} ({record.principal}) was retired at index {record.retired}")
            body = {"kind": "key", "v": 1, "log": log.origin, "op": "retire", "key": record.key.b64}
            appended = log.append_as("operator", body)
        finally:
            log.close()
    except LineageError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"retired {kid} of {record.principal} at index {appended.index}")


@principal_app.command("add")
def principal_add(
    name: Annotated[str, typer.Argument(help="the principal's name, e.g. alice@corp")],
    public_key: Annotated[
        str | None,
        typer.Option(
            help="the public key the principal printed with `lineage keygen FILE` on their "
            "own machine: only they can then sign as NAME"
        ),
    ] = None,
    generate_key: Annotated[
        bool,
        typer.Option(
            "--generate-key",
            help="for demos and tests: create the principal's key here; the operator then "
            "holds the principal's key and can sign as them",
        ),
    ] = False,
    key_file: Annotated[
        Path | None,
        typer.Option(help="with --generate-key: where (default KEYS/principals/NAME.key)"),
    ] = None,
    role: Annotated[list[str] | None, typer.Option(help="organisational role (repeatable)")] = None,
    db: DbOption = Path(DEFAULT_DB),
    keys: KeysOption = None,
) -> None:
    """Bind NAME to a public key in a public `key` entry signed by the operator: for
    service accounts, not people.

    A person enrols a browser instead: `lineage principal invite alice@corp` prints a
    one-time link, and their browser makes a key that never leaves it. A service account
    makes its key on its own machine (`lineage keygen bot.key` prints its public half)
    and you bind only that: `lineage principal add bot@corp --public-key KEY`.
    --generate-key is for demos and tests: the key is created here, so whoever holds the
    key directory can sign grants as the principal.
    """
    try:
        check_principal_name(name)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    if (public_key is None) == (not generate_key):
        raise fail(
            "give --public-key KEY (the principal runs `lineage keygen FILE` on their own "
            "machine and sends you the public key it prints), or --generate-key for demos "
            "and tests",
            2,
        )
    if key_file is not None and not generate_key:
        raise fail("--key-file goes with --generate-key", 2)
    try:
        key = PublicKey.from_b64(public_key) if public_key is not None else None
    except FormatError as exc:
        raise fail(f"--public-key: {exc}", 2) from None
    created: Path | None = None
    try:
        log = open_ledger(db, keys)
        try:
            signing = SigningKey.generate() if generate_key else None
            key = signing.public if signing is not None else key
            binding = binding_body(log.origin, name, key, role or ())
            if signing is not None:
                path = key_file or principal_key_file(keys_dir(keys), name)
                write_secret(path, key_file_text(signing))
                created = path
            try:
                result = log.append_as("operator", binding)
            except (RejectedEntry, FormatError):  # refused: nothing is bound to that key
                if created is not None:
                    created.unlink(missing_ok=True)
                raise
        finally:
            log.close()
    except LineageError as exc:
        raise fail(str(exc)) from None
    if created is None:
        where = "key held by the principal"
    else:
        where = (
            f"key file {created} (owner-only; demos and tests: you hold this key; a person "
            f"enrols a browser instead: lineage principal invite {name})"
        )
    typer.echo(f"bound {name} to {key.b64} at index {result.index}; {where}")


def _credential(
    *,
    task: str,
    description: str,
    scope: str,
    ttl: int | None,
    expires_at: str | None,
    max_uses: int | None,
    max_depth: int,
    max_children: int | None,
    rate: str | None,
    agent: str | None,
    not_before: str | None,
    now: int,
    ttl_default: int,
) -> dict[str, Any]:
    if rate is not None:
        count, _, window = rate.partition("/")
        if not (count.isdigit() and window.isdigit()):
            raise fail("--rate is COUNT/WINDOW_SECONDS, e.g. 10/60", 2)
        rate_obj = {"count": int(count), "window": int(window)}
    else:
        rate_obj = None
    expiry = _time(expires_at, "--expires-at") if expires_at else now + (ttl or ttl_default)
    return {
        "task": {"id": task, "description": description},
        "scope": _json(scope),
        "expires_at": expiry,
        "max_uses": max_uses,
        "max_depth": max_depth,
        "max_children": max_children,
        "rate": rate_obj,
        "agent": agent,
        "not_before": _time(not_before, "--not-before"),
    }


Task = Annotated[str, typer.Option(help="task id, e.g. inbox-triage")]
Scope = Annotated[str, typer.Option(help="authorisation details, JSON or @file")]
Ttl = Annotated[int | None, typer.Option(min=1, help="lifetime in seconds (default 900)")]


@app.command()
def grant(
    principal: Annotated[str, typer.Option(help="the granting principal's name")],
    task: Task,
    scope: Scope,
    holder: Annotated[str | None, typer.Option(help="the agent's public key")] = None,
    holder_key: Annotated[Path | None, typer.Option(help="the agent's key file")] = None,
    principal_key: Annotated[Path | None, typer.Option(help="principal key file")] = None,
    description: str = "",
    ttl: Ttl = None,
    expires_at: str | None = None,
    not_before: str | None = None,
    max_uses: Annotated[int | None, typer.Option(min=1)] = None,
    max_depth: Annotated[int, typer.Option(min=0)] = 1,
    max_children: Annotated[int | None, typer.Option(min=0)] = None,
    rate: Annotated[str | None, typer.Option(help="COUNT/WINDOW, e.g. 10/60")] = None,
    agent: str | None = None,
    db: DbOption = Path(DEFAULT_DB),
    keys: KeysOption = None,
) -> None:
    """Sign a grant with the principal's key and append it; prints the credential handle."""
    holder_key_ = _holder(holder, holder_key)
    try:
        signer = principal_key or principal_key_file(keys_dir(keys), principal)
    except ConfigError as exc:
        raise fail(f"--principal: {exc}", 2) from None
    limits = dict(
        task=task,
        description=description,
        scope=scope,
        ttl=ttl,
        expires_at=expires_at,
        max_uses=max_uses,
        max_depth=max_depth,
        max_children=max_children,
        rate=rate,
        agent=agent,
        not_before=not_before,
    )
    _issue(
        lambda origin, fields: grant_body(origin, principal, holder_key_, **fields),
        signer,
        db,
        keys,
        limits,
    )


@app.command()
def delegate(
    parent: Annotated[str, typer.Option(help="the parent credential's handle")],
    key: Annotated[Path, typer.Option(help="the parent holder's key file (signs)")],
    task: Task,
    scope: Scope,
    holder: Annotated[str | None, typer.Option(help="the sub-agent's public key")] = None,
    holder_key: Annotated[Path | None, typer.Option(help="the sub-agent's key file")] = None,
    description: str = "",
    ttl: Ttl = None,
    expires_at: str | None = None,
    not_before: str | None = None,
    max_uses: Annotated[int | None, typer.Option(min=1)] = None,
    max_depth: Annotated[int, typer.Option(min=0)] = 0,
    max_children: Annotated[int | None, typer.Option(min=0)] = None,
    rate: Annotated[str | None, typer.Option(help="COUNT/WINDOW, e.g. 10/60")] = None,
    agent: str | None = None,
    db: DbOption = Path(DEFAULT_DB),
    keys: KeysOption = None,
) -> None:
    """Sign a narrower credential with the parent holder's key; refused if it widens."""
    holder_key_ = _holder(holder, holder_key)
    limits = dict(
        task=task,
        description=description,
        scope=scope,
        ttl=ttl,
        expires_at=expires_at,
        max_uses=max_uses,
        max_depth=max_depth,
        max_children=max_children,
        rate=rate,
        agent=agent,
        not_before=not_before,
    )
    _issue(
        lambda origin, fields: delegation_body(origin, parent, holder_key_, **fields),
        key,
        db,
        keys,
        limits,
        parent=parent,
    )


def _issue(
    make_body,
    signer: Path,
    db: Path,
    keys: Path | None,
    limits: dict[str, Any],
    parent: str | None = None,
) -> None:
    """Build the credential fields, sign the body with ``signer``'s key file, append."""
    try:
        settings = load_settings()
        signing = read_seed_file(signer)
        log = open_ledger(db, keys, settings=settings)
        fields = _credential(**limits, now=int(log.clock()), ttl_default=settings.ttl_default)
        parent_rec = log.state().credential(parent) if parent else None
        if parent_rec is not None and limits["ttl"] is None and limits["expires_at"] is None:
            # by default a child lives as long as it may: never past its parent
            fields["expires_at"] = min(
                fields["expires_at"], parent_rec.credential.limits.expires_at
            )
        result = log.append(sign_entry(make_body(log.origin, fields), [signing]))
        log.close()
    except LineageError as exc:
        field = getattr(exc, "field", None)
        raise fail(f"{exc}" + (f" [field: {field}]" if field else "")) from None
    typer.echo(result.id)


@app.command()
def revoke(
    credential: Annotated[str | None, typer.Argument(help="credential to revoke")] = None,
    holder: Annotated[str | None, typer.Option(help="revoke every credential of this key")] = None,
    key: Annotated[Path | None, typer.Option(help="signer's key file")] = None,
    operator: Annotated[bool, typer.Option(help="sign with the operator key")] = False,
    reason: str = "",
    db: DbOption = Path(DEFAULT_DB),
    keys: KeysOption = None,
) -> None:
    """Revoke a credential and its subtree, or every credential bound to a key."""
    if (credential is None) == (holder is None) or (key is None) == (not operator):
        raise fail("give a CREDENTIAL or --holder, and --key FILE or --operator", 2)
    try:
        log = open_ledger(db, keys)
        body = revocation_body(
            log.origin,
            credential=credential,
            holder=PublicKey.from_b64(holder) if holder else None,
            reason=reason,
        )
        if operator:  # signed by the writer, with the operator key active then
            result = log.append_as("operator", body)
        else:
            result = log.append(sign_entry(body, [read_seed_file(key)]))
        log.close()
    except LineageError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"revoked at index {result.index}: {result.id}")


@app.command()
def export(
    format: Annotated[str, typer.Option(help="bundle, jsonl, csv or dot")] = "bundle",
    principal: str | None = None,
    credential: Annotated[str | None, typer.Option(help="one credential's evidence")] = None,
    since: Annotated[
        str | None, typer.Option(help="entries from this time (Unix, or RFC 3339 with an offset)")
    ] = None,
    until: Annotated[str | None, typer.Option(help="entries before this time")] = None,
    since_checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--since-checkpoint",
            help="an older checkpoint of this log (a saved `lineage log checkpoint`): the "
            "bundle proves the log only grew since, for `lineage-verify --since FILE`",
        ),
    ] = None,
    db: DbOption = Path(DEFAULT_DB),
    keys: KeysOption = None,
) -> None:
    """Export evidence to standard output (everything, when unfiltered).

    A bundle with --since/--until holds every entry of the window about the principal
    and what proves them (their chains up to the grant, even when it is older).
    """
    if format not in ("bundle", "jsonl", "csv", "dot"):
        raise fail(f"unknown format {format!r}", 2)
    if since_checkpoint is not None and format != "bundle":
        raise fail("--since-checkpoint goes with --format bundle", 2)
    start, end = _time(since, "--since"), _time(until, "--until")
    older = None
    if since_checkpoint is not None:
        try:
            older = since_checkpoint.read_bytes()
        except OSError as exc:
            raise fail(f"--since-checkpoint: {exc.strerror}: {since_checkpoint}", 2) from None
    try:
        log = open_for_reading(db, keys)
        if format == "bundle":
            from_size = None if older is None else older_checkpoint_size(log, older)
            doc = (
                credential_bundle(log, credential, since=from_size)
                if credential
                else principal_bundle(log, principal, start, end, since=from_size)
            )
            sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
            return
        f = Filter(principal=principal, since=start, until=end)
        rows = {"jsonl": rows_jsonl, "csv": rows_csv, "dot": rows_dot}[format](log, f)
        for chunk in rows:
            sys.stdout.write(chunk)
    except LineageError as exc:
        raise fail(str(exc)) from None


# Steps a layer above adds to `lineage demo` (the service adds its gateway step).
DEMO_STEPS: list = []


@app.command()
def demo(db: DbOption = Path(DEFAULT_DB), keys: KeysOption = None) -> None:
    """Tell the whole story on a fresh ledger (refuses one that already holds entries)."""
    try:
        run_demo(db, keys, typer.echo, load_settings(), extra=tuple(DEMO_STEPS))
    except LineageError as exc:
        raise fail(str(exc)) from None
    keys_arg = f" --keys {keys}" if keys else ""
    typer.echo(f"Now `lineage serve --db {db}{keys_arg}` serves this ledger.")
