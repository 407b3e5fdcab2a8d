"""A crash in a route is a JSON 500 with a request id, no exception text, and the
client's keep-alive connection survives it (uvicorn closes one whose app raised)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from app.api.errors import install_handlers
from app.api.failures import RequestContextMiddleware
from core.errors import NotFound
from tests.fixtures.api import ApiServer


def _app() -> FastAPI:
    app = FastAPI()
    install_handlers(app)
    app.add_middleware(RequestContextMiddleware)

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("connection to db-internal.example:5432 failed")

    @app.get("/missing")
    async def missing() -> None:
        raise NotFound("job x not found")

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        return {"status": "ok"}

    return app


def test_a_crash_is_a_json_500_with_a_request_id_on_a_live_connection() -> None:
    with ApiServer(_app()) as server, httpx.Client(base_url=server.url) as client:
        response = client.get("/crash")
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["code"] == "internal_error"
        assert error["request_id"] == response.headers["x-request-id"]
        assert "db-internal" not in response.text and "5432" not in response.text
        # The same pooled connection answers the next request: it was not closed.
        assert response.headers.get("connection") != "close"
        assert client.get("/ok").status_code == 200
        assert len(client._transport._pool.connections) == 1  # type: ignore[attr-defined]


def test_every_error_carries_the_request_id_the_client_sent() -> None:
    with ApiServer(_app()) as server, httpx.Client(base_url=server.url) as client:
        for path, status in (("/missing", 404), ("/nowhere", 404), ("/crash", 500)):
            response = client.get(path, headers={"X-Request-ID": "abc-123"})
            assert response.status_code == status
            assert response.json()["error"]["request_id"] == "abc-123"
        # An id that is not a sane token is replaced, never echoed.
        response = client.get("/missing", headers={"X-Request-ID": "a b\tc" * 40})
        assert response.headers["x-request-id"] != "a b\tc" * 40
        assert len(response.headers["x-request-id"]) == 32
