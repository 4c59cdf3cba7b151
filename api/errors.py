"""Every error leaves the API as ``application/problem+json`` with a stable ``code``.

``{"type", "title", "status", "detail", "code"}`` (RFC 9457 plus ``code``). Errors say what
happened:

* a malformed request is a 4xx (validation answers before any handler code runs);
* a dependency that is really unavailable (the database, Redis, Temporal per the table in
  ``api/temporal_calls.py``, a connection that fails or times out) is 503 with
  ``Retry-After``: a retry may succeed;
* anything else is a bug: 500 ``internal_error``, logged with its traceback and the request's
  trace id, which the body carries too (``trace_id``) so a report can be matched to the log.
  A client must not retry it blindly.
"""

from __future__ import annotations

import logging
import re
import uuid
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import trace
from redis.exceptions import RedisError
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.service import RPCError

from infra.temporal import server_unavailable

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

# Stable codes the API answers with (besides the business codes raised by the services).
VALIDATION_ERROR = "validation_error"
NOT_FOUND = "not_found"
METHOD_NOT_ALLOWED = "method_not_allowed"
_HTTP_METHODS = {"GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"}
UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
CONFLICT = "conflict"
TEMPORAL_UNAVAILABLE = "temporal_unavailable"
DATABASE_UNAVAILABLE = "database_unavailable"
REDIS_UNAVAILABLE = "redis_unavailable"
INTERNAL_UNAVAILABLE = "internal_unavailable"
"""A connection the API needed failed or timed out outside the clients that say which."""
INTERNAL_ERROR = "internal_error"
"""A bug: 500, with the trace id in the body and the log."""

_CODE_BY_STATUS = {
    400: "bad_request",
    401: UNAUTHORIZED,
    403: FORBIDDEN,
    404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED,
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: VALIDATION_ERROR,
}

RETRY_AFTER_UNAVAILABLE_S = 1


class ApiProblem(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title
        self.headers = headers
        self.extra = extra

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"urn:tradeflow:problem:{self.code}",
            "title": self.title or _phrase(self.status),
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.extra:
            body.update({k: v for k, v in self.extra.items() if k not in body})
        return body

    def response(self) -> JSONResponse:
        return JSONResponse(
            self.body(), status_code=self.status, media_type=PROBLEM_JSON, headers=self.headers
        )


def unavailable(code: str, detail: str) -> ApiProblem:
    return ApiProblem(503, code, detail, headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)})


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        loc = [p if isinstance(p, int) else str(p) for p in err.get("loc", ())]
        out.append({"loc": loc, "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))})
    return out


async def _on_api_problem(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiProblem)
    return exc.response()


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc)
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in errors[:5]
    )
    return ApiProblem(
        422, VALIDATION_ERROR, detail or "invalid request", extra={"errors": errors}
    ).response()


def _allow_table(app: Any) -> list[tuple[re.Pattern[str], list[str]]]:
    table: list[tuple[re.Pattern[str], list[str]]] | None = getattr(app.state, "allow_table", None)
    if table is None:
        table = []
        for template, operations in app.openapi().get("paths", {}).items():
            regex = re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)))
            methods = {m.upper() for m in operations if m.upper() in _HTTP_METHODS}
            if "GET" in methods:
                methods.add("HEAD")  # Starlette answers HEAD wherever it answers GET
            table.append((regex, sorted(methods)))
        app.state.allow_table = table
    return table


def allowed_methods(request: Request) -> list[str]:
    """Every method the API documents at this request's path. Starlette's 405 lists only the
    methods of the first route that matched the path (one route per method here), but
    ``Allow`` must list all of them (RFC 9110 §15.5.6)."""
    for regex, methods in _allow_table(request.app):
        if regex.fullmatch(request.url.path):
            return methods
    return []


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status >= 500:
        # Starlette raises these only for its own faults; never let them surface as a 5xx
        # other than "unavailable".
        status = 503
    code = _CODE_BY_STATUS.get(status, "http_error")
    headers = dict(exc.headers) if exc.headers else {}
    if status == 405:
        headers["Allow"] = ", ".join(allowed_methods(request)) or headers.get("Allow", "")
    return ApiProblem(status, code, str(exc.detail), headers=headers or None).response()


async def _on_database_error(_request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, IntegrityError):
        log.warning("integrity error: %s", exc)
        return ApiProblem(409, CONFLICT, "the request conflicts with the stored data").response()
    if isinstance(exc, DataError):
        log.warning("data error: %s", exc)
        return ApiProblem(422, VALIDATION_ERROR, "a value is out of range for storage").response()
    log.error("database unavailable: %s", exc)
    return unavailable(DATABASE_UNAVAILABLE, "the database is not answering").response()


async def _on_redis_error(_request: Request, exc: Exception) -> JSONResponse:
    log.error("redis unavailable: %s", exc)
    return unavailable(REDIS_UNAVAILABLE, "redis is not answering").response()


async def _on_temporal_error(request: Request, exc: Exception) -> JSONResponse:
    # Temporal calls go through api/temporal_calls.py; an RPCError that gets here escaped it.
    if server_unavailable(exc):
        log.error("temporal call failed: %s", exc)
        return unavailable(TEMPORAL_UNAVAILABLE, "the workflow service is not answering").response()
    return internal_error(request.method, request.url.path, exc)


def current_trace_id() -> str:
    """The request's trace id (32 hex digits); a fresh random one when nothing traces it."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else uuid.uuid4().hex


def internal_error(method: str | None, path: str | None, exc: BaseException) -> JSONResponse:
    """A bug: log it with its traceback and trace id, answer 500 ``internal_error``."""
    trace_id = current_trace_id()
    log.error(
        "internal error on %s %s (trace_id %s): %r",
        method,
        path,
        trace_id,
        exc,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    return ApiProblem(
        500,
        INTERNAL_ERROR,
        f"the service failed on an error of its own; quote trace_id {trace_id} when reporting it",
        extra={"trace_id": trace_id},
    ).response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiProblem, _on_api_problem)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(SQLAlchemyError, _on_database_error)
    app.add_exception_handler(RedisError, _on_redis_error)
    app.add_exception_handler(RPCError, _on_temporal_error)
    app.add_middleware(CatchAllMiddleware)


class CatchAllMiddleware:
    """Turns any exception that escaped the handlers into a problem: 503 for a connection that
    failed or timed out, 500 ``internal_error`` for anything else (a bug).

    Starlette's own last-resort handler answers a bare 500 and re-raises; this sits inside it
    and swallows the exception after logging it, so servers and test transports see a problem.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if isinstance(exc, TimeoutError | OSError):
                log.error("infrastructure failure on %s: %r", scope.get("path"), exc)
                response = unavailable(
                    INTERNAL_UNAVAILABLE, "a connection the service needed failed"
                ).response()
            else:
                response = internal_error(scope.get("method"), scope.get("path"), exc)
            if started:
                return  # the client sees a cut response; nothing better can be done now
            await response(scope, receive, send)
