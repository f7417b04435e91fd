"""The served OpenAPI document, made to say exactly what the server accepts and answers.

FastAPI writes the document from the routes: paths, parameters with the patterns and
ranges ``params`` declares (which FastAPI also enforces), form fields, models. What it
cannot know, ``install_openapi`` adds or corrects:

- errors: this service answers bad input with 400 and an OAuth error (``/oauth/*``) or an
  RFC 9457 problem (elsewhere), never FastAPI's 422; each operation documents exactly the
  error statuses it can give (``OPERATIONS``), every 401 with its ``WWW-Authenticate``;
- authentication: operator, auditor and enforcement-point bearer tokens, and DPoP
  (a credential handle or a principal name, with a proof), per operation;
- request bodies the handlers read themselves (``POST /v1/entries``: a signed entry) or
  declare loosely (the token exchange form, the invocation in ``POST /v1/access``, the
  result's ``upstream_status`` or ``failure``, one of them and never ``null``);
- optional parameters and form fields are absent or a value, never ``null``: FastAPI
  writes ``X | None`` as "X or null", and a client that sent ``null`` would be refused;
- a form field FastAPI requires cannot be empty: it reads an empty value as absent.

What no schema can say stays in descriptions: one parameter against another
(``index < tree_size``), against the log's current size, and signatures.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from lineage.verifier.invocation import MAX_INVOCATION_SIZE
from lineage.verifier.jcs import MAX_SAFE_INTEGER
from lineage.verifier.kinds import KINDS
from lineage.verifier.signed import KID, MAX_SIGS

from .params import HEX_ID_PATTERN

__all__ = ["OPERATIONS", "install_openapi"]

OAUTH_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
}
PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "error"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "error": {"type": "string"},
    },
}
STATUS = {
    "400": "Bad input: nothing was written",
    "401": "Missing or invalid credentials, DPoP proof or invocation",
    "403": "Authenticated, but not allowed",
    "404": "No such entry, credential or leaf",
    "409": "Conflicts with what the log holds: nothing was written",
    "413": "Request body over 1 MiB",
    "429": "Too many calls of this credential wait for approval already",
    "503": "The ledger cannot serve now",
}
WWW_AUTHENTICATE = {
    "description": "the schemes that would work (RFC 9110 §11.6.1), and the error",
    "required": True,
    "schema": {"type": "string"},
}

B64U = "^[A-Za-z0-9_-]+$"
SIGNATURE = {
    "type": "object",
    "required": ["kid", "sig"],
    "additionalProperties": False,
    "properties": {
        "kid": {"type": "string", "pattern": f"^{KID.pattern}$", "description": "key id"},
        "sig": {
            "type": "string",
            "pattern": "^[A-Za-z0-9_-]{86}$",
            "description": "Ed25519 signature, base64url",
        },
    },
}
SIGNED_ENTRY = {
    "type": "object",
    "description": "A signed entry (docs/FORMAT.md §4), in any JSON spelling: the server "
    "appends its canonical form. Its fields beyond these depend on its kind; whether it "
    "is valid (signatures, authority, the chain it extends) is for the log to say: 400.",
    "required": ["kind", "v", "log", "sigs"],
    "properties": {
        "kind": {"type": "string", "enum": list(KINDS)},
        "v": {"type": "integer", "enum": [1]},
        "log": {"type": "string", "description": "the log's origin"},
        "sigs": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_SIGS,
            "items": {"$ref": "#/components/schemas/Signature"},
        },
    },
}
INVOCATION = {
    "type": "object",
    "description": "The holder's signed invocation (docs/FORMAT.md §5), at most "
    f"{MAX_INVOCATION_SIZE} bytes as canonical JSON",
    "required": ["credential", "request", "nonce", "iat", "sigs"],
    "additionalProperties": False,
    "properties": {
        "credential": {"type": "string", "pattern": HEX_ID_PATTERN},
        "request": {"type": "object", "description": "what the holder asks to do"},
        "nonce": {"type": "string", "pattern": "^[A-Za-z0-9_-]{22,86}$"},
        "iat": {"type": "integer", "minimum": 1, "maximum": MAX_SAFE_INTEGER},
        "sigs": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {"$ref": "#/components/schemas/Signature"},
        },
    },
}
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "an operator, auditor or enforcement-point token (lineage token create)",
    },
    "dpop": {
        "type": "http",
        "scheme": "DPoP",
        "description": "Authorization: DPoP <credential handle> (its holder) or <principal "
        "name> (the human), with a DPoP header: a proof made with the holder's or a "
        "key bound to the principal (RFC 9449)",
    },
}
TOKENS = [{"bearer": []}]
CALLERS = [{"bearer": []}, {"dpop": []}]
ANYONE = [{}, {"bearer": []}, {"dpop": []}]  # more is shown to callers who may read it

# (method, path): the error statuses beyond 413 (any request body over 1 MiB) it can
# answer, and who may call it (None: anyone, and credentials are not read)
OPERATIONS: dict[tuple[str, str], tuple[str, list[dict[str, list]] | None]] = {
    ("get", "/.well-known/oauth-authorization-server"): ("", None),
    ("post", "/oauth/token"): ("400 503", None),  # a bad DPoP proof is 400 here (RFC 9449 §5)
    ("post", "/oauth/introspect"): ("400 401 503", CALLERS),
    ("post", "/oauth/revoke"): ("400 401 403 503", CALLERS),
    ("post", "/v1/entries"): ("400 503", None),
    ("get", "/v1/entries"): ("400 401 403 503", CALLERS),
    ("get", "/v1/entries/{entry_id}"): ("400 401 403 404 503", ANYONE),
    ("post", "/v1/access"): ("400 401 403 429 503", TOKENS),
    ("get", "/v1/approvals/{call_id}"): ("400 404 503", None),  # the id is the capability
    ("post", "/v1/access/{access_id}/result"): ("400 401 403 404 409 503", TOKENS),
    ("post", "/v1/results"): ("400 401 403 503", TOKENS),
    ("post", "/v1/enroll/preview"): ("400 403 404 503", None),  # the invitation is the key
    ("post", "/v1/enroll"): ("400 403 404 503", None),
    ("get", "/v1/credentials/{credential}/lineage"): ("400 401 403 404 503", CALLERS),
    ("get", "/v1/export"): ("400 401 403 404 503", CALLERS),
    ("get", "/v1/log/checkpoint"): ("404 503", None),
    ("get", "/v1/log/key"): ("", None),
    ("get", "/v1/log/entries/{index}"): ("400 401 404 503", ANYONE),
    ("get", "/v1/log/entries"): ("400 401 503", ANYONE),
    ("get", "/v1/log/proof/inclusion"): ("400 503", None),
    ("get", "/v1/log/proof/consistency"): ("400 503", None),
    ("get", "/healthz"): ("503", None),
    ("get", "/metrics"): ("", None),
}
ALL_ERRORS = "400 401 403 404 503"  # an operation missing from the table: claim every one

FORM = "application/x-www-form-urlencoded"


def _token_form(schema: dict[str, Any]) -> None:
    """The token exchange (RFC 8693) as ``oauth.token`` reads it: the three fields it
    requires, with the only values it takes; ``scope``, ``resource`` and ``audience``
    are refused (a credential's scope is its signed entry's), so they are not offered."""
    from .routers.oauth import CREDENTIAL, SIGNED_ENTRY, TOKEN_EXCHANGE

    props = schema["properties"]
    for refused in ("scope", "resource", "audience"):
        props.pop(refused, None)
    props["grant_type"] = {"type": "string", "enum": [TOKEN_EXCHANGE]}
    props["subject_token_type"] = {"type": "string", "enum": [SIGNED_ENTRY]}
    props["requested_token_type"] = {"type": "string", "enum": [CREDENTIAL]}
    props["subject_token"].update(
        pattern=B64U,
        description="the grant or delegation entry, signed by the party whose authority "
        "it exercises, base64url without padding",
    )
    props["authorization_details"]["description"] = (
        "if sent, the entry's scope as JSON: it must be equal (RFC 9396)"
    )
    schema["required"] = ["grant_type", "subject_token", "subject_token_type"]


# form bodies whose fields the handler checks itself, beyond what FastAPI declares
FORMS = {("post", "/oauth/token"): _token_form}
# a DPoP proof the operation requires as a header of its own (not with a credential)
DPOP_HEADER = {
    "name": "DPoP",
    "in": "header",
    "required": True,
    "description": "a DPoP proof made with the new credential's holder key (RFC 9449)",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$"},
}


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``{"anyOf": [X, {"type": "null"}], ...}`` as X: a value that is absent or given."""
    options = schema.get("anyOf")
    if not isinstance(options, list) or {"type": "null"} not in options:
        return schema
    rest = [o for o in options if o != {"type": "null"}]
    out = {k: v for k, v in schema.items() if k != "anyOf"}
    if out.get("default", 0) is None:
        del out["default"]
    if len(rest) == 1:
        return {**rest[0], **out}
    return {**out, "anyOf": rest}


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        return spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def _form(spec: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any] | None:
    content = operation.get("requestBody", {}).get("content", {})
    return _resolve(spec, content[FORM]["schema"]) if FORM in content else None


