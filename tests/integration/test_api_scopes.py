"""Nothing internal leaks to a tenant: the pools view (server URLs, load) needs an admin
key, /metrics needs the operator's token, /readyz names the failed check without the
exception's text, and a failed job names its pool and endpoint, never a URL. A real
uvicorn server, SQLite and PostgreSQL, the simulator."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from core.simulator.config import Failure, Rule, SimulatorConfig
from core.simulator.server import Simulator
from tests.fixtures.api import make_key, serve_api
from tests.fixtures.proxy import CuttableProxy
from tests.integration.test_api_jobs import QUESTION, wait_done


@contextmanager
def server(simulator: Simulator, database_url: str, tmp_path: Path, **api: Any) -> Iterator[str]:
    with serve_api(simulator.url, database_url, tmp_path, **api) as url:
        yield url


def key(database_url: str, tenant: str, scope: str = "tenant") -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(database_url, tenant, scope)}"}


def test_pools_need_an_admin_key_and_metrics_the_operator_token(
    simulator: Simulator, database_url: str, tmp_path: Path
) -> None:
    with server(simulator, database_url, tmp_path, metrics_token="scrape-me") as url:
        # No key yet: the loopback-only open server's one user is the operator.
        assert httpx.get(f"{url}/v1/pools").status_code == 200
        tenant, admin = key(database_url, "acme"), key(database_url, "ops", "admin")
        refused = httpx.get(f"{url}/v1/pools", headers=tenant)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
        assert simulator.url not in refused.text
        allowed = httpx.get(f"{url}/v1/pools", headers=admin)
        assert allowed.status_code == 200 and simulator.url in allowed.text
        assert httpx.get(f"{url}/v1/strategies", headers=tenant).status_code == 200
        for headers in ({}, tenant, admin, {"Authorization": "Bearer wrong"}):
            assert httpx.get(f"{url}/metrics", headers=headers).status_code == 401
        scraped = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert scraped.status_code == 200 and "ponder_jobs" in scraped.text


def test_metrics_without_a_token_need_an_admin_key_once_keys_exist(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path
) -> None:
    with server(simulator, sqlite_database_url, tmp_path, key_cache_s=0) as url:
        assert httpx.get(f"{url}/metrics").status_code == 200  # open mode
        tenant = key(sqlite_database_url, "acme")
        closed = httpx.get(f"{url}/metrics")
        assert closed.status_code == 401
        refused = httpx.get(f"{url}/metrics", headers=tenant)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
        assert "PONDER_API_METRICS_TOKEN" in refused.json()["error"]["message"]
        admin = key(sqlite_database_url, "ops", "admin")
        scraped = httpx.get(f"{url}/metrics", headers=admin)
        assert scraped.status_code == 200 and "ponder_jobs" in scraped.text


def test_a_failed_job_names_its_pool_not_the_server_url(
    simulator: Simulator, database_url: str, tmp_path: Path
) -> None:
    simulator.set_config(
        SimulatorConfig(
            models=["sim-small", "sim-large"],
            rules=[Rule(replies=["The answer is 5."])],
            failures=[Failure(status=400, times=100)],
        )
    )
    with server(simulator, database_url, tmp_path) as url, httpx.Client(base_url=url) as c:
        job = c.post("/v1/jobs", json={"question": QUESTION, "strategy": "direct"}).json()
        done = wait_done(c, job["id"])
        trace = c.get(f"/v1/jobs/{job['id']}/trace").text
    assert done["status"] == "failed", done
    message = done["error"]["message"]
    assert "pool 'small'" in message and "endpoint 1 of 1" in message, message
    assert "http://" not in str(done["error"]) and simulator.url not in trace


@pytest.mark.postgres
def test_readyz_names_the_failed_check_without_its_text(
    simulator: Simulator, clean_pg_database_url: str, tmp_path: Path
) -> None:
    target = make_url(clean_pg_database_url)
    proxy = CuttableProxy((target.host or "127.0.0.1", target.port or 5432))
    proxy.start()
    via = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        with server(simulator, via, tmp_path) as url:
            assert httpx.get(f"{url}/readyz").status_code == 200
            proxy.cut()
            ready = httpx.get(f"{url}/readyz")
    finally:
        proxy.stop()
    assert ready.status_code == 503
    detail = ready.json()["checks"]["database"]["detail"]
    assert detail.startswith("database did not answer"), detail
    assert str(proxy.port) not in ready.text and "127.0.0.1" not in detail
