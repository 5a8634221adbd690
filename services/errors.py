"""Every failure answers JSON ``{"error": {"status", "code", "message", ...}}``, never a crash.

:class:`ApiError` carries the HTTP status, a stable machine-readable ``code`` and a message
that says what was wrong and how to fix it. :func:`install_error_handlers` maps it, FastAPI's
own validation errors (422), HTTP errors (404, 405), Serve backpressure (503 with
``Retry-After``) and anything unexpected (500, logged) to that shape.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("cxr.serve")

__all__ = [
    "ApiError", "ErrorBody", "ErrorResponse", "error_response", "send_error", "internal_error", "install_error_handlers", "ERROR_RESPONSES",
    "from_payload",
]


class ApiError(Exception):
    """An answer with a 4xx/5xx status.

    Args:
        status: the HTTP status.
        code: stable snake_case name (``not_an_image``, ``too_large``, ``unknown_finding``...).
        message: what was wrong and how to fix it.
        headers: extra response headers (``WWW-Authenticate``, ``Retry-After``).
        extra: more JSON fields (e.g. ``known`` findings).
    """

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "code": self.code, "message": self.message, **self.extra}


class ErrorBody(BaseModel):
    status: int = Field(description="the HTTP status, repeated")
    code: str = Field(description="machine-readable reason, e.g. not_an_image, corrupt_image, too_large, wrong_dimensions, unknown_finding")
    message: str = Field(description="what was wrong and how to fix it")
    known: list[str] | None = Field(None, description="for unknown_finding: the findings this service knows")
    detail: list[dict[str, Any]] | None = Field(None, description="for invalid_request: the failing fields")

    model_config = {"extra": "allow"}


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse({"error": err.to_dict()}, status_code=err.status, headers=err.headers)


async def send_error(send, err: ApiError) -> None:
    """Answer ``err`` as JSON through a raw ASGI ``send`` (for middlewares that answer before FastAPI)."""
    body = json.dumps({"error": err.to_dict()}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def from_payload(payload: dict[str, Any]) -> ApiError:
    """Rebuild an :class:`ApiError` from the ``{"error": {...}}`` dict a deployment returned."""
    e = dict(payload["error"])
    return ApiError(int(e.pop("status")), str(e.pop("code")), str(e.pop("message")), **e)


_DESCRIPTIONS = {
    400: "corrupt image or malformed request",
    401: "missing or wrong bearer token (checked before the body is read)",
    413: "raw upload larger than serve.max_upload_bytes, or JSON body larger than serve.max_json_bytes",
    415: "not an image (or an unsupported Content-Type)",
    422: "wrong dimensions, unknown finding, mask of the wrong size, invalid option",
    503: "overloaded (serve.max_inflight requests already in progress) or not ready: retry after Retry-After seconds",
    504: "not answered within serve.request_timeout_s; the generation was cancelled: retry later, or with fewer samples or steps",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in _DESCRIPTIONS.items()
}
"""OpenAPI ``responses=`` for the endpoints that take input."""


def internal_error(exc: BaseException, what: str = "the request") -> ApiError:
    """A 500 that tells the client nothing internal: the exception goes to the log under a reference."""
    ref = secrets.token_hex(6)
    log.error("internal error %s while processing %s", ref, what, exc_info=exc)
    return ApiError(500, "internal_error", f"internal error while processing {what}; it was not completed. "
                    f"Retry later; if it persists, give the operator the reference {ref}", reference=ref)


def install_error_handlers(app: FastAPI, retry_after_s: int = 2) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        where = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in detail[:5])
        return error_response(ApiError(422, "invalid_request", f"invalid request: {where}", detail=detail))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(ApiError(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        from ray.serve.exceptions import BackPressureError

        if isinstance(exc, BackPressureError) or "BackPressureError" in type(exc).__name__:
            return error_response(
                ApiError(503, "overloaded", "the generator's queue is full; retry later", headers={"Retry-After": str(retry_after_s)})
            )
        return error_response(internal_error(exc))
