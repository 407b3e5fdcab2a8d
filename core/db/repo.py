"""Repository functions: every SQL statement about jobs, spans and the journal lives here.

Functions take a session and never commit: the caller's unit of work (a CLI command,
a task, a request) owns the transaction boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.db.models import Job, JobStatus, ModelCall, Span, utcnow


async def create_job(
    session: AsyncSession,
    *,
    question: str,
    strategy: dict[str, Any],
    budget: dict[str, Any],
    roles: dict[str, Any] | None = None,
    seed: int = 0,
    tenant: str = "default",
    parent_job_id: str | None = None,
    fork_point: int | None = None,
    replay_mode: str | None = None,
    idempotency_key: str | None = None,
) -> Job:
    job = Job(
        question=question,
        strategy=strategy,
        budget=budget,
        roles=roles or {},
        seed=seed,
        tenant=tenant,
        parent_job_id=parent_job_id,
        fork_point=fork_point,
        replay_mode=replay_mode,
        idempotency_key=idempotency_key,
        status=JobStatus.QUEUED,
    )
    session.add(job)
    await session.flush()
    return job


async def get_job(session: AsyncSession, job_id: str) -> Job | None:
    return await session.get(Job, job_id)


async def find_job_by_prefix(session: AsyncSession, prefix: str) -> list[Job]:
    """Jobs whose id starts with ``prefix`` (the CLI accepts short ids like git does)."""
    rows = await session.execute(select(Job).where(Job.id.startswith(prefix)).limit(2))
    return list(rows.scalars())


async def mark_running(session: AsyncSession, job: Job) -> None:
    job.status = JobStatus.RUNNING
    job.attempts += 1
    job.started_at = utcnow()
    job.finished_at = None
    job.error = None


async def finish_job(
    session: AsyncSession,
    job: Job,
    *,
    status: str,
    result: dict[str, Any] | None,
    usage: dict[str, Any] | None,
    error: dict[str, Any] | None = None,
) -> None:
    job.status = status
    job.result = result
    job.usage = usage
    job.error = error
    job.finished_at = utcnow()


async def delete_spans(session: AsyncSession, job_id: str) -> None:
    """Drop a previous attempt's trace: a resumed job rebuilds it from the top."""
    await session.execute(delete(Span).where(Span.job_id == job_id))


async def list_spans(session: AsyncSession, job_id: str) -> Sequence[Span]:
    rows = await session.execute(select(Span).where(Span.job_id == job_id).order_by(Span.seq))
    return rows.scalars().all()


async def list_calls(
    session: AsyncSession, job_id: str, *, limit: int | None = None
) -> Sequence[ModelCall]:
    query = select(ModelCall).where(ModelCall.job_id == job_id).order_by(ModelCall.seq)
    if limit is not None:
        query = query.limit(limit)
    rows = await session.execute(query)
    return rows.scalars().all()


async def count_calls(session: AsyncSession, job_id: str) -> int:
    value = await session.scalar(
        select(func.count()).select_from(ModelCall).where(ModelCall.job_id == job_id)
    )
    return int(value or 0)


async def copy_journal(
    session: AsyncSession, *, source_job_id: str, target_job_id: str, limit: int | None
) -> int:
    """Seed a child job's journal with the parent's first ``limit`` entries (all if None)."""
    entries = await list_calls(session, source_job_id, limit=limit)
    for entry in entries:
        session.add(
            ModelCall(
                job_id=target_job_id,
                seq=entry.seq,
                key=entry.key,
                occurrence=entry.occurrence,
                role=entry.role,
                request=entry.request,
                response=entry.response,
                endpoint=entry.endpoint,
                latency_ms=entry.latency_ms,
                attempts=entry.attempts,
                prompt_tokens=entry.prompt_tokens,
                completion_tokens=entry.completion_tokens,
                cost=entry.cost,
                source_job_id=entry.source_job_id or source_job_id,
                created_at=entry.created_at,
            )
        )
    await session.flush()
    return len(entries)


async def close_span(
    session: AsyncSession,
    span_id: str,
    *,
    end_ts: datetime,
    attributes: dict[str, Any] | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cost: float = 0.0,
) -> None:
    values: dict[str, Any] = {
        "end_ts": end_ts,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost": cost,
    }
    if attributes is not None:
        values["attributes"] = attributes
    await session.execute(update(Span).where(Span.id == span_id).values(**values))
