"""Celery workers end to end: real ``ponder worker`` processes, real Redis and PostgreSQL
(SQLite and the filesystem broker for embedded mode), the simulator as model server.

Also, in-process and on both backends, the pieces the workers stand on: the job lease,
the monitor that turns cancel requests and time limits into a stopped strategy, and the
reaper's sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from core.cancel import JobMonitor, request_cancel, worker_identity
from core.db import repo
from core.db.models import Job, utcnow
from core.jobs import submit_job
from core.runtime import Runtime
from core.settings import Settings
from core.simulator.config import Latency, Rule, SimulatorConfig
from core.simulator.server import Simulator
from tests.fixtures.worker import (  # noqa: F401 - redis_url is a fixture
    ROOT,
    WorkerProcess,
    purge_redis_prefix,
    redis_url,
    settings_env,
    unique_prefix,
    wait_until,
    worker_settings,
)
from workers.celery_app import configure
from workers.enqueue import enqueue_job
from workers.reaper import Reaper

QUESTION = "What is 2 + 3?"
SLOW = "slowly"


def script(*rules: Rule, latency: Latency | None = None) -> SimulatorConfig:
    return SimulatorConfig(
        models=["sim-small", "sim-large"], rules=list(rules), latency=latency or Latency()
    )


def running_requests(sim: Simulator) -> float:
    """Requests the simulator is generating right now (its vLLM-style gauge)."""
    text = httpx.get(f"{sim.url}/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("vllm:num_requests_running"))
    return float(line.rsplit(" ", 1)[1])


async def job_row(rt: Runtime, job_id: str) -> Job:
    async with rt.sessions() as session:
        job = await repo.get_job(session, job_id)
    assert job is not None
    return job


async def wait_status(rt: Runtime, job_id: str, statuses: set[str], timeout: float) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        job = await job_row(rt, job_id)
        if job.status in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")
        await asyncio.sleep(0.02)


async def journal_size(rt: Runtime, job_id: str) -> int:
    async with rt.sessions() as session:
        return await repo.count_calls(session, job_id)


async def submit(rt: Runtime, strategy: dict[str, Any], **kwargs: Any) -> str:
    """Commit the job, then enqueue it: the API's order."""
    priority = kwargs.pop("priority", "default")
    job_id = await submit_job(
        rt.sessions, rt.pools, question=kwargs.pop("question", QUESTION), strategy=strategy,
        seed=7, priority=priority, **kwargs,
    )  # fmt: skip
    await asyncio.to_thread(enqueue_job, job_id, priority=priority)
    return job_id


# -- a shared worker on Redis + PostgreSQL ---------------------------------------------


