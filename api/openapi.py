"""The served OpenAPI document, made accurate about errors.

FastAPI documents a 422 validation error on every endpoint with parameters;
this service answers bad input with 400 and an OAuth error (``/oauth/*``) or
an RFC 9457 problem (elsewhere). ``install_openapi`` rewrites the document so
it says exactly that.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

__all__ = ["install_openapi"]

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
    "413": "Request body over 1 MiB",
    "503": "The ledger cannot serve now",
}


def _errors(path: str) -> dict[str, Any]:
    if path.startswith("/oauth/"):
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/OAuthError"}}}
    else:
        content = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    return {code: {"description": text, "content": content} for code, text in STATUS.items()}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            schemas["OAuthError"] = OAUTH_ERROR
            schemas["Problem"] = PROBLEM
            for path, operations in spec.get("paths", {}).items():
                for operation in operations.values():
                    responses = operation.setdefault("responses", {})
                    responses.pop("422", None)
                    for code, body in _errors(path).items():
                        responses.setdefault(code, body)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi
