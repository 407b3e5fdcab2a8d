"""Metrics an operator alerts on, scraped as Prometheus would: the API's ``/metrics``
(the database's figures) and a real ``ponder worker``'s own port (the calls and jobs its
prefork child ran), after a job submitted through the API. The Grafana dashboard in
``docs/grafana/ponder.json`` must use only series these scrapes contain."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from app.api.executor import CeleryExecutor, InProcessExecutor
from app.api.main import create_app
from app.api.settings import ApiSettings
from core import metrics
from core.settings import PoolSettings
from core.simulator.config import Rule
from core.simulator.server import Simulator
from tests.fixtures.api import ApiServer, make_key
from tests.fixtures.processes import free_port
from tests.fixtures.runtime import simulator_settings
from tests.fixtures.sandbox import require_sandbox
from tests.fixtures.worker import (  # noqa: F401 - redis_url is a fixture
    WorkerProcess,
    purge_redis_prefix,
    redis_url,
    unique_prefix,
    worker_settings,
)
from tests.strategies.helpers import script
from workers.celery_app import configure

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "ponder.json"
TOKEN = "metrics-test-token"
QUESTION = "A baker makes 12 muffins in the morning and 3 times as many later. How many in all?"
PROGRAM = "```python\nmorning = 12\nlater = 3 * morning\nprint(morning + later)\n```"
# Series the PromQL functions and label names of the dashboard are not.
PROMQL_WORDS = re.compile(r"\bponder_[a-z0-9_]+\b")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def dashboard_series() -> set[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return {name for expr in exprs for name in PROMQL_WORDS.findall(expr)}


def wait_finished(client: httpx.Client, job_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def fresh_metrics() -> Iterator[None]:
    """Counts of this test process only (the API process's ``core.metrics``)."""
    metrics.configure(metrics.MetricsSettings(_env_file=None))  # type: ignore[call-arg]
    yield
    metrics.configure(None)


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.usefixtures("fresh_metrics")
def test_a_job_through_api_and_worker_fills_every_series_the_dashboard_uses(
    clean_pg_database_url: str,
    redis_url: str,  # noqa: F811 - the fixture
    simulator: Simulator,
    tmp_path: Path,
) -> None:
    require_sandbox()  # program_of_thought runs its program with the python tool
    simulator.set_config(script(Rule(match="muffins", replies=[PROGRAM])))
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    prefix = unique_prefix()
    base = worker_settings(
        database_url=clean_pg_database_url, broker_url=redis_url, data_dir=tmp_path,
        sim_url=simulator.url, key_prefix=prefix,
    )  # fmt: skip
    # The dead server first: a fresh worker's first call goes there, fails over to the
    # simulator (one retry) and opens that endpoint's breaker.
    small = PoolSettings(
        endpoints=[dead, simulator.url],
        model="sim-small",
        kind="simulator",
        breaker_failures=1,
        breaker_reset_s=120,
        price_input_per_1k=0.5,
        price_output_per_1k=1.5,
    )
    settings = base.model_copy(update={"pools": {**base.pools, "small": small}})
    configure(settings)
    port = free_port()
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.env["PONDER_METRICS_WORKER_PORT"] = str(port)
    worker.env["PONDER_METRICS_WORKER_HOST"] = "127.0.0.1"
    api = create_app(
        settings,
        executor=CeleryExecutor(),
        api_settings=ApiSettings(_env_file=None, metrics_token=SecretStr(TOKEN), metrics_cache_s=0),  # type: ignore[call-arg]
    )
    scrape_headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with ApiServer(api) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            # Queued before any worker exists: the queue depth counts it by priority.
            job_id = client.post(
                "/v1/jobs",
                json={
                    "question": QUESTION,
                    "strategy": {"kind": "program_of_thought"},
                    "priority": "high",
                },
            ).json()["id"]
            queued = parse(client.get("/metrics", headers=scrape_headers).text)
            assert value(queued, "ponder_queue_depth", priority="high") == 1.0
            assert value(queued, "ponder_queue_depth", priority="default") == 0.0
            assert value(queued, "ponder_jobs_in_flight") == 0.0
            assert client.get("/metrics").status_code == 401  # the token, or nothing

            with worker:
                job = wait_finished(client, job_id)
                assert job["status"] == "succeeded", job
                assert job["result"]["answer"] == "48"
                from_worker = parse(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
                for _ in range(50):  # the breaker report is written off the call's path
                    from_api = parse(client.get("/metrics", headers=scrape_headers).text)
                    if value(from_api, "ponder_breaker_state", pool="small", endpoint="1"):
                        break
                    time.sleep(0.1)
    finally:
        purge_redis_prefix(redis_url, prefix)

    # The worker's prefork child ran the job; its parent's port reports it.
    call = {"role": "small", "model": "sim-small"}
    assert value(from_worker, "ponder_model_calls_total", outcome="ok", **call) == 1.0
    assert value(from_worker, "ponder_model_call_retries_total", **call) == 1.0
    assert value(from_worker, "ponder_tool_calls_total", tool="python", outcome="ok") == 1.0
    job_labels = {"strategy": "program_of_thought"}
    assert (
        value(from_worker, "ponder_job_duration_seconds_count", outcome="succeeded", **job_labels)
        == 1.0
    )
    usage = job["usage"]
    tokens = usage["prompt_tokens"] + usage["completion_tokens"]
    assert value(from_worker, "ponder_job_tokens_sum", **job_labels) == tokens
    assert value(from_worker, "ponder_job_cost_usd_total", **job_labels) == pytest.approx(
        usage["cost"]
    )
    assert usage["cost"] > 0
    # The database's figures, on the API: the worker's breaker, by endpoint position.
    assert value(from_api, "ponder_breaker_state", pool="small", endpoint="1") == 2.0
    assert value(from_api, "ponder_breaker_state", pool="small", endpoint="2") == 0.0
    assert value(from_api, "ponder_queue_depth", priority="high") == 0.0
    assert value(from_api, "ponder_jobs", status="succeeded") == 1.0
    # No URL in any label a scrape carries.
    for samples in (from_worker, from_api):
        assert not [k for k in samples if any("http" in v for _, v in k[1])]
    # The API ran no job: its own call counters stay empty.
    assert not [k for k in from_api if k[0] == "ponder_model_calls_total"]

    scraped = {name for name, _ in from_api} | {name for name, _ in from_worker}
    missing = sorted(dashboard_series() - scraped)
    assert not missing, f"the dashboard queries series no scrape has: {missing}"


@pytest.mark.postgres
@pytest.mark.usefixtures("fresh_metrics")
def test_failed_calls_their_retries_and_journal_hits_are_counted(
    clean_pg_database_url: str, simulator: Simulator, tmp_path: Path
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    dead = f"http://127.0.0.1:{free_port()}"
    base = simulator_settings(simulator.url, clean_pg_database_url, tmp_path)
    small = PoolSettings(
        endpoints=[dead], model="sim-small", kind="simulator",
        max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.02, breaker_failures=3,
    )  # fmt: skip
    settings = base.model_copy(update={"pools": {**base.pools, "small": small}})
    api_settings = ApiSettings(_env_file=None, metrics_cache_s=0)  # type: ignore[call-arg]
    app = create_app(settings, executor=InProcessExecutor(), api_settings=api_settings)
    with ApiServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        failed = client.post("/v1/jobs", json={"question": "2 + 3?", "strategy": "direct"})
        assert wait_finished(client, failed.json()["id"])["status"] == "failed"
        # The same role on the live pool, then a strict replay of that job: no model call.
        ok = client.post(
            "/v1/jobs",
            json={"question": "2 + 3?", "strategy": "direct", "roles": {"small": "large"}},
        ).json()
        assert wait_finished(client, ok["id"])["status"] == "succeeded"
        replay = client.post(f"/v1/jobs/{ok['id']}/replay", json={"mode": "strict"}).json()
        assert wait_finished(client, replay["id"])["status"] == "succeeded"
        samples = parse(client.get("/metrics").text)

    dead_pool = {"role": "small", "model": "sim-small"}
    assert value(samples, "ponder_model_calls_total", outcome="error", **dead_pool) == 1.0
    # Three attempts: the first two were retried, the third ended the call.
    assert value(samples, "ponder_model_call_retries_total", **dead_pool) == 2.0
    live = {"role": "small", "model": "sim-large"}
    assert value(samples, "ponder_model_calls_total", outcome="ok", **live) == 1.0
    assert value(samples, "ponder_model_calls_total", outcome="journal_hit", **live) == 1.0
    assert value(samples, "ponder_model_call_retries_total", **live) == 0.0
    direct = {"strategy": "direct"}
    assert value(samples, "ponder_job_duration_seconds_count", outcome="failed", **direct) == 1.0
    assert value(samples, "ponder_job_duration_seconds_count", outcome="succeeded", **direct) == 2.0
    # The API ran these jobs: its own breaker for the dead endpoint is open.
    assert value(samples, "ponder_breaker_state", pool="small", endpoint="1") == 2.0


@pytest.mark.postgres
def test_the_tenant_label_is_opt_in_and_bounded(
    clean_pg_database_url: str, simulator: Simulator, tmp_path: Path
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    settings = simulator_settings(simulator.url, clean_pg_database_url, tmp_path)
    keys = {t: make_key(clean_pg_database_url, t) for t in ("acme", "globex", "initech")}
    admin = make_key(clean_pg_database_url, "ops", scope="admin")
    api_settings = ApiSettings(_env_file=None, metrics_cache_s=0)  # type: ignore[call-arg]

    def run(tenant_label: bool) -> Samples:
        metrics.configure(
            metrics.MetricsSettings(_env_file=None, tenant_label=tenant_label, tenant_limit=2)  # type: ignore[call-arg]
        )
        app = create_app(settings, executor=InProcessExecutor(), api_settings=api_settings)
        with ApiServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            for tenant, key in keys.items():
                auth = {"Authorization": f"Bearer {key}"}
                job = client.post(
                    "/v1/jobs",
                    json={"question": f"{tenant}: 2 + 3?", "strategy": "direct"},
                    headers=auth,
                ).json()
                deadline = time.monotonic() + 20
                while client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["status"] in (
                    "queued",
                    "running",
                ):
                    assert time.monotonic() < deadline, "the job did not finish"
                    time.sleep(0.05)
            scrape = client.get("/metrics", headers={"Authorization": f"Bearer {admin}"})
            assert scrape.status_code == 200, scrape.text
            return parse(scrape.text)

    try:
        off = run(tenant_label=False)
        on = run(tenant_label=True)
    finally:
        metrics.configure(None)

    call = {"role": "small", "model": "sim-small", "outcome": "ok"}
    assert value(off, "ponder_model_calls_total", **call) == 3.0
    assert not [k for k in off if any(label == "tenant" for label, _ in k[1])]
    # Two tenants by name (the limit), the third counted as "other".
    by_tenant = {
        dict(labels)["tenant"]: v
        for (name, labels), v in on.items()
        if name == "ponder_model_calls_total"
    }
    assert by_tenant == {"acme": 1.0, "globex": 1.0, "other": 1.0}
    assert value(on, "ponder_job_duration_seconds_count", strategy="direct",
                 outcome="succeeded", tenant="other") == 1.0  # fmt: skip
