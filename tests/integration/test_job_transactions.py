"""How many transactions a job commits on the worker, counted on the worker's own engines.

Each commit on PostgreSQL is a round trip and a WAL record; the count per job bounds the
jobs per second a worker can sustain. A job's run commits once to claim it; a model
call's journal row (with the spans opened so far) commits in the background when the job
starts its next call, or with the outcome; and once to finish, with whatever is left.
These tests pin that count, so an extra commit on the hot path shows up here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError

from core.cancel import JobMonitor
from core.db import repo
from core.jobs import submit_job
from core.runner import InfrastructureFailure, ReleasedLease, RunOutcome
from core.runtime import Runtime
from core.simulator.config import Failure, Rule, SimulatorConfig
from core.simulator.server import Simulator


@contextmanager
def counting_commits(*engines: Engine) -> Iterator[list[str]]:
    """Every commit on ``engines`` while the block runs, by engine (``async``/``trace``).

    A write in autocommit mode (the claim: ``core.db.runs``) is a commit of its own."""
    commits: list[str] = []
    listeners: list[tuple[Engine, str, Any]] = []
    for name, engine in zip(("async", "trace"), engines, strict=True):

        def on_commit(_conn: Any, name: str = name) -> None:
            commits.append(name)

        def on_statement(
            conn: Any, _cursor: Any, statement: str, *_: Any, name: str = name
        ) -> None:
            autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
            if autocommit and not statement.lstrip().upper().startswith("SELECT"):
                commits.append(name)

        event.listen(engine, "commit", on_commit)
        event.listen(engine, "after_cursor_execute", on_statement)
        listeners += [(engine, "commit", on_commit), (engine, "after_cursor_execute", on_statement)]
    try:
        yield commits
    finally:
        for engine, kind, listener in listeners:
            event.remove(engine, kind, listener)


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


async def test_a_direct_job_commits_claim_and_finish(
    runtime: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(sim("2 + 3 = 5. The answer is 5."))
    outcome, commits = await run_as_worker(runtime, {"kind": "direct"})
    assert outcome.status == "succeeded" and outcome.result is not None
    assert outcome.result["answer"] == "5"
    # claim+start; result + journal row + spans + finish.
    assert len(commits) == 2, commits
    # Nothing of the trace or the journal was lost by riding on the finish.
    assert await kinds_of_spans(runtime, outcome.job_id) == [
        ("job", "job"),
        ("strategy", "direct"),
        ("model_call", "small.generate"),
        ("event", "answer"),
    ]
    async with runtime.sessions() as session:
        assert await repo.count_calls(session, outcome.job_id) == 1


async def test_a_resumed_direct_job_commits_claim_cleanup_and_finish(
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
    # claim; the first run's spans deleted (only a job run before pays this); finish.
    assert len(commits) == 3, commits
    assert [k for k, _ in await kinds_of_spans(runtime, first.job_id)] == [
        "job",
        "strategy",
        "model_call",
        "event",
    ]


async def test_sequential_calls_commit_earlier_rows_as_the_next_call_starts(
    runtime: Runtime, simulator: Simulator
) -> None:
    simulator.set_config(sim("The answer is 5."))
    outcome, commits = await run_as_worker(
        runtime,
        {"kind": "self_consistency", "n": 16, "adaptive": True, "batch_size": 1, "min_samples": 1},
    )
    assert outcome.status == "succeeded" and outcome.result is not None
    assert outcome.usage is not None and outcome.usage["calls"] == 4
    # claim; calls 2-4 each start a background commit of the rows before them (two may
    # share one when a call ends before the previous commit did); finish with the last.
    assert 3 <= len(commits) <= 1 + 3 + 1, commits
    assert commits.count("trace") >= 1, "no journal row was committed before the outcome"
    async with runtime.sessions() as session:
        assert await repo.count_calls(session, outcome.job_id) == 4


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


@pytest.mark.parametrize(
    "strategy",
    [
        # Fails at the finish, which carries the journal row and the trace.
        {"kind": "direct"},
        # Fails at the background commit the second call starts, mid-job.
        {"kind": "self_consistency", "n": 2, "adaptive": True, "batch_size": 1, "min_samples": 2},
    ],
    ids=["at-finish", "mid-job"],
)
async def test_a_trace_write_failure_names_the_lease_for_the_retry(
    runtime: Runtime, simulator: Simulator, strategy: dict[str, Any]
) -> None:
    """The database failing under the trace (after the claim) still hands the task the
    run's lease: without it the retry waited for the lease to go stale (30 s in
    production) after the outage ended. And no outcome is saved without its trace."""
    simulator.set_config(sim("The answer is 5."))
    job_id = await submit_job(
        runtime.sessions, runtime.pools, question="What is 2 + 3?", strategy=strategy
    )
    assert runtime.sync_engine is not None

    def fail_trace_writes(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT INTO MODEL_CALLS", "INSERT INTO SPANS")):
            raise OperationalError(statement, None, ConnectionError("the database went away"))

    event.listen(runtime.sync_engine, "before_cursor_execute", fail_trace_writes)
    monitor = JobMonitor(runtime.sessions, worker="w1", heartbeat_s=3600.0)
    try:
        with pytest.raises(InfrastructureFailure) as failure:
            await runtime.runner.run(job_id, monitor=monitor)
    finally:
        event.remove(runtime.sync_engine, "before_cursor_execute", fail_trace_writes)
        await monitor.close()
    assert failure.value.released == ReleasedLease("w1", 1)
    async with runtime.sessions() as session, session.begin():
        job = await repo.get_job(session, job_id)
        assert job is not None and job.status == "running" and job.worker == "w1"
        assert job.result is None
        # Not left running on the shared database: a reaper in a later test would take
        # it over and call the simulator that test counts.
        job.status, job.worker = "failed", None
