"""A `direct` job through the whole stack vs the one model call it makes.

Real pieces only: a `ponder simulate` process (zero latency), PostgreSQL, Redis, one
`ponder worker` process (--concurrency 1), and the REST API (uvicorn in a thread,
``create_app`` with the Celery executor). For each of N jobs, one after another:

  model call  raw httpx POST /v1/chat/completions to the simulator (the floor)
  job         POST /v1/jobs, then GET /v1/jobs/{id} every 2 ms until it is finished:
              submit-to-finished wall time as a client sees it
  long poll   the same, waiting with one GET /v1/jobs/{id}?wait=30 (answered when the
              finishing commit's pg_notify wakes it)

The three are interleaved (a raw call, a polled job, a long-polled job) so that a slow
patch of the machine hits all. Printed: p50/p99 of each and job minus call.

    python bench/job_overhead.py [--jobs 200] [--poll-ms 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _shared import ADMIN_POSTGRES as ADMIN  # noqa: E402
from _shared import FINAL, REDIS, free_port, percentile  # noqa: E402

from app.api.executor import CeleryExecutor  # noqa: E402
from app.api.main import create_app  # noqa: E402
from app.api.settings import ApiSettings  # noqa: E402
from core.db.migrate import upgrade  # noqa: E402
from tests.fixtures.api import ApiServer  # noqa: E402
from tests.fixtures.worker import (  # noqa: E402
    WorkerProcess,
    purge_redis_prefix,
    unique_prefix,
    worker_settings,
)
from workers.celery_app import configure  # noqa: E402

QUESTION = "What is 2 + 3?"


def raw_call(http: httpx.Client, sim_url: str, seed: int) -> float:
    body = {
        "model": "sim-small",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 16,
        "seed": seed,
    }
    started = time.perf_counter()
    response = http.post(f"{sim_url}/v1/chat/completions", json=body)
    response.raise_for_status()
    response.json()
    return (time.perf_counter() - started) * 1000


@dataclass
class JobTimes:
    took: float
    """Submit to seen finished, as the client saw it."""
    accepted: float
    """The POST's round trip: validation, the INSERT and its commit, the publish."""
    server: float
    """``finished_at - created_at``: from the row's insert to its finish, by the
    database's clock (API and worker stamp them on this one machine)."""


def job(api: httpx.Client, poll_s: float | None) -> JobTimes:
    """``poll_s`` None: one long poll (``GET /v1/jobs/{id}?wait=30``) instead of polling."""
    started = time.perf_counter()
    created = api.post("/v1/jobs", json={"question": QUESTION, "strategy": "direct"})
    accepted = (time.perf_counter() - started) * 1000
    assert created.status_code == 202, created.text
    url = f"/v1/jobs/{created.json()['id']}"
    while True:
        body = api.get(url, params={"wait": 30} if poll_s is None else None).json()
        if body["status"] in FINAL:
            break
        time.sleep(poll_s or 0)
    took = (time.perf_counter() - started) * 1000
    assert body["status"] == "succeeded", body
    server = datetime.fromisoformat(body["finished_at"]) - datetime.fromisoformat(
        body["created_at"]
    )
    return JobTimes(took, accepted, server.total_seconds() * 1000)


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(percentile(samples, 0.99), 3),
    }


def measure(sim_url: str, api_url: str, jobs: int, poll_s: float) -> dict[str, Any]:
    raw: list[float] = []
    full: list[JobTimes] = []
    waited: list[JobTimes] = []
    with httpx.Client(timeout=30) as http, httpx.Client(base_url=api_url, timeout=60) as api:
        for i in range(10):  # warm-up: connections, first imports in the worker
            raw_call(http, sim_url, i)
            job(api, poll_s)
            job(api, None)
        for i in range(jobs):
            raw.append(raw_call(http, sim_url, 1000 + i))
            full.append(job(api, poll_s))
            waited.append(job(api, None))
    call, end_to_end = summary(raw), summary([t.took for t in full])
    long_poll = summary([t.took for t in waited])
    return {
        "jobs": jobs,
        "poll_ms": poll_s * 1000,
        "model_call": call,
        "job": end_to_end,
        # The same job waited for with one long poll (GET ?wait=30), woken by the commit.
        "job_long_poll": long_poll,
        "overhead_long_poll": {
            "p50_ms": round(long_poll["p50_ms"] - call["p50_ms"], 3),
            "p99_ms": round(long_poll["p99_ms"] - call["p99_ms"], 3),
        },
        # Where the time goes: the POST's answer; then insert -> finish on the server.
        "accepted": summary([t.accepted for t in full]),
        "insert_to_finish": summary([t.server for t in full]),
        "overhead": {
            "p50_ms": round(end_to_end["p50_ms"] - call["p50_ms"], 3),
            "p99_ms": round(end_to_end["p99_ms"] - call["p99_ms"], 3),
        },
    }


def run(jobs: int = 200, poll_ms: float = 2.0) -> dict[str, Any]:
    """Start the simulator, a fresh database, a worker and the API; measure; tear down."""
    name = f"ponder_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN.rsplit("/", 1)[0] + f"/{name}"
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "simulate", "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    prefix = unique_prefix()
    try:
        upgrade(url)
        sim_url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                httpx.get(f"{sim_url}/health")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        with tempfile.TemporaryDirectory() as tmp:
            settings = worker_settings(
                database_url=url, broker_url=REDIS, data_dir=Path(tmp), sim_url=sim_url,
                key_prefix=prefix, heartbeat_s=5.0, stale_after_s=30.0, cancel_poll_s=0.25,
            )  # fmt: skip
            configure(settings)  # the API publishes with the worker's broker and prefix
            api_settings = ApiSettings(_env_file=None)  # type: ignore[call-arg]
            app = create_app(settings, executor=CeleryExecutor(), api_settings=api_settings)
            worker = WorkerProcess(settings, Path(tmp) / "worker.log", concurrency=1)
            with worker, ApiServer(app) as server:
                return measure(sim_url, server.url, jobs, poll_ms / 1000)
    finally:
        sim.terminate()
        sim.wait()
        purge_redis_prefix(REDIS, prefix)
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--poll-ms", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = run(args.jobs, args.poll_ms)
    if args.json:
        print(json.dumps(results))
        return
    call, full, over = results["model_call"], results["job"], results["overhead"]
    print(
        f"`direct` job via REST + Celery (Redis) + PostgreSQL + 1 worker process, "
        f"zero-latency simulator; {results['jobs']} sequential jobs, "
        f"poll every {results['poll_ms']:g} ms"
    )
    print(f"{'':<30}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'model call (raw httpx)':<30}{call['p50_ms']:>10.3f}{call['p99_ms']:>10.3f}")
    print(f"{'job submit -> finished':<30}{full['p50_ms']:>10.3f}{full['p99_ms']:>10.3f}")
    print(f"{'difference (job - call)':<30}{over['p50_ms']:>10.3f}{over['p99_ms']:>10.3f}")
    lp, olp = results["job_long_poll"], results["overhead_long_poll"]
    print(f"{'job, one long poll':<30}{lp['p50_ms']:>10.3f}{lp['p99_ms']:>10.3f}")
    print(f"{'difference (long poll - call)':<30}{olp['p50_ms']:>10.3f}{olp['p99_ms']:>10.3f}")
    parts = (("  POST answered", "accepted"), ("  row insert -> finish", "insert_to_finish"))
    for label, key in parts:
        row = results[key]
        print(f"{label:<30}{row['p50_ms']:>10.3f}{row['p99_ms']:>10.3f}")


if __name__ == "__main__":
    main()