@pytest.fixture(scope="module")
def redis_pg_settings(
    redis_url: str,  # noqa: F811 - the fixture
    pg_database_url: str,
    simulator_server: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    prefix = unique_prefix()
    settings = worker_settings(
        database_url=pg_database_url,
        broker_url=redis_url,
        data_dir=tmp_path_factory.mktemp("worker-data"),
        sim_url=simulator_server.url,
        key_prefix=prefix,
    )
    try:
        yield settings
    finally:
        purge_redis_prefix(redis_url, prefix)


@pytest.fixture(scope="module")
def shared_worker(
    redis_pg_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    log = tmp_path_factory.mktemp("worker-logs") / "shared.log"
    with WorkerProcess(redis_pg_settings, log, concurrency=2) as worker:
        yield worker


@pytest.fixture
async def client_rt(redis_pg_settings: Settings) -> AsyncIterator[Runtime]:
    """The submitting side (what the API does): sessions, pools, and the app configured
    for the same broker and key prefix as the worker."""
    configure(redis_pg_settings)
    async with Runtime(redis_pg_settings, roles={"small", "large"}) as rt:
        yield rt


@pytest.mark.redis
@pytest.mark.postgres
async def test_submitted_jobs_run_to_the_right_answer(
    shared_worker: WorkerProcess, client_rt: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(
        script(Rule(replies=["2 + 3 = 5. The answer is 5.", "The answer is 5.", "#### 6"]))
    )
    direct = await submit(client_rt, {"kind": "direct"}, priority="high")
    voted = await submit(client_rt, {"kind": "self_consistency", "n": 3})
    low = await submit(client_rt, {"kind": "direct", "role": "large"}, priority="low")

    for job_id in (direct, voted, low):
        job = await wait_status(client_rt, job_id, {"succeeded", "failed"}, timeout=20)
        assert job.status == "succeeded", job.error
        assert job.attempts == 1 and job.worker is not None
    assert (await job_row(client_rt, direct)).result["answer"] == "5"  # type: ignore[index]
    voted_job = await job_row(client_rt, voted)
    assert voted_job.result is not None and voted_job.result["answer"] == "5"
    assert sum(voted_job.result["votes"].values()) == 3
    assert (await job_row(client_rt, low)).priority == "low"
    assert simulator.stats.requests == 3
    assert simulator.stats.by_model == {"sim-small": 2, "sim-large": 1}


@pytest.mark.redis
@pytest.mark.postgres
async def test_cancel_stops_a_running_job_and_its_model_call(
    shared_worker: WorkerProcess, client_rt: Runtime, simulator: Simulator
) -> None:
    # Two quick samples, then one that would take 30 s: cancel lands during the third.
    simulator.set_config(
        script(
            Rule(match=SLOW, replies=["The answer is 5."], latency=Latency(ttft_ms=30_000)),
            Rule(replies=["The answer is 5."]),
        )
    )
    job_id = await submit(
        client_rt,
        {"kind": "self_consistency", "n": 3, "adaptive": True, "batch_size": 1,
         "min_samples": 3, "system": f"Answer {SLOW}."},
    )  # fmt: skip
    await wait_status(client_rt, job_id, {"running"}, timeout=20)
    await asyncio.to_thread(
        wait_until, lambda: running_requests(simulator) == 1, 20, "the slow call to start"
    )

    asked = time.monotonic()
    result = await request_cancel(client_rt.sessions, job_id)
    assert result.status == "running" and result.requested_at is not None
    job = await wait_status(client_rt, job_id, {"cancelled", "succeeded", "failed"}, timeout=5)
    took = time.monotonic() - asked

    assert job.status == "cancelled", job.error
    assert job.error == {"code": "cancelled", "message": "cancelled on request"}
    assert took < 1.5, f"cancel took {took:.2f} s"
    # The in-flight request was abandoned, not waited out.
    await asyncio.to_thread(
        wait_until, lambda: running_requests(simulator) == 0, 2, "the call to stop"
    )
    # The partial trace stays: the job and strategy spans, the one journaled call and
    # the call that was cut, marked with its error.
    async with client_rt.sessions() as session:
        spans = await repo.list_spans(session, job_id)
    calls = [s for s in spans if s.kind == "model_call"]
    assert [s.kind for s in spans][:2] == ["job", "strategy"]
    assert len(calls) == 1 and "CancelledError" in calls[0].attributes["error"]
    assert all(s.end_ts is not None for s in spans)
    assert await journal_size(client_rt, job_id) == 0
    assert simulator.stats.requests == 1

    # Cancelling again, or a finished job, changes nothing.
    again = await request_cancel(client_rt.sessions, job_id)
    assert again.status == "cancelled"


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_thread_pool_worker_runs_its_jobs_at_once_on_one_runtime(
    redis_pg_settings: Settings, simulator: Simulator, tmp_path: Path
) -> None:
    """``ponder worker --pool threads --concurrency 3``: one process, one runtime, three
    jobs in flight together (each job's model call waits 0.4 s)."""
    simulator.set_config(script(Rule(replies=["The answer is 5."]), latency=Latency(ttft_ms=400)))
    # Its own queues: the module's shared worker must not take these jobs.
    prefix = unique_prefix()
    settings = redis_pg_settings.model_copy(
        update={"worker": redis_pg_settings.worker.model_copy(update={"key_prefix": prefix})}
    )
    configure(settings)
    try:
        async with Runtime(settings, roles={"small"}) as rt:
            with WorkerProcess(settings, tmp_path / "threads.log", concurrency=3, pool="threads"):
                ids = [await submit(rt, {"kind": "direct"}, question=f"{QUESTION} {i}")
                       for i in range(3)]  # fmt: skip
                jobs = [await wait_status(rt, j, {"succeeded", "failed"}, 20) for j in ids]
            log = (tmp_path / "threads.log").read_text()
    finally:
        configure(redis_pg_settings)
        purge_redis_prefix(str(settings.broker_url), prefix)
    assert [j.status for j in jobs] == ["succeeded"] * 3, [j.error for j in jobs]
    assert all(j.result is not None and j.result["answer"] == "5" for j in jobs)
    assert len({j.worker for j in jobs}) == 1  # one process held all three leases
    assert log.count("worker runtime ready") == 1
    # All three were running at one moment: the last start precedes the first finish.
    starts = [j.started_at for j in jobs if j.started_at is not None]
    finishes = [j.finished_at for j in jobs if j.finished_at is not None]
    assert len(starts) == len(finishes) == 3
    assert max(starts) < min(finishes)


# -- crash recovery: kill -9 a worker mid-job; a new worker and the reaper finish it ----


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.slow
async def test_sigkill_mid_job_then_reaper_resumes_with_only_the_missing_calls(
    redis_url: str,  # noqa: F811 - the fixture
    pg_database_url: str,
    simulator: Simulator,
    tmp_path: Path,
) -> None:
    # Six sequential calls of ~0.4 s each (adaptive, one sample per call, no early stop).
    simulator.set_config(
        script(Rule(replies=["The answer is 5.", "The answer is 7."]), latency=Latency(ttft_ms=400))
    )
    prefix = unique_prefix()
    settings = worker_settings(
        database_url=pg_database_url, broker_url=redis_url, data_dir=tmp_path,
        sim_url=simulator.url, key_prefix=prefix,
    )  # fmt: skip
    configure(settings)
    spec = {"kind": "self_consistency", "n": 6, "adaptive": True, "batch_size": 1,
            "min_samples": 6}  # fmt: skip
    first = WorkerProcess(settings, tmp_path / "first.log")
    second = WorkerProcess(settings, tmp_path / "second.log", reaper=True)
    try:
        async with Runtime(settings, roles={"small"}) as rt:
            # Cancelled while queued, before any worker exists: it must never run.
            never = await submit(rt, {"kind": "direct"}, question="Never run me")
            cancelled = await request_cancel(rt.sessions, never)
            assert cancelled.status == "cancelled"

            first.start()
            job_id = await submit(rt, spec)
            deadline = time.monotonic() + 20
            # Kill it mid-call: two calls journaled and the third in the server — the
            # hard case, where that call has reached the model but not the journal.
            while await journal_size(rt, job_id) < 2 or running_requests(simulator) != 1:
                assert time.monotonic() < deadline, "the job never got going"
                await asyncio.sleep(0.02)
            first_holder = (await job_row(rt, job_id)).worker
            first.kill()
            recorded = await journal_size(rt, job_id)
            sent_before_restart = simulator.stats.requests
            lost_in_flight = sent_before_restart - recorded
            assert 2 <= recorded < 6 and lost_in_flight == 1
            assert (await job_row(rt, job_id)).status == "running"

            second.start()
            job = await wait_status(rt, job_id, {"succeeded", "failed"}, timeout=30)
            assert job.status == "succeeded", job.error
            # The re-run paid exactly for the calls that were not journaled.
            assert simulator.stats.requests - sent_before_restart == 6 - recorded
            assert job.usage is not None
            assert (job.usage["journal_hits"], job.usage["live_calls"]) == (recorded, 6 - recorded)
            assert job.usage["calls"] == 6 and await journal_size(rt, job_id) == 6
            assert job.attempts == 2 and job.worker not in (None, first_holder)
            assert "reaper: requeued" in second.log()

            never_job = await job_row(rt, never)
            assert never_job.status == "cancelled"
            assert never_job.attempts == 0 and never_job.started_at is None
            assert f"job {never} skipped" in first.log()
            # Six calls in all, plus the one the killed worker had in flight, if any —
            # which the server aborted when the dead worker's connection closed. So the
            # calls answered in full are exactly those of an uninterrupted run.
            stats = simulator.stats
            assert stats.requests == 6 + lost_in_flight
            assert stats.aborted_requests == lost_in_flight
            assert stats.requests - stats.aborted_requests == 6
    finally:
        first.kill()
        second.stop()
        purge_redis_prefix(redis_url, prefix)


# -- embedded mode: SQLite and the filesystem broker, no server at all ------------------


async def test_embedded_broker_on_sqlite_runs_jobs_and_skips_cancelled_ones(
    sqlite_database_url: str, simulator: Simulator, tmp_path: Path
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    settings = worker_settings(
        database_url=sqlite_database_url, broker_url=None, data_dir=tmp_path / "data",
        sim_url=simulator.url,
    )  # fmt: skip
    assert settings.resolved_broker_url().startswith("filesystem://")
    configure(settings)
    async with Runtime(settings, roles={"small"}) as rt:
        never = await submit(rt, {"kind": "direct"}, question="Never run me")
        await request_cancel(rt.sessions, never)
        with WorkerProcess(settings, tmp_path / "embedded.log") as worker:
            jobs = [await submit(rt, {"kind": "direct"}) for _ in range(3)]
            for job_id in jobs:
                job = await wait_status(rt, job_id, {"succeeded", "failed"}, timeout=20)
                assert job.status == "succeeded", job.error
                assert job.result is not None and job.result["answer"] == "5"
            await asyncio.to_thread(
                wait_until, lambda: f"job {never} skipped" in worker.log(), 5, "the skip"
            )
            # All done: a warm shutdown of a prefork pool without Redis's event loop joins
            # Celery's pool threads one timeout at a time (~7 s); nothing is left to lose.
            worker.kill()
        assert (await job_row(rt, never)).started_at is None
        assert simulator.stats.requests == 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_runs_api_and_worker_and_stops_them_all(simulator: Simulator, tmp_path: Path) -> None:
    # Pools are configured (the simulator), so no embedded models start: the embedded
    # tier tests those. Everything else is embedded mode: SQLite, the filesystem broker.
    simulator.set_config(script(Rule(replies=["2 + 3 = 5. The answer is 5."])))
    settings = worker_settings(
        database_url=f"sqlite:///{tmp_path / 'data' / 'ponder.db'}", broker_url=None,
        data_dir=tmp_path / "data", sim_url=simulator.url,
    )  # fmt: skip
    env = settings_env(settings)
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port),
             "--worker-concurrency", "1"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert serve.poll() is None, log.read_text()
            try:
                return httpx.get(f"{base}/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, 40, "the API", interval=0.1)
        created = httpx.post(
            f"{base}/v1/jobs", json={"question": QUESTION, "strategy": {"kind": "direct"}}
        )
        assert created.status_code == 202, created.text
        job_url = f"{base}/v1/jobs/{created.json()['id']}"
        wait_until(lambda: httpx.get(job_url).json()["status"] == "succeeded", 30, "the job", 0.05)
        assert httpx.get(job_url).json()["result"]["answer"] == "5"
        children = descendants(serve.pid)
        assert len(children) >= 4, children  # worker, its pool child, reaper, API

        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0, log.read_text()
        text = log.read_text()
        assert "ponder serve: stopping" in text and "Traceback" not in text
        for pid in children:  # the worker, its pool, the reaper and the API: all gone
            wait_until(functools.partial(_dead, pid), 5, f"process {pid} to exit")
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()


def descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def _dead(pid: int) -> bool:
    return not alive(pid)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes: it only waits for its parent to reap it.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- in process, on SQLite and PostgreSQL: lease, monitor, reaper ----------------------


def monitor_for(rt: Runtime, **kwargs: Any) -> JobMonitor:
    options: dict[str, Any] = {"cancel_poll_s": 0.05, "heartbeat_s": 0.2, "stale_after_s": 1.0}
    return JobMonitor(rt.sessions, worker=worker_identity(), **{**options, **kwargs})


async def test_cancel_request_stops_the_strategy_in_process(
    runtime: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=["5"], latency=Latency(ttft_ms=30_000))))
    job_id = await submit_job(runtime.sessions, runtime.pools, question=QUESTION,
                              strategy={"kind": "direct"})  # fmt: skip
    monitor = monitor_for(runtime)
    try:
        run = asyncio.create_task(runtime.runner.run(job_id, monitor=monitor))
        while running_requests(simulator) < 1:
            await asyncio.sleep(0.02)
        asked = time.monotonic()
        await request_cancel(runtime.sessions, job_id)
        outcome = await asyncio.wait_for(run, timeout=5)
        assert time.monotonic() - asked < 1.0
    finally:
        await monitor.close()
    assert outcome.status == "cancelled"
    assert (await job_row(runtime, job_id)).status == "cancelled"
    assert monitor.running == []


async def test_time_limit_fails_the_job_with_its_partial_trace(
    runtime: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=["5"], latency=Latency(ttft_ms=30_000))))
    job_id = await submit_job(runtime.sessions, runtime.pools, question=QUESTION,
                              strategy={"kind": "direct"})  # fmt: skip
    monitor = monitor_for(runtime, time_limit=lambda max_seconds: 0.3)
    try:
        outcome = await asyncio.wait_for(runtime.runner.run(job_id, monitor=monitor), 5)
    finally:
        await monitor.close()
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["code"] == "time_limit"
    async with runtime.sessions() as session:
        kinds = [s.kind for s in await repo.list_spans(session, job_id)]
    assert kinds == ["job", "strategy", "model_call"]


