"""HTTP-only errors and the one error body every failure uses.

    PonderError (core.errors)             {"error": {"code", "message", "field"?, ...}}
                                          (the OpenAI face adds "type" and "param":
                                          ``openai_error_body``)
    ├── Unauthorized            401       missing, unknown or revoked API key
    ├── Forbidden               403       a tenant key where an admin key is needed
    ├── PayloadTooLarge         413       body over ApiSettings.max_body_bytes
    ├── TooManyRequests         429       over a tenant's rate or jobs in flight (app.api.limits)
    └── EnqueueFailed           503       the job is saved but the broker refused it

Request validation (FastAPI's) is turned into the same shape as ``InvalidInput``: a 422
whose ``field`` is the dotted path of the first bad field (``strategy.n``, ``budget``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import PonderError

log = logging.getLogger(__name__)


class Unauthorized(PonderError):
    code = "unauthorized"
    status = 401


class Forbidden(PonderError):
    code = "forbidden"
    status = 403


class PayloadTooLarge(PonderError):
    code = "payload_too_large"
    status = 413


class TooManyRequests(PonderError):
    status = 429

    def __init__(self, message: str, *, code: str, retry_after_s: int, **details: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **details)
        self.code = code
        self.retry_after_s = retry_after_s


class EnqueueFailed(PonderError):
    code = "enqueue_failed"
    status = 503


def request_id_of(scope: Scope) -> str | None:
    """The id ``RequestContextMiddleware`` (app.api.failures) gave this request."""
    value = (scope.get("state") or {}).get("request_id")
    return value if isinstance(value, str) else None


def error_body(exc: PonderError, request_id: str | None = None) -> dict[str, Any]:
    detail = {k: v for k, v in exc.to_dict().items() if v is not None}
    if request_id is not None:
        detail["request_id"] = request_id
    # Details may hold anything a core error attached; the body must stay JSON.
    return {"error": json.loads(json.dumps(detail, default=str))}


OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
"""OpenAI's ``error.type`` by status; any 5xx is ``server_error``."""


def openai_error_body(
    exc: PonderError, request_id: str | None = None, *, status: int | None = None
) -> dict[str, Any]:
    """The body in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``,
    for the OpenAI face (``app.api.openai``); Ponder's keys (``field``, ``request_id``,
    ``job_id``...) stay beside them. ``status``: the one the response is sent with, when
    it is not ``exc.status``."""
    body = error_body(exc, request_id)
    detail = body["error"]
    code = status or exc.status
    detail["type"] = OPENAI_TYPES.get(
        code, "server_error" if code >= 500 else "invalid_request_error"
    )
    detail["param"] = detail.get("field")
    return body


RETRY_AFTER_S = {EnqueueFailed.code: 2}
"""Retry-After of 503s raised by the API itself (app.api.failures sets its own)."""


def error_response(exc: PonderError, request_id: str | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else {}
    retry_after = getattr(exc, "retry_after_s", None) or RETRY_AFTER_S.get(exc.code)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse(error_body(exc, request_id), status_code=exc.status, headers=headers)


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list", "json-or-python"})


def _field(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    # A union's members show up in the location as type tags ("dict[str,any]", "str"):
    # the field a client can fix is the path without them.
    parts = [p for p in parts if p not in _TYPE_TAGS and "[" not in p and "(" not in p]
    return ".".join(parts) or "body"


def validation_error(exc: RequestValidationError) -> PonderError:
    from core.errors import InvalidInput

    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    # A body that is not JSON at all: its "location" is a character offset.
    field = "body" if first.get("type") == "json_invalid" else _field(first.get("loc", ()))
    problems = [
        {"field": _field(e.get("loc", ())), "message": str(e.get("msg", ""))} for e in errors
    ]
    return InvalidInput(f"{field}: {first.get('msg', 'invalid')}", field=field, errors=problems)


def install_handlers(app: FastAPI) -> None:
    async def ponder_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, PonderError)
        if exc.status >= 500:
            log.warning("%s %s -> %s: %s", request.method, request.url.path, exc.code, exc)
        return error_response(exc, request_id_of(request.scope))

    async def request_invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        unread = any(tuple(e.get("loc", ())) == ("body",) for e in exc.errors())
        if unread and request.method in ("POST", "PUT", "PATCH") and media != "application/json":
            # FastAPI reads a body as JSON only with this header; without it the fields
            # "are missing", which points the caller at the wrong thing.
            from core.errors import InvalidInput

            shown = media or "none"
            return error_response(
                InvalidInput(
                    f"the body must be JSON sent with the header 'Content-Type: "
                    f"application/json' (got Content-Type: {shown})",
                    field="Content-Type",
                ),
                request_id_of(request.scope),
            )
        return error_response(validation_error(exc), request_id_of(request.scope))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer when its JSON parser raised something other than a decode
            # error: in practice a body nested deeper than Python's recursion limit.
            from core.errors import InvalidInput

            unreadable = InvalidInput(
                "body: the JSON could not be parsed (nested too deep?)", field="body"
            )
            return error_response(unreadable, request_id_of(request.scope))
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        err = PonderError(str(exc.detail))
        err.code, err.status = codes.get(exc.status_code, "http_error"), exc.status_code
        response = error_response(err, request_id_of(request.scope))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; a client needs
            # every method the path has (GET, PUT and DELETE on a preset).
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    app.add_exception_handler(PonderError, ponder_error)
    app.add_exception_handler(RequestValidationError, request_invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return sorted(methods)


def _query_names(dependant: Any) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def refuse_unknown_query(request: Request) -> None:
    """A 422 for a query parameter the operation does not declare (``?limt=5``): a typo
    must not be silently ignored, as unknown body fields are not."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    from core.errors import InvalidInput

    known = _query_names(dependant)
    for name in request.query_params:
        if name not in known:
            shown = ", ".join(sorted(known)) or "none"
            raise InvalidInput(
                f"unknown query parameter {name!r} (this operation takes: {shown})", field=name
            )


class BodyLimitMiddleware:
    """413 for request bodies over ``limit`` bytes, declared or streamed.

    A declared ``Content-Length`` over the limit is refused before the app runs; a
    chunked body is counted as it arrives and cut off at the limit, so a client can
    never make the server buffer more than ``limit`` bytes.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        exc = PayloadTooLarge(f"request body exceeds {self.limit} bytes", limit_bytes=self.limit)
        # Connection: close, since the rest of the body is never read.
        response = error_response(exc, request_id_of(scope))
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


class _TooLarge(StarletteHTTPException):
    """Raised from inside the body read. An HTTPException on purpose: FastAPI turns any
    other exception while reading a body into a 400, but re-raises these, and the
    handler above renders them as ``payload_too_large``."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body exceeds {limit} bytes")
