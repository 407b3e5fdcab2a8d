"""Every request gets an id, and every failure a JSON answer, even a crash.

``RequestContextMiddleware`` is the outermost layer of the app:

- it gives each request an id (the client's ``X-Request-ID`` when it is a sane token,
  else a new one), sends it back in ``X-Request-ID`` on every response, and puts it in
  every error body (``error.request_id``) and in the log line of every 5xx;
- it turns an exception no handler took into a JSON answer instead of uvicorn's
  plain-text 500 and a reset connection (uvicorn closes a keep-alive connection whose
  app raised, so the client's *next* request failed too):

      database pool exhausted (sqlalchemy TimeoutError)    503 overloaded, Retry-After: 1
      SQLite busy ("database is locked")                   503 overloaded, Retry-After: 1
      database unreachable or gone mid-request             503 database_unavailable,
                                                               Retry-After: 5
      anything else                                        500 internal_error

  The answer never carries exception text: it may hold hosts, ports or SQL.
"""

from __future__ import annotations

import logging
import re
import uuid

from sqlalchemy import exc as sa_exc
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response
from core.errors import PonderError
from core.logs import bound

log = logging.getLogger(__name__)

_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class Overloaded(PonderError):
    code = "overloaded"
    status = 503


class DatabaseUnavailable(PonderError):
    code = "database_unavailable"
    status = 503


class InternalError(PonderError):
    code = "internal_error"
    status = 500


def classify(exc: BaseException) -> tuple[PonderError, int | None]:
    """The answer to an unhandled exception, and its Retry-After in seconds."""
    if isinstance(exc, sa_exc.TimeoutError):
        return Overloaded("the server is at capacity; retry shortly"), 1
    if isinstance(exc, sa_exc.OperationalError) and "locked" in str(exc.orig):
        return Overloaded("the database is busy; retry shortly"), 1
    if isinstance(exc, sa_exc.DBAPIError) and (
        exc.connection_invalidated
        or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    ):
        return DatabaseUnavailable("the database is unavailable; retry later"), 5
    if isinstance(exc, ConnectionError):
        return DatabaseUnavailable("a backing service is unavailable; retry later"), 5
    return InternalError(
        "internal error; the server log has the details under this request id"
    ), None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers") or [])
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            with bound(request_id=request_id):  # every log line of the request names it
                await self.app(scope, receive, send_with_id)
        except Exception as exc:
            error, retry_after = classify(exc)
            where = f"{scope.get('method')} {scope.get('path')} [{request_id}]"
            with bound(request_id=request_id):
                if error.status >= 500 and retry_after is None:
                    log.error("%s crashed", where, exc_info=exc)
                else:
                    log.warning("%s -> %s: %s: %s", where, error.code, type(exc).__name__, exc)
            if started:
                # Part of the answer is out (a stream): nothing valid can follow it.
                raise
            response = error_response(error, request_id)
            if retry_after is not None:
                response.headers["Retry-After"] = str(retry_after)
            await response(scope, receive, send_with_id)
