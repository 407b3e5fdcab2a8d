"""The v1 API in front of a real Celery worker: uvicorn running ``create_app`` with the
Celery executor, a ``ponder worker`` subprocess taking the jobs from Redis, PostgreSQL,
and the simulator as the model server. Never ``task_always_eager``.

One stack (API, worker, database, key prefix) serves the whole module; every test talks
to it as tenant ``acme`` with a real API key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from app.api.executor import CeleryExecutor
from app.api.main import create_app
from app.api.settings import ApiSettings
from core.db.engine import make_async_engine, make_sessionmaker
from core.events import EVENT_ADAPTER, Event, JobFinishedEvent, ModelCallEvent
from core.keys import create_key
from core.simulator.config import Latency, Rule, SimulatorConfig
from core.simulator.server import Simulator
from tests.fixtures.api import ApiServer
from tests.fixtures.worker import (  # noqa: F401 - redis_url is a fixture
    WorkerProcess,
    purge_redis_prefix,
    redis_url,
    unique_prefix,
    wait_until,
    worker_settings,
)
from tests.integration.test_api_jobs import read_sse
from workers.celery_app import configure

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

QUESTION = "What is 2 + 3?"


def script(*rules: Rule, latency: Latency | None = None) -> SimulatorConfig:
    return SimulatorConfig(
        models=["sim-small", "sim-large"], rules=list(rules), latency=latency or Latency()
    )


def make_key(database_url: str, tenant: str) -> str:
    async def create() -> str:
        engine = make_async_engine(database_url)
        try:
            return await create_key(make_sessionmaker(engine), tenant)
        finally:
            await engine.dispose()

    return asyncio.run(create())


class Stack:
    def __init__(self, url: str, keys: dict[str, str], worker: WorkerProcess) -> None:
        self.url, self.keys, self.worker = url, keys, worker

    def client(self, tenant: str = "acme") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"}
        return httpx.Client(base_url=self.url, timeout=30, headers=headers)


@contextmanager
def celery_api(
    *,
    broker_url: str,
    database_url: str,
    sim_url: str,
    tmp: pytest.TempPathFactory,
    name: str,
    api: ApiSettings,
) -> Iterator[tuple[str, WorkerProcess]]:
    """A real Celery worker process and an API server publishing to it, on a broker key
    prefix of their own (purged after): ``(API url, worker)``."""
    prefix = unique_prefix()
    settings = worker_settings(
        database_url=database_url,
        broker_url=broker_url,
        data_dir=tmp.mktemp(f"{name}-data"),
        sim_url=sim_url,
        key_prefix=prefix,
    )
    # The API publishes through the process-wide Celery app: same broker, same prefix.
    configure(settings)
    app = create_app(settings, executor=CeleryExecutor(), api_settings=api)
    log = tmp.mktemp(f"{name}-logs") / "worker.log"
    try:
        with WorkerProcess(settings, log, concurrency=2) as worker, ApiServer(app) as server:
            yield server.url, worker
    finally:
        purge_redis_prefix(broker_url, prefix)


@pytest.fixture(scope="module")
def stack(
    redis_url: str,  # noqa: F811 - the fixture
    pg_database_url: str,
    simulator_server: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    # Keys exist before the API starts: every request in this module is authenticated.
    keys = {tenant: make_key(pg_database_url, tenant) for tenant in ("acme", "globex")}
    api = ApiSettings(_env_file=None, sse_poll_min_s=0.02, sse_poll_max_s=0.1)  # type: ignore[call-arg]
    with celery_api(
        broker_url=redis_url,
        database_url=pg_database_url,
        sim_url=simulator_server.url,
        tmp=tmp_path_factory,
        name="api-celery",
        api=api,
    ) as (url, worker):
        yield Stack(url, keys, worker)


@pytest.fixture
def client(stack: Stack, simulator: Simulator) -> Iterator[httpx.Client]:
    with stack.client() as c:
        yield c


def wait_done(client: httpx.Client, job_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job still {job['status']}"
        time.sleep(0.02)


def submit(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json={"question": QUESTION, "seed": 7, **body})
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


def test_submit_poll_result_runs_on_the_worker(
    client: httpx.Client, stack: Stack, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=["2 + 3 = 5. The answer is 5."])))
    job = submit(client, strategy={"kind": "direct"})
    assert job["status"] == "queued"
    done = wait_done(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["answer"] == "5"
    assert done["usage"]["calls"] == 1
    assert simulator.stats.requests == 1
    # It ran in the worker process, not in the API.
    # (The worker logs just after it commits the result.)
    line = f"job {job['id']} succeeded"
    wait_until(lambda: line in stack.worker.log(), 5, "the worker's log line")


def test_events_stream_a_running_job_in_seq_order(
    client: httpx.Client, simulator: Simulator
) -> None:
    # Alternating answers (the default ``cycle`` pick), so adaptive sampling never stops
    # early: four sequential calls of ~150 ms each.
    simulator.set_config(
        script(Rule(replies=["The answer is 5.", "The answer is 7."]), latency=Latency(ttft_ms=150))
    )
    spec = {"kind": "self_consistency", "n": 4, "adaptive": True, "batch_size": 1,
            "min_samples": 4}  # fmt: skip
    job = submit(client, strategy=spec)
    received: list[tuple[Event, float]] = []
    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for kind, _, data, at in read_sse(response):
            event = EVENT_ADAPTER.validate_json(data)
            assert event.type == kind
            received.append((event, at))
    finished = received[-1][0]
    assert isinstance(finished, JobFinishedEvent) and finished.status == "succeeded"
    assert finished.result is not None and finished.result["votes"] == {"5": 2, "7": 2}
    assert [e.type for e, _ in received].count("job_finished") == 1
    seqs: list[int] = []
    for event, _ in received[:-1]:
        if event.seq not in seqs:
            seqs.append(event.seq)
    assert seqs == list(range(1, len(seqs) + 1))  # every span, in seq order, none skipped
    calls = [(e, at) for e, at in received if isinstance(e, ModelCallEvent)]
    assert len(calls) == 4
    assert [e.seq for e, _ in calls] == sorted(e.seq for e, _ in calls)
    # Live: the first call reached the client well before the job ended.
    assert received[-1][1] - calls[0][1] > 0.2


def test_strict_replay_makes_no_model_calls(client: httpx.Client, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5.", "The answer is 7."])))
    parent = submit(client, strategy={"kind": "self_consistency", "n": 5})
    parent_done = wait_done(client, parent["id"])
    assert parent_done["status"] == "succeeded", parent_done
    before = simulator.stats.requests
    child = client.post(f"/v1/jobs/{parent['id']}/replay", json={"mode": "strict"})
    assert child.status_code == 202, child.text
    child_done = wait_done(client, child.json()["id"])
    assert child_done["status"] == "succeeded", child_done
    assert simulator.stats.requests == before
    assert child_done["parent_job_id"] == parent["id"] and child_done["replay_mode"] == "strict"
    assert child_done["result"] == parent_done["result"]
    diff = client.get(f"/v1/jobs/{parent['id']}/diff/{child_done['id']}").json()
    assert diff["identical"] is True and diff["first_divergence"] is None


def test_live_fork_from_step_one_makes_only_the_new_calls(
    client: httpx.Client, simulator: Simulator
) -> None:
    # Alternating 5, 7, 5, 7, ...: no early stop, so every allowed sample is drawn.
    simulator.set_config(script(Rule(replies=["The answer is 5.", "The answer is 7."])))
    spec = {"kind": "self_consistency", "n": 3, "adaptive": True, "batch_size": 1,
            "min_samples": 3}  # fmt: skip
    parent = submit(client, strategy=spec)
    parent_done = wait_done(client, parent["id"])
    assert parent_done["status"] == "succeeded", parent_done
    assert parent_done["result"]["votes"] == {"5": 2, "7": 1}
    before = simulator.stats.requests
    assert before == 3

    body = {"mode": "live", "fork_from": 1, "strategy": {"n": 5, "min_samples": 5}}
    response = client.post(f"/v1/jobs/{parent['id']}/replay", json=body)
    assert response.status_code == 202, response.text
    done = wait_done(client, response.json()["id"])
    assert done["status"] == "succeeded", done
    assert done["fork_point"] == 1
    # Call 1 (5) from the journal, then live 7, 5, 7, 5.
    assert done["result"]["votes"] == {"5": 3, "7": 2}
    # Call 1 came from the parent's journal; calls 2..5 went to the model.
    assert simulator.stats.requests - before == 4
    assert (done["usage"]["journal_hits"], done["usage"]["live_calls"]) == (1, 4)


def test_another_tenant_gets_404_everywhere(stack: Stack, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    with stack.client("acme") as a, stack.client("globex") as b:
        mine = submit(a, strategy="direct")["id"]
        theirs = submit(b, strategy="direct")["id"]
        wait_done(a, mine)
        wait_done(b, theirs)
        for method, path in [
            ("GET", f"/v1/jobs/{mine}"),
            ("GET", f"/v1/jobs/{mine}/trace"),
            ("GET", f"/v1/jobs/{mine}/events"),
            ("POST", f"/v1/jobs/{mine}/replay"),
            ("POST", f"/v1/jobs/{mine}/cancel"),
            ("GET", f"/v1/jobs/{mine}/diff/{theirs}"),
            ("GET", f"/v1/jobs/{theirs}/diff/{mine}"),
        ]:
            response = b.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]["code"] == "not_found"
        assert a.get(f"/v1/jobs/{mine}").status_code == 200
        assert mine not in [j["id"] for j in b.get("/v1/jobs").json()["items"]]
        # Nothing the other tenant tried started a job or cancelled this one.
        assert a.get(f"/v1/jobs/{mine}").json()["status"] == "succeeded"


def test_idempotent_submit_returns_the_same_job(client: httpx.Client, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    body = {"question": QUESTION, "strategy": "direct", "seed": 1}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "celery-1"})
    assert first.status_code == 202, first.text
    again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "celery-1"})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    done = wait_done(client, first.json()["id"])
    assert done["status"] == "succeeded", done
    # One job, run once.
    assert simulator.stats.requests == 1
    replayed = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "celery-1"})
    assert replayed.status_code == 200 and replayed.json()["id"] == first.json()["id"]