async def test_lease_lets_one_run_at_a_time_and_a_dead_holder_be_replaced(
    runtime: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    job_id = await submit_job(runtime.sessions, runtime.pools, question=QUESTION,
                              strategy={"kind": "direct"})  # fmt: skip
    live = "otherhost:1:abcd1234"
    async with runtime.sessions() as session, session.begin():
        await session.execute(
            update(Job).where(Job.id == job_id)
            .values(status="running", worker=live, heartbeat_at=utcnow())
        )  # fmt: skip
    monitor = monitor_for(runtime)
    try:
        skipped = await runtime.runner.run(job_id, monitor=monitor)
        assert skipped.extra["skipped"] == f"held by worker {live}"
        assert simulator.stats.requests == 0

        # Its heartbeat goes stale: the next delivery takes the job over and finishes it.
        await asyncio.sleep(1.1)
        outcome = await runtime.runner.run(job_id, monitor=monitor)
    finally:
        await monitor.close()
    assert outcome.status == "succeeded" and "skipped" not in outcome.extra
    job = await job_row(runtime, job_id)
    assert job.worker == monitor.worker and job.attempts == 1
    finished = await runtime.runner.run(job_id, monitor=monitor_for(runtime))
    assert finished.extra["skipped"] == "finished"


async def test_a_dead_local_holder_is_replaced_at_once_until_max_attempts(
    runtime: Runtime, simulator: Simulator
) -> None:
    # A prefork child killed mid-job: Celery requeues its message at once, and its pid
    # is gone from this host, so the next delivery need not wait for staleness.
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = f"{socket.gethostname()}:{gone.pid}:deadbeef"

    async def held_by_dead_child(attempts: int) -> str:
        job_id = await submit_job(runtime.sessions, runtime.pools, question=QUESTION,
                                  strategy={"kind": "direct"})  # fmt: skip
        async with runtime.sessions() as session, session.begin():
            await session.execute(
                update(Job).where(Job.id == job_id).values(
                    status="running", worker=dead, heartbeat_at=utcnow(), attempts=attempts
                )
            )  # fmt: skip
        return job_id

    monitor = monitor_for(runtime, max_attempts=3)
    try:
        resumed = await runtime.runner.run(await held_by_dead_child(1), monitor=monitor)
        doomed_id = await held_by_dead_child(3)
        doomed = await runtime.runner.run(doomed_id, monitor=monitor)
    finally:
        await monitor.close()
    assert resumed.status == "succeeded" and "skipped" not in resumed.extra
    assert doomed.extra["skipped"] == "its worker died; not run again"
    assert doomed.status == "failed"
    assert doomed.error is not None and doomed.error["code"] == "worker_lost"
    assert simulator.stats.requests == 1


async def test_reaper_requeues_orphans_and_settles_the_rest(runtime: Runtime) -> None:
    published: list[tuple[str, str, float | None]] = []

    def publish(job_id: str, *, priority: str, max_seconds: float | None) -> None:
        published.append((job_id, priority, max_seconds))

    async def job(**values: Any) -> str:
        job_id = await submit_job(
            runtime.sessions, runtime.pools, question=QUESTION, strategy={"kind": "direct"},
            budget={"max_seconds": 9},
        )  # fmt: skip
        if values:
            async with runtime.sessions() as session, session.begin():
                await session.execute(update(Job).where(Job.id == job_id).values(**values))
        return job_id

    long_ago = utcnow().replace(year=2020)
    dead = "gone:1:00000000"
    orphan = await job(status="running", worker=dead, heartbeat_at=long_ago, attempts=1,
                       priority="high")  # fmt: skip
    doomed = await job(status="running", worker=dead, heartbeat_at=long_ago, attempts=3)
    unwanted = await job(status="running", worker=dead, heartbeat_at=long_ago, attempts=1,
                         cancel_requested_at=long_ago)  # fmt: skip
    alive = await job(status="running", worker="here:2:11111111", heartbeat_at=utcnow())
    solo = await job(status="running", started_at=long_ago)  # `ponder solve`: no worker
    lost = await job(created_at=long_ago)
    fresh = await job()

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    reaper = Reaper(runtime.sessions, settings, publish=publish)
    report = await reaper.sweep()

    assert report.requeued == [orphan]
    assert report.gave_up == [doomed]
    assert report.cancelled == [unwanted]
    assert report.republished == [lost]
    assert published == [(orphan, "high", 9.0), (lost, "default", 9.0)]
    statuses = {j: (await job_row(runtime, j)).status for j in
                (orphan, doomed, unwanted, alive, solo, lost, fresh)}  # fmt: skip
    assert statuses == {
        orphan: "queued", doomed: "failed", unwanted: "cancelled", alive: "running",
        solo: "running", lost: "queued", fresh: "queued",
    }  # fmt: skip
    assert (await job_row(runtime, doomed)).error["code"] == "worker_lost"  # type: ignore[index]
    # A second sweep right after finds nothing to do: each job is handled once.
    assert not await reaper.sweep()
    async with runtime.sessions() as session:
        assert await repo.count_calls(session, orphan) == 0
        assert (await session.get(Job, lost)) is not None


async def test_heartbeats_continue_while_strategy_code_holds_the_event_loop(
    runtime: Runtime, simulator: Simulator
) -> None:
    """A worker's heartbeat comes from its own thread: a strategy that keeps the event
    loop busy (CPU work between awaits) must not look dead to the reaper."""
    assert runtime.sync_engine is not None
    simulator.set_config(script(Rule(replies=["5"], latency=Latency(ttft_ms=30_000))))
    job_id = await submit_job(runtime.sessions, runtime.pools, question=QUESTION,
                              strategy={"kind": "direct"})  # fmt: skip
    monitor = monitor_for(runtime, heartbeat_engine=runtime.sync_engine)
    run = asyncio.create_task(runtime.runner.run(job_id, monitor=monitor))
    try:
        await wait_status(runtime, job_id, {"running"}, timeout=10)
        first = (await job_row(runtime, job_id)).heartbeat_at
        time.sleep(1.0)  # the loop is held: five heartbeat intervals pass without it
        stamped = _heartbeat_of(runtime, job_id)  # still without yielding to the loop
        assert first is not None and stamped is not None and stamped > first
    finally:
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        await monitor.close()


def _heartbeat_of(rt: Runtime, job_id: str) -> Any:
    from sqlalchemy import select

    assert rt.sync_engine is not None
    with rt.sync_engine.connect() as connection:
        return connection.execute(select(Job.heartbeat_at).where(Job.id == job_id)).scalar()
