"""The API at and over capacity, and with its database gone: every answer is JSON, fast,
and the client's keep-alive connection survives it.

A real uvicorn server with a deliberately tiny connection pool (``PONDER_DB_POOL__*``),
real SQLite or PostgreSQL, the simulator as the model server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from core.settings import DatabasePoolSettings
from core.simulator.config import Rule
from core.simulator.server import Simulator
from tests.fixtures.api import make_key, serve_api
from tests.fixtures.database import libpq_url
from tests.fixtures.proxy import CuttableProxy
from tests.integration.test_api_jobs import script

BODY = {"question": "What is 2 + 3?", "strategy": "direct"}


@contextmanager
def api(
    simulator: Simulator, database_url: str, tmp_path: Path, pool: DatabasePoolSettings
) -> Iterator[str]:
    with serve_api(simulator.url, database_url, tmp_path, db_pool=pool) as url:
        yield url


def _assert_json_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["x-request-id"]
    return error


def test_more_concurrent_requests_than_connections_all_succeed(
    simulator: Simulator, database_url: str, tmp_path: Path
) -> None:
    # Each request used to hold one pooled connection for its API key lookup and wait
    # for a second in the route: 24 requests on 2 connections deadlocked until the pool
    # timeout and answered 500.
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    key = make_key(database_url, "acme")
    pool = DatabasePoolSettings(size=2, max_overflow=0, timeout_s=5)
    with api(simulator, database_url, tmp_path, pool) as url:

        async def load() -> list[httpx.Response]:
            headers = {"Authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as http:
                return await asyncio.gather(
                    *(
                        http.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": f"k{i}"})
                        for i in range(24)
                    )
                )

        started = time.monotonic()
        responses = asyncio.run(load())
        elapsed = time.monotonic() - started
    statuses = [r.status_code for r in responses]
    assert statuses == [202] * 24, [r.text for r in responses if r.status_code != 202]
    assert elapsed < 5, f"24 submissions took {elapsed:.1f} s: requests waited on the pool"


@pytest.mark.postgres
def test_over_capacity_is_a_fast_json_503_and_the_connection_survives(
    simulator: Simulator, clean_pg_database_url: str, tmp_path: Path
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    pool = DatabasePoolSettings(size=1, max_overflow=0, timeout_s=0.3)
    with (
        api(simulator, clean_pg_database_url, tmp_path, pool) as url,
        psycopg.connect(libpq_url(clean_pg_database_url)) as locker,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        assert client.get("/v1/jobs").status_code == 200
        # Inserts into jobs now block; a submission holds the only connection meanwhile.
        locker.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")
        held: list[httpx.Response] = []
        submitter = threading.Thread(
            target=lambda: held.append(httpx.post(f"{url}/v1/jobs", json=BODY, timeout=30))
        )
        submitter.start()
        time.sleep(0.5)
        started = time.monotonic()
        refused = client.get("/v1/jobs", headers={"X-Request-ID": "trace-me-42"})
        waited = time.monotonic() - started
        _assert_json_error(refused, 503, "overloaded")
        assert refused.headers["x-request-id"] == "trace-me-42"
        assert refused.headers["retry-after"] == "1"
        assert waited < 3, f"the 503 took {waited:.1f} s"
        locker.rollback()  # the lock goes; the held submission completes
        submitter.join(30)
        assert [r.status_code for r in held] == [202]
        # Same client, same keep-alive connection: not reset by the 503.
        assert client.get("/v1/jobs").status_code == 200


@pytest.mark.postgres
def test_database_outage_is_a_json_503_then_service_resumes(
    simulator: Simulator, clean_pg_database_url: str, tmp_path: Path
) -> None:
    target = make_url(clean_pg_database_url)
    proxy = CuttableProxy((target.host or "127.0.0.1", target.port or 5432))
    proxy.start()
    via_proxy = target.set(host="127.0.0.1", port=proxy.port)
    url_via_proxy = via_proxy.render_as_string(hide_password=False)
    try:
        with (
            api(simulator, url_via_proxy, tmp_path, DatabasePoolSettings()) as url,
            httpx.Client(base_url=url, timeout=30) as client,
        ):
            assert client.get("/v1/jobs").status_code == 200
            proxy.cut()
            for path in ("/v1/jobs", "/v1/jobs/does-not-matter", "/v1/presets"):
                error = _assert_json_error(client.get(path), 503, "database_unavailable")
                assert str(proxy.port) not in error["message"]  # no host or port leaks
            down = client.post("/v1/jobs", json=BODY)
            _assert_json_error(down, 503, "database_unavailable")
            assert down.headers["retry-after"] == "5"
            proxy.restore()
            assert client.get("/v1/jobs").status_code == 200
            assert client.post("/v1/jobs", json=BODY).status_code == 202
    finally:
        proxy.stop()
