"""How many transactions a job commits on the worker, counted on the worker's own engines.

Each commit on PostgreSQL is a round trip and a WAL record; the count per job bounds the
jobs per second a worker can sustain. A job's run commits once to claim it, once per
journal write its model calls need (a row is durable before the strategy sees the
result; the spans opened so far ride along), and once to finish, with the remaining
spans. These tests pin that count, so an extra commit on the hot path shows up here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, event

from core.cancel import JobMonitor
from core.db import repo
from core.db.engine import make_engine
from core.jobs import submit_job
from core.runner import InfrastructureFailure, ReleasedLease, Runner, RunOutcome
from core.runtime import Runtime
from core.simulator.config import Failure, Rule, SimulatorConfig
from core.simulator.server import Simulator


@contextmanager
def counting_commits(*engines: Engine) -> Iterator[list[str]]:
    """Every commit on ``engines`` while the block runs, by engine (``async``/``trace``)."""
    commits: list[str] = []
    listeners = []
    for name, engine in zip(("async", "trace"), engines, strict=True):

        def on_commit(_conn: Any, name: str = name) -> None:
            commits.append(name)

        event.listen(engine, "commit", on_commit)
        listeners.append((engine, on_commit))
    try:
        yield commits
    finally:
        for engine, listener in listeners:
            event.remove(engine, "commit", listener)


async def run_as_worker(
    rt: Runtime, strategy: dict[str, Any], *, job_id: str | None = None, worker: str = "w1"
) -> tuple[RunOutcome, list[str]]:
    """Submit a job (unless ``job_id``), then run it the way a Celery worker does (lease,
    monitor: ``workers.runtime``), counting the commits of the run alone."""
    if job_id is None:
        job_id = await submit_job(
            rt.sessions, rt.pools, question="What is 2 + 3?", strategy=strategy, seed=7
        )
    # Heartbeats are per interval, not per job: keep them out of a per-job count.
    monitor = JobMonitor(rt.sessions, worker=worker, heartbeat_s=3600.0)
    assert rt.engine is not None and rt.sync_engine is not None
    try:
        with counting_commits(rt.engine.sync_engine, rt.sync_engine) as commits:
            outcome = await rt.runner.run(job_id, monitor=monitor)
    finally:
        await monitor.close()
    return outcome, commits


async def kinds_of_spans(rt: Runtime, job_id: str) -> list[tuple[str, str]]:
    async with rt.sessions() as session:
        return [(s.kind, s.name) for s in await repo.list_spans(session, job_id)]


def sim(*replies: str) -> SimulatorConfig:
    return SimulatorConfig(models=["sim-small", "sim-large"], rules=[Rule(replies=list(replies))])


async def test_a_direct_job_commits_claim_journal_and_finish(
    runtime: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(sim("2 + 3 = 5. The answer is 5."))
    outcome, commits = await run_as_worker(runtime, {"kind": "direct"})
    assert outcome.status == "succeeded" and outcome.result is not None
    assert outcome.result["answer"] == "5"
    # claim+start; the journal row with the spans opened so far; result+spans+finish.
    assert len(commits) == 3, commits
    # Nothing of the trace was lost by riding on other transactions.
    assert await kinds_of_spans(runtime, outcome.job_id) == [
        ("job", "job"),
        ("strategy", "direct"),
        ("model_call", "small.generate"),
        ("event", "answer"),
    ]


async def test_a_resumed_direct_job_commits_only_claim_and_finish(
    runtime: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(sim("The answer is 5."))
    first, _ = await run_as_worker(runtime, {"kind": "direct"})
    # Run it again as a redelivered job whose journal holds the call: nothing to journal.
    async with runtime.sessions() as session, session.begin():
        job = await repo.get_job(session, first.job_id)
        assert job is not None
        job.status, job.worker = "queued", None
    again, commits = await run_as_worker(runtime, {}, job_id=first.job_id, worker="w2")
    assert again.status == "succeeded" and again.live_calls == 0 and again.replayed_calls == 1
    assert len(commits) == 2, commits
    assert [k for k, _ in await kinds_of_spans(runtime, first.job_id)] == [
        "job",
        "strategy",
        "model_call",
        "event",
    ]


async def test_adaptive_self_consistency_commits_once_per_journal_write(
    runtime: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(sim("The answer is 5."))
    outcome, commits = await run_as_worker(
        runtime,
        {"kind": "self_consistency", "n": 16, "adaptive": True, "batch_size": 1, "min_samples": 1},
    )
    assert outcome.status == "succeeded" and outcome.result is not None
    assert outcome.usage is not None and outcome.usage["calls"] == 4
    # claim, one journal write per sequential call, finish.
    assert len(commits) == 1 + 4 + 1, commits


async def test_a_failed_call_keeps_its_trace_on_the_finish_transaction(
    runtime: Runtime, simulator: Simulator
) -> None:
    # A 400 is not retried: the call fails, nothing is journaled, the job fails.
    simulator.set_config(
        SimulatorConfig(
            models=["sim-small", "sim-large"],
            rules=[Rule(replies=["The answer is 5."])],
            failures=[Failure(status=400, times=1)],
        )
    )
    outcome, commits = await run_as_worker(runtime, {"kind": "direct"})
    assert outcome.status == "failed" and outcome.error is not None
    assert len(commits) == 2, commits  # claim; outcome with the whole trace
    async with runtime.sessions() as session:
        spans = {s.kind: s for s in await repo.list_spans(session, outcome.job_id)}
        assert await repo.count_calls(session, outcome.job_id) == 0
    assert set(spans) == {"job", "strategy", "model_call"}
    assert "error" in spans["model_call"].attributes
    # The spans that were open when the error passed through were closed, with it.
    assert all(s.end_ts is not None for s in spans.values())
    assert spans["strategy"].attributes["status"] != "ok"


async def test_a_trace_write_failure_names_the_lease_for_the_retry(
    runtime: Runtime, simulator: Simulator
) -> None:
    """The database failing under the trace writer (not under the strategy) still hands
    the task the run's lease: without it the retry waited for the lease to go stale
    (30 s in production) after the outage ended."""
    simulator.set_config(sim("The answer is 5."))
    job_id = await submit_job(
        runtime.sessions, runtime.pools, question="What is 2 + 3?", strategy={"kind": "direct"}
    )
    # The trace engine's database cannot be opened: every trace write fails.
    dead = make_engine("sqlite:////nonexistent/ponder/trace.db")
    monitor = JobMonitor(runtime.sessions, worker="w1", heartbeat_s=3600.0)
    try:
        with pytest.raises(InfrastructureFailure) as failure:
            await Runner(runtime.sessions, runtime.pools, dead).run(job_id, monitor=monitor)
    finally:
        await monitor.close()
        dead.dispose()
    assert failure.value.released == ReleasedLease("w1", 1)
    async with runtime.sessions() as session, session.begin():
        job = await repo.get_job(session, job_id)
        assert job is not None and job.status == "running" and job.worker == "w1"
        # Not left running on the shared database: a reaper in a later test would take
        # it over and call the simulator that test counts.
        job.status, job.worker = "failed", None
