"""Nothing internal leaks to a tenant: the pools view (server URLs, load) needs an admin
key, /metrics the operator's token (or, without one, an admin key), /readyz names the
failed check without the exception's text, and a job's error, trace and calls name the
role, pool and endpoint position, never a URL. A real
uvicorn server, SQLite and PostgreSQL, the simulator."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.api.executor import CeleryExecutor
from core.simulator.config import Failure, Rule, SimulatorConfig
from core.simulator.server import Simulator
from tests.fixtures.api import make_key, serve_api
from tests.fixtures.processes import free_port
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


def test_a_rejected_call_names_its_role_and_pool_not_the_server_url(
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
    assert message.startswith("role 'small' (pool 'small', model 'sim-small'): "), message
    assert "endpoint 1 of 1 rejected the request: HTTP 400" in message, message
    assert "http://" not in str(done["error"]) and "http://" not in trace


def test_failed_and_retried_calls_name_endpoints_by_position_never_by_url(
    simulator: Simulator, database_url: str, tmp_path: Path
) -> None:
    """A call that succeeded after a 500, then one that got nothing but 500s: neither
    the job, its trace, its live events nor the dashboard's call view shows a URL."""

    def failing(times: int) -> SimulatorConfig:
        return SimulatorConfig(
            models=["sim-small", "sim-large"],
            rules=[Rule(replies=["The answer is 5."])],
            failures=[Failure(status=500, times=times)],
        )

    def everything(c: httpx.Client, job_id: str) -> tuple[dict[str, Any], str]:
        done = wait_done(c, job_id)
        trace = c.get(f"/v1/jobs/{job_id}/trace")
        events = c.get(f"/v1/jobs/{job_id}/events")
        spans = c.get(f"/dashboard/api/jobs/{job_id}/spans")
        shown = [trace, events, spans]
        for event in trace.json()["events"]:
            if event["type"] == "model_call" and event["journal"]:  # failed: no entry
                shown.append(c.get(f"/dashboard/api/jobs/{job_id}/calls/{event['span_id']}"))
        assert all(r.status_code == 200 for r in shown), [(r.url, r.text) for r in shown]
        return done, " ".join([str(done), *(r.text for r in shown)])

    with server(simulator, database_url, tmp_path) as url, httpx.Client(base_url=url) as c:
        simulator.set_config(failing(times=1))
        retried = c.post("/v1/jobs", json={"question": QUESTION, "strategy": "direct"}).json()
        done, seen = everything(c, retried["id"])
        assert done["status"] == "succeeded", done
        calls = c.get(f"/v1/jobs/{retried['id']}/trace").json()["journal"]["calls"]
        assert [(e["endpoint"], e["attempts"]) for e in calls] == [("endpoint 1 of 1", 2)]
        assert "http://" not in seen and simulator.url not in seen

        simulator.set_config(failing(times=100))
        failed = c.post("/v1/jobs", json={"question": QUESTION, "strategy": "direct"}).json()
        done, seen = everything(c, failed["id"])
    assert done["status"] == "failed", done
    error = done["error"]
    assert error["code"] == "pool_unavailable" and error["role"] == "small", error
    assert error["message"].startswith("role 'small' (pool 'small', model 'sim-small'): ")
    assert "endpoint 1 of 1: HTTP 500" in error["message"], error
    assert {a["endpoint"] for a in error["attempts"]} == {"endpoint 1 of 1"}
    assert "http://" not in seen and simulator.url not in seen


@pytest.mark.postgres
def test_readyz_names_the_failed_check_without_its_text(
    simulator: Simulator,
    clean_pg_database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="app.api.services.system")
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
    logged = [r.getMessage() for r in caplog.records if r.name == "app.api.services.system"]
    assert any(m.startswith("readyz: database check failed: ") for m in logged), logged


def test_readyz_names_a_dead_broker_and_logs_why(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there
    caplog.set_level(logging.WARNING, logger="app.api.executor")
    with server(
        simulator,
        sqlite_database_url,
        tmp_path,
        executor=CeleryExecutor(),
        broker_url=f"redis://127.0.0.1:{port}/0",
    ) as url:
        ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 503
    broker = ready.json()["checks"]["broker"]
    assert broker == {"ok": False, "detail": "redis did not answer PING (ConnectionError)"}
    assert str(port) not in ready.text
    logged = [r for r in caplog.records if r.name == "app.api.executor"]
    assert logged and logged[0].levelno == logging.WARNING
    assert str(port) in logged[0].getMessage()  # the whole story is in the log
