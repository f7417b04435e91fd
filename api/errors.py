"""HTTP errors: every failure is a 4xx (or 503) with a JSON body, never a stack trace.

On ``/oauth/*`` bodies are RFC 6749 §5.2 shaped (``error``, ``error_description``);
elsewhere RFC 9457 problem details (``type``, ``title``, ``status``, ``detail``)
with the same ``error`` code beside them, so a client can branch on one field.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lineage.ledger.errors import Busy, Damaged, NotFound, RejectedEntry, StorageError
from lineage.verifier.errors import (
    AttenuationError,
    ChainError,
    FormatError,
    LineageError,
    ProofError,
    SignatureError,
)

__all__ = ["CHALLENGE", "ApiError", "install_handlers"]

# RFC 9110 §11.6.1: every 401 names the schemes that would work here (RFC 6750 §3, RFC 9449 §7.1)
CHALLENGE = 'Bearer realm="lineage", DPoP realm="lineage", algs="EdDSA Ed25519"'


class ApiError(Exception):
    def __init__(
        self, status: int, error: str, description: str, headers: dict[str, str] | None = None
    ):
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.headers = headers or {}


def render(
    request: Request,
    status: int,
    error: str,
    description: str,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    if request.url.path.startswith("/oauth/"):
        body = {"error": error, "error_description": description}
        media = "application/json"
    else:
        body = {
            "type": "about:blank",
            "title": error.replace("_", " "),
            "status": status,
            "detail": description,
            "error": error,
        }
        media = "application/problem+json"
    headers = {"Cache-Control": "no-store", **(headers or {})}
    if status == 401 and not any(k.lower() == "www-authenticate" for k in headers):
        headers["WWW-Authenticate"] = CHALLENGE
    return JSONResponse(body, status_code=status, headers=headers, media_type=media)


def lineage_status(exc: LineageError) -> tuple[int, str, str]:
    """Map a domain error to (status, error code, description)."""
    if isinstance(exc, NotFound):
        return 404, "not_found", str(exc)
    if isinstance(exc, RejectedEntry):
        field = exc.field or ""
        code = "invalid_authorization_details" if field.startswith("scope") else "invalid_grant"
        if exc.check == "format":
            code = "invalid_request"
        detail = str(exc) if not field or field in str(exc) else f"{field}: {exc}"
        return 400, code, detail
    if isinstance(exc, AttenuationError):
        return 400, "invalid_authorization_details", f"{exc.field}: {exc}"
    if isinstance(exc, ChainError | SignatureError | ProofError):
        return 400, "invalid_grant", str(exc)
    if isinstance(exc, FormatError):
        return 400, "invalid_request", str(exc)
    if isinstance(exc, Busy):
        return 503, "temporarily_unavailable", str(exc)
    if isinstance(exc, Damaged):
        return 503, "ledger_damaged", str(exc)
    if isinstance(exc, StorageError):
        return 503, "temporarily_unavailable", "the ledger cannot serve this now"
    return 400, "invalid_request", str(exc)


HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def allowed_methods(request: Request, fallback: str) -> str:
    """A 405's ``Allow`` (RFC 9110 §15.5.6): every method the resource has.

    Starlette names only those of the route it tried, so with ``GET`` and ``POST`` routes
    at one path an ``OPTIONS`` said ``Allow: POST`` alone. The OpenAPI document lists the
    resource's methods from all its routes: the ``Allow`` header says the same.
    """
    route = request.scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    item = request.app.openapi().get("paths", {}).get(template)
    if not item:
        return fallback
    return ", ".join(sorted(m.upper() for m in item if m in HTTP_METHODS))


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return render(request, exc.status, exc.error, exc.description, exc.headers)

    @app.exception_handler(LineageError)
    async def _lineage(request: Request, exc: LineageError):
        if isinstance(exc, Damaged) and not exc.noted:  # wherever found, the service says so
            request.app.state.service.log.note_damage(str(exc))
        return render(request, *lineage_status(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return render(request, 400, "invalid_request", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request, headers.get("Allow", ""))
        return render(
            request,
            exc.status_code,
            codes.get(exc.status_code, "invalid_request"),
            str(exc.detail),
            headers,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # never a stack trace out
        return render(request, 500, "server_error", "unexpected error; see the server log")
