"""The API's part of OpenTelemetry export (``core.telemetry``): one span per request that
creates a job, in that job's trace, as the parent of the job's run.

``JobTraceMiddleware`` costs one context lookup per request while export is off. While
it is on, a ``POST`` opens a ``core.telemetry.request_span``; each job whose row the
request inserts is noted (an ORM event) and, when the response has been sent, gets a
``SERVER`` span named for the route (``POST /v1/jobs``, ``POST /v1/chat/completions``)
in its trace. Requests that create no job (reads, polls, the event stream) export
nothing: a job's trace is the job, not every look at it.

``start`` is the lifespan's setup call: it turns export on when the ``OTEL_*`` variables
ask, and then also carries each job's parent to the workers in a Celery header
(``workers.telemetry``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import telemetry


class JobTraceMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if telemetry.active() is None or scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        traceparent = headers.get(b"traceparent", b"").decode("latin-1") or None
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with telemetry.request_span(traceparent) as span:
            try:
                await self.app(scope, receive, send_status)
            finally:
                export = telemetry.active()
                if span is not None and span.job_ids and export is not None:
                    route = getattr(scope.get("route"), "path", None) or scope["path"]
                    request_id = (scope.get("state") or {}).get("request_id")
                    attributes: dict[str, str | int] = {
                        "http.request.method": "POST",
                        "http.route": str(route),
                        "url.path": str(scope["path"]),
                        "http.response.status_code": status,
                    }
                    if request_id:
                        attributes["ponder.request_id"] = str(request_id)
                    export.request_finished(
                        span.span_id,
                        span.start_ns,
                        span.job_ids,
                        f"POST {route}",
                        attributes,
                        error=status >= 500,
                        link=span.link,
                    )


@asynccontextmanager
async def start() -> AsyncIterator[None]:
    """Export for the API's lifespan (if ``OTEL_*`` asks), with the Celery header hook."""
    with telemetry.session("ponder-api") as export:
        if export is not None:
            from workers.telemetry import install

            install()
        yield