def _fix_form(schema: dict[str, Any]) -> None:
    props = schema.get("properties", {})
    for name, prop in list(props.items()):
        props[name] = prop = _not_null(prop)
        if name in schema.get("required", ()) and prop.get("type") == "string":
            prop["minLength"] = max(prop.get("minLength", 0), 1)


def _errors(path: str, codes: str) -> dict[str, Any]:
    if path.startswith("/oauth/"):
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/OAuthError"}}}
    else:
        content = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    out: dict[str, Any] = {}
    for code in sorted({*codes.split(), "413"}):
        out[code] = {"description": STATUS[code], "content": content}
        if code == "401":
            out[code]["headers"] = {"WWW-Authenticate": WWW_AUTHENTICATE}
    return out


def _document(app: FastAPI) -> dict[str, Any]:
    spec = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(
        OAuthError=OAUTH_ERROR,
        Problem=PROBLEM,
        Signature=SIGNATURE,
        SignedEntry=SIGNED_ENTRY,
        Invocation=INVOCATION,
    )
    access = schemas.get("AccessRequest", {}).get("properties", {})
    if "invocation" in access:
        access["invocation"] = {"$ref": "#/components/schemas/Invocation"}
    answer = schemas.get("ResultRequest", {}).get("properties", {})
    for name, prop in list(answer.items()):  # one of the two, given: never null
        answer[name] = _not_null(prop)
    components["securitySchemes"] = copy.deepcopy(SECURITY_SCHEMES)
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            codes, security = OPERATIONS.get((method, path), (ALL_ERRORS, CALLERS))
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _not_null(parameter["schema"])
            form = _form(spec, operation)
            if form is not None:
                if (method, path) in FORMS:
                    FORMS[method, path](form)
                _fix_form(form)
                operation["requestBody"]["required"] = bool(form.get("required"))
            if (method, path) == ("post", "/oauth/token"):
                operation.setdefault("parameters", []).append(DPOP_HEADER)
            if (method, path) == ("post", "/v1/entries"):
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/SignedEntry"}}
                    },
                }
            if security is not None:
                operation["security"] = copy.deepcopy(security)
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for code, body in _errors(path, codes).items():
                responses.setdefault(code, body)
    return spec


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(app)
        return app.openapi_schema

    app.openapi = openapi
