"""Repository functions: every SQL statement about jobs, spans and the journal lives here.

Functions take a session and never commit: the caller's unit of work (a CLI command,
a task, a request) owns the transaction boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    TextClause,
    and_,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from core import live
from core.db.models import ApiKey, Job, JobStatus, ModelCall, Span, new_id, utcnow

job_created_hooks: list[Callable[[Job], None]] = []
"""Called with each job ``create_job`` inserts, right after the INSERT, in the caller's
context (``core.telemetry`` notes the API request that created it). A Core INSERT fires
no ORM events, hence this list. A hook must not raise or block."""


async def create_job(
    session: AsyncSession,
    *,
    question: str,
    strategy: dict[str, Any],
    budget: dict[str, Any],
    roles: dict[str, Any] | None = None,
    conversation: dict[str, Any] | None = None,
    seed: int = 0,
    tenant: str = "default",
    parent_job_id: str | None = None,
    fork_point: int | None = None,
    replay_mode: str | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    priority: str = "default",
) -> Job:
    """Insert a queued job; the returned ``Job`` is not attached to ``session``.

    A Core INSERT with every column given, not ``session.add`` + flush: the ORM's unit of
    work cost more than the statement on every submission (the API's hot path). The
    returned object carries the row as written (its ``created_at``, ``attempts`` 0)."""
    values: dict[str, Any] = {
        "id": new_id(),
        "tenant": tenant,
        "status": JobStatus.QUEUED,
        "question": question,
        "conversation": conversation,
        "strategy": strategy,
        "budget": budget,
        "roles": roles or {},
        "seed": seed,
        "result": None,
        "usage": None,
        "error": None,
        "attempts": 0,
        "created_at": utcnow(),
        "started_at": None,
        "finished_at": None,
        "parent_job_id": parent_job_id,
        "fork_point": fork_point,
        "replay_mode": replay_mode,
        "idempotency_key": idempotency_key,
        "request_hash": request_hash,
        "priority": priority,
        "worker": None,
        "heartbeat_at": None,
        "cancel_requested_at": None,
        "enqueued_at": None,
    }
    await session.execute(insert(Job), values)
    job = Job(**values)
    for hook in job_created_hooks:
        hook(job)
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
    await live.notify_session(session, [job.id])  # its streams send job_finished


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
    session: AsyncSession,
    *,
    source_job_id: str,
    target_job_id: str,
    limit: int | None,
    responses: Mapping[int, dict[str, Any]] | None = None,
) -> int:
    """Seed a child job's journal with the parent's first ``limit`` entries (all if None);
    ``responses`` replaces the recorded response of the entries with these seqs (a
    what-if on a tool's result)."""
    entries = await list_calls(session, source_job_id, limit=limit)
    replaced = dict(responses or {})
    for entry in entries:
        session.add(
            ModelCall(
                job_id=target_job_id,
                seq=entry.seq,
                key=entry.key,
                occurrence=entry.occurrence,
                role=entry.role,
                request=entry.request,
                response=replaced.get(entry.seq, entry.response),
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


# -- the API: tenant-scoped reads, listing, idempotency, keys, metrics ------------------


async def get_job_for_tenant(session: AsyncSession, job_id: str, tenant: str) -> Job | None:
    """A job only if it belongs to ``tenant``: another tenant's job is indistinguishable
    from a job that does not exist."""
    job = await session.get(Job, job_id)
    return job if job is not None and job.tenant == tenant else None


async def get_job_by_idempotency_key(session: AsyncSession, tenant: str, key: str) -> Job | None:
    rows = await session.execute(
        select(Job).where(Job.tenant == tenant, Job.idempotency_key == key)
    )
    return rows.scalars().first()


@dataclass(frozen=True)
class JobFilters:
    """What ``GET /v1/jobs`` narrows a listing by; None is no filter on that field.

    ``q`` matches a substring of the question or the answer (case-insensitive), or the
    start of an id (a short id, as lists show; inside ids, digits would match at random).
    Cost and latency filters skip jobs without the figure (unfinished, or cost unknown on
    an unpriced pool).
    """

    status: str | None = None
    strategy: str | None = None
    model: str | None = None
    q: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    min_cost: float | None = None
    max_cost: float | None = None
    min_latency_ms: float | None = None
    max_latency_ms: float | None = None


def _latency_ms(dialect: str) -> ColumnElement[Any]:
    """A job's latency in ms: the runner's ``usage.wall_s``, else finished − started."""
    if dialect == "postgresql":
        elapsed_s: ColumnElement[Any] = func.extract("epoch", Job.finished_at - Job.started_at)
    else:  # SQLite stores UTC text that julianday() reads, fractions of a second included
        elapsed_s = (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0
    return func.coalesce(Job.usage["wall_s"].as_float(), elapsed_s) * 1000.0


def _uses_model(dialect: str, model: str) -> TextClause:
    """Some role of the job is bound to ``model`` (``roles``: ``{role: {pool, model}}``)."""
    if dialect == "postgresql":
        clause = text(
            "EXISTS (SELECT 1 FROM jsonb_each(jobs.roles) AS r(role, bound) "
            "WHERE jsonb_typeof(r.bound) = 'object' AND r.bound ->> 'model' = :model)"
        )
    else:
        clause = text(
            "EXISTS (SELECT 1 FROM json_each(jobs.roles) AS r "
            "WHERE r.type = 'object' AND json_extract(r.value, '$.model') = :model)"
        )
    return clause.bindparams(model=model)


async def list_jobs(
    session: AsyncSession,
    tenant: str | None,
    *,
    limit: int,
    filters: JobFilters = JobFilters(),
    before: tuple[datetime, str] | None = None,
) -> Sequence[Job]:
    """A tenant's jobs (every tenant's with ``tenant=None``), newest first; ``before`` is
    the keyset cursor ``(created_at, id)`` of the last job of the previous page (stable
    under concurrent inserts, unlike OFFSET). JSON fields are read with each dialect's
    JSON operators (``->>`` on PostgreSQL, ``json_extract`` on SQLite): no extra columns."""
    f = filters
    dialect = session.get_bind().dialect.name
    query = select(Job)
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    if f.status is not None:
        query = query.where(Job.status == f.status)
    if f.strategy is not None:
        query = query.where(Job.strategy["kind"].as_string() == f.strategy)
    if f.model is not None:
        query = query.where(_uses_model(dialect, f.model))
    if f.q:
        query = query.where(
            or_(
                Job.question.icontains(f.q, autoescape=True),
                Job.result["answer"].as_string().icontains(f.q, autoescape=True),
                Job.id.startswith(f.q.lower(), autoescape=True),
            )
        )
    if f.created_after is not None:
        query = query.where(Job.created_at > f.created_after)
    if f.created_before is not None:
        query = query.where(Job.created_at < f.created_before)
    cost = Job.usage["cost"].as_float()
    if f.min_cost is not None:
        query = query.where(cost >= f.min_cost)
    if f.max_cost is not None:
        query = query.where(cost <= f.max_cost)
    if f.min_latency_ms is not None or f.max_latency_ms is not None:
        latency = _latency_ms(dialect)
        if f.min_latency_ms is not None:
            query = query.where(latency >= f.min_latency_ms)
        if f.max_latency_ms is not None:
            query = query.where(latency <= f.max_latency_ms)
    if before is not None:
        created, job_id = before
        query = query.where(
            or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id))
        )
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    rows = await session.execute(query)
    return rows.scalars().all()


async def job_progress(session: AsyncSession, job_id: str) -> tuple[str, int] | None:
    """``(status, attempts)`` without loading the job's JSON columns (polled by streams)."""
    row = (await session.execute(select(Job.status, Job.attempts).where(Job.id == job_id))).first()
    return None if row is None else (row[0], row[1])


async def list_spans_after(
    session: AsyncSession, job_id: str, seq: int, *, limit: int = 500
) -> Sequence[Span]:
    rows = await session.execute(
        select(Span).where(Span.job_id == job_id, Span.seq > seq).order_by(Span.seq).limit(limit)
    )
    return rows.scalars().all()


async def list_closed_spans(session: AsyncSession, span_ids: Sequence[str]) -> Sequence[Span]:
    """Those of ``span_ids`` that have ended, in seq order."""
    if not span_ids:
        return []
    rows = await session.execute(
        select(Span).where(Span.id.in_(list(span_ids)), Span.end_ts.is_not(None)).order_by(Span.seq)
    )
    return rows.scalars().all()


async def create_api_key(
    session: AsyncSession, *, tenant: str, key_hash: str, scope: str = "tenant"
) -> ApiKey:
    key = ApiKey(tenant=tenant, key_hash=key_hash, scope=scope)
    session.add(key)
    await session.flush()
    return key


async def tenant_for_key_hash(session: AsyncSession, key_hash: str) -> str | None:
    return await session.scalar(
        select(ApiKey.tenant).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    )


async def principal_for_key_hash(session: AsyncSession, key_hash: str) -> tuple[str, str] | None:
    """(tenant, scope) of an active key."""
    row = (
        await session.execute(
            select(ApiKey.tenant, ApiKey.scope).where(
                ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)
            )
        )
    ).first()
    return (row[0], row[1]) if row is not None else None


async def list_api_keys(session: AsyncSession, tenant: str | None = None) -> Sequence[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return (await session.scalars(query)).all()


async def get_api_key(session: AsyncSession, key_id: str) -> ApiKey | None:
    return await session.get(ApiKey, key_id)


async def revoke_api_key(session: AsyncSession, key: ApiKey) -> None:
    """Stamp ``revoked_at`` once; a key revoked before keeps its first date."""
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await session.flush()


async def any_active_api_key(session: AsyncSession) -> bool:
    found = await session.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1))
    return found is not None


async def any_api_key(session: AsyncSession) -> bool:
    """Whether a key was ever created, revoked or not: from then on the API needs one.

    Revoking the last key must not reopen the API to everyone."""
    found = await session.scalar(select(ApiKey.id).limit(1))
    return found is not None


async def count_jobs_by_status_and_priority(session: AsyncSession) -> dict[tuple[str, str], int]:
    """(status, priority) -> jobs: ``/metrics``'s job gauges, queue depth and jobs in
    flight from one grouped query."""
    rows = await session.execute(
        select(Job.status, Job.priority, func.count()).group_by(Job.status, Job.priority)
    )
    return {(status, priority): int(count) for status, priority, count in rows.all()}


async def live_call_stats(
    session: AsyncSession, buckets_ms: Sequence[float]
) -> list[dict[str, Any]]:
    """Per role, over live calls only (journal rows copied into a replay are not calls):
    count, token sums, latency sum and cumulative latency-bucket counts."""
    bucket_columns = [
        func.sum(case((ModelCall.latency_ms <= bound, 1), else_=0)) for bound in buckets_ms
    ]
    query = (
        select(
            ModelCall.role,
            func.count(),
            func.coalesce(func.sum(ModelCall.prompt_tokens), 0),
            func.coalesce(func.sum(ModelCall.completion_tokens), 0),
            func.coalesce(func.sum(ModelCall.latency_ms), 0.0),
            func.coalesce(func.sum(ModelCall.cost), 0.0),
            *bucket_columns,
        )
        .where(ModelCall.source_job_id.is_(None))
        .group_by(ModelCall.role)
    )
    out = []
    for row in (await session.execute(query)).all():
        role, count, prompt, completion, latency_sum, cost, *buckets = row
        out.append(
            {
                "role": role,
                "count": int(count),
                "prompt_tokens": int(prompt),
                "completion_tokens": int(completion),
                "latency_ms_sum": float(latency_sum),
                "cost": float(cost),
                "buckets": [int(b or 0) for b in buckets],
            }
        )
    return out
