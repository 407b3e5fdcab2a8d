"""A job run's two transactions on the worker: claim it, and save its outcome.

Both run as SQLAlchemy Core statements on the runner's *synchronous* engine, one thread
hop each (``asyncio.to_thread``), like the trace writer's batches. Through the async
session they cost a greenlet switch per statement plus the ORM's bulk-update machinery:
profiled on a `direct` job on PostgreSQL, the claim and the save were 74 % of the
runner's CPU (about 7 of 9.4 ms per job). Here:

- ``claim``: one ``UPDATE ... RETURNING`` takes the lease and reads what the run needs,
  in autocommit mode. A previous attempt's spans are deleted and the journal is read
  only when there can be any: a job run before (``attempts > 1``) or a replay or fork
  seeded with its parent's journal. A fresh job pays one round trip.
- ``finish``: the outcome (a compare-and-set on the lease), the trace not yet committed
  and its journal rows, and the live-stream notification, in one transaction. On
  PostgreSQL it commits synchronously (``SET LOCAL synchronous_commit``): the engine's
  default is off, which is right for trace batches but not for a job's outcome, which a
  client may read the moment it commits.

The rare paths (taking over a released or dead lease, a job cancelled while queued) stay
in ``core.runner`` on the async session; ``claim`` returns None for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, select, text, update

from core.db.control import claimable
from core.db.models import Job, JobStatus, ModelCall, Span, utcnow
from core.trace import TraceRows

_SYNC_COMMIT = text("SET LOCAL synchronous_commit TO on")


@dataclass(frozen=True)
class ClaimedJob:
    """What a run needs of its job row, and its journal so far."""

    id: str
    tenant: str
    question: str
    conversation: dict[str, Any] | None
    strategy: dict[str, Any]
    budget: dict[str, Any]
    roles: dict[str, Any]
    seed: int
    replay_mode: str | None
    worker: str | None
    attempts: int
    entries: list[ModelCall]

    @classmethod
    def of(cls, job: Any, entries: list[ModelCall]) -> ClaimedJob:
        """From anything with the job's columns as attributes: the claim's ``RETURNING``
        row, or a ``Job`` the async path claimed."""
        return cls(
            id=job.id,
            tenant=job.tenant,
            question=job.question,
            conversation=job.conversation,
            strategy=job.strategy,
            budget=job.budget or {},
            roles=job.roles or {},
            seed=job.seed,
            replay_mode=job.replay_mode,
            worker=job.worker,
            attempts=job.attempts,
            entries=entries,
        )


_COLUMNS = (
    Job.id,
    Job.tenant,
    Job.question,
    Job.conversation,
    Job.strategy,
    Job.budget,
    Job.roles,
    Job.seed,
    Job.replay_mode,
    Job.worker,
    Job.attempts,
    Job.parent_job_id,
)


def claim(
    engine: Engine,
    job_id: str,
    *,
    worker: str | None,
    stale_before: datetime | None = None,
    max_attempts: int | None = None,
) -> ClaimedJob | None:
    """Start the job; None when it cannot be started this simple way.

    With ``worker`` (a Celery worker, the API's lane) this takes the lease, as
    ``core.db.control.claim_job`` does: a queued job, or a running one whose heartbeat is
    older than ``stale_before`` and has runs left; never one with a cancel request.
    Without (``ponder solve``, ``resume``), any job not succeeded or cancelled starts.
    """
    now = utcnow()
    if worker is not None:
        assert stale_before is not None and max_attempts is not None
        startable = claimable(stale_before=stale_before, max_attempts=max_attempts)
        values: dict[str, Any] = {"worker": worker, "heartbeat_at": now}
    else:
        startable = Job.status.not_in([JobStatus.SUCCEEDED, JobStatus.CANCELLED])
        values = {}
    statement = (
        update(Job)
        .where(Job.id == job_id, startable)
        .values(
            status=JobStatus.RUNNING,
            attempts=Job.attempts + 1,
            started_at=now,
            finished_at=None,
            error=None,
            **values,
        )
        .returning(*_COLUMNS)
    )
    # Autocommit: the claim is one statement, so BEGIN and COMMIT would be two round trips
    # more. What follows it needs no transaction of its own: the lease is held by then.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        row = conn.execute(statement).first()
        if row is None:
            return None
        entries: list[ModelCall] = []
        if row.attempts > 1 or row.parent_job_id is not None:
            conn.execute(delete(Span).where(Span.job_id == job_id))
            entries = _journal(conn, job_id)
    return ClaimedJob.of(row, entries)


def _journal(conn: Connection, job_id: str) -> list[ModelCall]:
    table = ModelCall.__table__
    rows = conn.execute(select(table).where(table.c.job_id == job_id).order_by(table.c.seq))
    return [ModelCall(**row._mapping) for row in rows]


def finish(
    engine: Engine,
    job_id: str,
    *,
    worker: str | None,
    status: str,
    result: dict[str, Any] | None,
    usage: dict[str, Any] | None,
    error: dict[str, Any] | None,
    trace: TraceRows,
) -> bool:
    """Save the outcome with the rest of the trace; False, writing nothing, when
    ``worker`` no longer holds the lease (the new holder traces its own run). Without
    ``worker`` (the CLI) the job is saved whoever holds it."""
    condition = [Job.id == job_id]
    if worker is not None:
        condition += [Job.worker == worker, Job.status == JobStatus.RUNNING]
    statement = (
        update(Job)
        .where(*condition)
        .values(status=status, result=result, usage=usage, error=error, finished_at=utcnow())
    )
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(_SYNC_COMMIT)
        if conn.execute(statement).rowcount != 1:
            return False  # nothing was written
        # The journal rows and spans not committed yet; then wake the job's streams.
        trace.job_ids.add(job_id)
        trace.write(conn)
    return True
