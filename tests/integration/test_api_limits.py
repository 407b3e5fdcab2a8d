"""The operator bounds what a tenant spends: budget defaults and caps, jobs in flight and a
request rate, each answered with a clear 422 or a 429 with Retry-After. A real uvicorn
server, real SQLite, the simulator; the rate limit also over real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.simulator.config import Latency, Rule
from core.simulator.server import Simulator
from tests.fixtures.api import make_key, serve_api
from tests.fixtures.worker import redis_url  # noqa: F401 - a fixture
from tests.integration.test_api_jobs import QUESTION, script, wait_done


@contextmanager
def server(
    simulator: Simulator,
    database_url: str,
    tmp_path: Path,
    broker_url: str | None = None,
    **api: Any,
) -> Iterator[str]:
    with serve_api(simulator.url, database_url, tmp_path, broker_url=broker_url, **api) as url:
        yield url


def keyed_client(url: str, database_url: str, tenant: str) -> httpx.Client:
    key = make_key(database_url, tenant)
    return httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"})


def test_budgets_get_the_tenant_default_and_are_capped(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    limits = {
        "default_budget": {"max_tokens": 4000, "max_seconds": 60},
        "max_budget": {"max_tokens": 8000},
    }
    tight = {"acme": {"max_budget": {"max_tokens": 100}}}
    with server(
        simulator, sqlite_database_url, tmp_path, limits=limits, tenant_limits=tight
    ) as url:
        with keyed_client(url, sqlite_database_url, "other") as client:
            unset = client.post("/v1/jobs", json={"question": QUESTION, "strategy": "direct"})
            assert unset.json()["budget"] == {"max_tokens": 4000, "max_seconds": 60}
            own = client.post(
                "/v1/jobs",
                json={"question": QUESTION, "strategy": "direct", "budget": {"max_tokens": 500}},
            )
            assert own.json()["budget"] == {"max_tokens": 500, "max_seconds": 60}
            over = client.post(
                "/v1/jobs", json={"question": QUESTION, "budget": {"max_tokens": 9000}}
            )
            assert over.status_code == 422
            assert over.json()["error"]["field"] == "budget.max_tokens"
            assert "limit is 8000" in over.json()["error"]["message"]
        with keyed_client(url, sqlite_database_url, "acme") as acme:
            # acme's own cap, and the everyone-default above it is refused too.
            refused = acme.post("/v1/jobs", json={"question": QUESTION, "strategy": "direct"})
            assert refused.status_code == 422, refused.text
            assert refused.json()["error"]["field"] == "budget.max_tokens"


def test_a_huge_composed_spec_is_bounded_by_its_budget(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path
) -> None:
    # The probe's spec (nested best_of_n n=64, three deep, around self_consistency n=256)
    # generated 273,650 tokens in 15 s with no budget. Now every job has one.
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    spec: dict[str, Any] = {"kind": "self_consistency", "n": 256, "max_tokens": 32768}
    for _ in range(3):
        spec = {"kind": "best_of_n", "n": 64, "generator": spec}
    limits = {"default_budget": {"max_tokens": 3000}}
    with (
        server(simulator, sqlite_database_url, tmp_path, limits=limits) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        job = client.post("/v1/jobs", json={"question": QUESTION, "strategy": spec}).json()
        done = wait_done(client, job["id"], timeout=60)
    assert done["budget"]["max_tokens"] == 3000
    assert done["usage"]["completion_tokens"] <= 3000, done["usage"]


def test_jobs_in_flight_are_capped_per_tenant(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."]), latency=Latency(ttft_ms=1500)))
    limits = {"max_jobs_in_flight": 2}
    body = {"question": QUESTION, "strategy": "direct"}
    with (
        server(simulator, sqlite_database_url, tmp_path, limits=limits) as url,
        keyed_client(url, sqlite_database_url, "a") as a,
        keyed_client(url, sqlite_database_url, "b") as b,
    ):
        first = [a.post("/v1/jobs", json=body) for _ in range(2)]
        assert [r.status_code for r in first] == [202, 202]
        third = a.post("/v1/jobs", json=body)
        assert third.status_code == 429, third.text
        assert third.json()["error"]["code"] == "too_many_jobs"
        assert third.headers["retry-after"] == "1"
        assert b.post("/v1/jobs", json=body).status_code == 202  # another tenant's own
        for response in first:
            wait_done(a, response.json()["id"])
        assert a.post("/v1/jobs", json=body).status_code == 202


@pytest.mark.parametrize("store", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_requests_over_the_rate_are_429_with_retry_after(
    store: str,
    request: pytest.FixtureRequest,
    simulator: Simulator,
    sqlite_database_url: str,
    tmp_path: Path,
) -> None:
    broker = str(request.getfixturevalue("redis_url")) if store == "redis" else None
    tenant = f"t{uuid.uuid4().hex[:8]}"  # Redis keeps counts across runs: a fresh tenant
    with (
        server(
            simulator, sqlite_database_url, tmp_path, broker, limits={"rate": "3/minute"}
        ) as url,
        keyed_client(url, sqlite_database_url, tenant) as limited,
        keyed_client(url, sqlite_database_url, tenant + "x") as other,
    ):
        statuses = [limited.get("/v1/jobs").status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        over = limited.get("/v1/jobs")
        assert over.status_code == 429
        assert over.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(over.headers["retry-after"]) <= 60
        assert other.get("/v1/jobs").status_code == 200  # counted per tenant
        assert httpx.get(f"{url}/healthz").status_code == 200  # never limited
