"""Jobs through the broker: enqueue-to-finished latency and sustained jobs/s, nothing lost.

Real pieces only: a `ponder simulate` process (zero latency), PostgreSQL, Redis, and
`ponder worker` processes. Jobs are `direct` (one model call each), written with
``core.jobs.submit_job`` and published with ``workers.enqueue.enqueue_job`` after commit,
as the API does. Times come from the clock of this machine: the enqueue instant here,
``jobs.finished_at`` as the worker wrote it.

  latency     N jobs one at a time through a worker with one process: p50/p90/max of
              enqueue -> finished_at
  throughput  M jobs committed, then published all at once, run by a worker with
              --concurrency P (prefork: P processes, one job at a time each): jobs/s
              from first enqueue to last finished_at, and how many did not succeed
              (must be 0)
  threads     the same, run by P `ponder worker --pool threads --concurrency T`
              processes: each runs up to T jobs at once on its one event loop, so a
              job's waits (database, model) overlap another's work

    python bench/worker_throughput.py [--latency-jobs 50] [--jobs 500] [--processes 2]
                                      [--threads 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _shared import ADMIN_POSTGRES as ADMIN  # noqa: E402
from _shared import FINAL, REDIS, cpu_seconds_by_kind, free_port, percentile  # noqa: E402

from core.db.migrate import upgrade  # noqa: E402
from core.db.models import Job  # noqa: E402
from core.jobs import submit_job  # noqa: E402
from core.runtime import Runtime  # noqa: E402
from tests.fixtures.worker import (  # noqa: E402
    WorkerProcess,
    purge_redis_prefix,
    unique_prefix,
    worker_settings,
)
from workers.celery_app import configure  # noqa: E402
from workers.enqueue import enqueue_job  # noqa: E402


async def latency(rt: Runtime, jobs: int) -> dict[str, float]:
    samples = []
    for _ in range(jobs):
        job_id = await submit_job(
            rt.sessions, rt.pools, question="What is 2 + 3?", strategy={"kind": "direct"}
        )
        enqueued = datetime.now(UTC)
        enqueue_job(job_id)
        while True:
            async with rt.sessions() as session:
                row = (
                    await session.execute(
                        select(Job.status, Job.finished_at).where(Job.id == job_id)
                    )
                ).one()
            if row.status in FINAL:
                break
            await asyncio.sleep(0.002)
        assert row.status == "succeeded", row
        samples.append((row.finished_at - enqueued).total_seconds() * 1000)
    return {
        "jobs": jobs,
        "p50_ms": round(statistics.median(samples), 1),
        "p90_ms": round(percentile(samples, 0.9), 1),
        "max_ms": round(max(samples), 1),
    }


async def throughput(rt: Runtime, jobs: int, timeout: float) -> dict[str, Any]:
    ids = [
        await submit_job(
            rt.sessions, rt.pools, question="What is 2 + 3?", strategy={"kind": "direct"}
        )
        for _ in range(jobs)
    ]
    cpu_before = cpu_seconds_by_kind()
    first = datetime.now(UTC)
    started = time.perf_counter()
    for job_id in ids:
        enqueue_job(job_id)
    published_s = time.perf_counter() - started
    deadline = time.monotonic() + timeout
    while True:
        async with rt.sessions() as session:
            done = await session.scalar(
                select(func.count()).where(Job.id.in_(ids), Job.status.in_(FINAL))
            )
        if done == jobs or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    async with rt.sessions() as session:
        succeeded = await session.scalar(
            select(func.count()).where(Job.id.in_(ids), Job.status == "succeeded")
        )
        last = await session.scalar(select(func.max(Job.finished_at)).where(Job.id.in_(ids)))
    cpu_after = cpu_seconds_by_kind()
    span = (last - first).total_seconds() if last is not None else float("nan")
    # Where the CPU went, per job: the worker's share bounds jobs/s on these 2 cores.
    cpu_ms = {
        kind: round(1000 * (cpu_after.get(kind, 0.0) - cpu_before.get(kind, 0.0)) / jobs, 2)
        for kind in sorted(set(cpu_after) | set(cpu_before))
    }
    return {
        "jobs": jobs,
        "publish_s": round(published_s, 2),
        "span_s": round(span, 2),
        "jobs_per_s": round(jobs / span, 1),
        "lost": jobs - int(succeeded or 0),
        "cpu_ms_per_job": cpu_ms,
    }


async def run(
    latency_jobs: int = 50, jobs: int = 500, processes: int = 2, threads: int = 8
) -> dict[str, Any]:
    """Start the simulator, a fresh database and workers; measure; tear down."""
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
    results: dict[str, Any] = {}
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
            configure(settings)
            async with Runtime(settings, roles={"small"}) as rt:
                with WorkerProcess(settings, Path(tmp) / "w1.log", concurrency=1):
                    await latency(rt, 5)  # warm-up: connections, first imports
                    results["latency"] = await latency(rt, latency_jobs)
                log = Path(tmp) / "w2.log"
                with WorkerProcess(settings, log, concurrency=processes):
                    await latency(rt, 5)
                    results["throughput"] = await throughput(rt, jobs, timeout=300)
                    results["throughput"]["processes"] = processes
                with contextlib.ExitStack() as stack:
                    for i in range(processes):
                        stack.enter_context(
                            WorkerProcess(
                                settings, Path(tmp) / f"t{i}.log", concurrency=threads,
                                pool="threads",
                            )
                        )  # fmt: skip
                    await latency(rt, 5)
                    results["threads"] = await throughput(rt, jobs, timeout=300)
                    results["threads"] |= {"processes": processes, "threads": threads}
    finally:
        sim.terminate()
        sim.wait()
        purge_redis_prefix(REDIS, prefix)
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-jobs", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(run(args.latency_jobs, args.jobs, args.processes, args.threads))
    if args.json:
        print(json.dumps(results))
        return
    lat, thr = results["latency"], results["throughput"]
    print(
        "enqueue -> finished, `direct` job, zero-latency simulator, Redis + PostgreSQL, 1 process"
    )
    print(
        f"  {lat['jobs']} jobs: p50 {lat['p50_ms']} ms  p90 {lat['p90_ms']} ms  "
        f"max {lat['max_ms']} ms"
    )
    thr_t = results["threads"]
    for label, row in (
        (f"{thr['processes']} prefork processes", thr),
        (f"{thr_t['processes']} processes x {thr_t['threads']} threads", thr_t),
    ):
        print(f"{row['jobs']} jobs published at once, {label}")
        print(
            f"  {row['jobs_per_s']} jobs/s ({row['span_s']} s from first enqueue to last "
            f"finish; publishing took {row['publish_s']} s); lost: {row['lost']}"
        )
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in row["cpu_ms_per_job"].items() if v >= 0.01)
        print(f"  CPU ms per job: {cpu}")


if __name__ == "__main__":
    main()
