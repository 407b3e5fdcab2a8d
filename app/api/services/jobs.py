"""Submitting, listing, reading, replaying and cancelling a tenant's jobs.

A job is created by ``core.jobs.submit``, as for the CLI and the evals; this module adds
what is the API's: the tenant's budget limits and jobs-in-flight quota, the server's
default strategy, and enqueueing after the commit (a worker never looks for a row it
cannot see).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import ApiState
from app.api.errors import EnqueueFailed, Forbidden
from app.api.inputs import ID_PATTERN, bounded_datetime
from app.api.limits import apply_budget
from app.api.schemas import JobCreate, JobStatusName, ReplayCreate
from core import jobs
from core.budget import BudgetSpec
from core.cancel import request_cancel
from core.db import repo
from core.db.models import Job, JobStatus
from core.errors import InvalidInput, NotFound
from core.keys import TENANT_PATTERN, Principal
from strategies.registry import STRATEGIES

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ALL_TENANTS = "*"
"""``GET /v1/jobs?tenant=*``: an admin's listing over every tenant."""


def strategy_spec(strategy: dict[str, Any] | str | None, default: str) -> dict[str, Any]:
    if strategy is None:
        return {"kind": default}
    if isinstance(strategy, str):
        return {"kind": strategy}
    return dict(strategy)


async def get_job(session: AsyncSession, tenant: str, job_id: str) -> Job:
    job = await repo.get_job_for_tenant(session, job_id, tenant)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


MAX_WAIT_S = 60.0
"""The longest ``GET /v1/jobs/{id}?wait=`` holds a request (a proxy's idle timeout)."""


async def wait_for_job(state: ApiState, tenant: str, job_id: str, wait_s: float) -> Job:
    """The job once it is final, or as it is when ``wait_s`` runs out: a long poll.

    Woken by the commits that write the job's trace and its outcome (``core.live``:
    ``pg_notify``), so a client learns of the end a few milliseconds after it commits,
    without polling; the database stays the source of truth (each wake re-reads the
    row). Without push (SQLite, or the listener reconnecting) the row is re-read with a
    growing interval, as the event stream does.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait_s, MAX_WAIT_S)
    live = state.live
    subscription = live.subscribe(job_id) if live is not None else contextlib.nullcontext()
    delay = 0.02
    with subscription as woken:
        while True:
            if woken is not None:
                woken.clear()  # before the read: a commit during it wakes the next wait
            async with state.sessions() as session:
                job = await get_job(session, tenant, job_id)
            left = deadline - loop.time()
            if job.status in JobStatus.FINAL or left <= 0:
                return job
            if live is not None and woken is not None and live.pushing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(left, state.api.sse_poll_max_s))
            else:
                await asyncio.sleep(min(left, delay))
                delay = min(delay * 1.5, state.api.sse_poll_max_s)


async def _enqueue(state: ApiState, job: Job) -> None:
    job_id = job.id
    max_seconds = (job.budget or {}).get("max_seconds")
    try:
        await state.executor.submit(job_id, priority=job.priority, max_seconds=max_seconds)
    except Exception as exc:
        log.exception("job %s committed but not enqueued", job_id)
        raise EnqueueFailed(
            f"job {job_id} was saved but could not be queued ({type(exc).__name__}); retry later",
            job_id=job_id,
        ) from exc


async def submit(
    state: ApiState,
    tenant: str,
    body: JobCreate,
    idempotency_key: str | None,
    *,
    fresh_key: bool = False,
) -> tuple[Job, bool]:
    """Validate, store and enqueue a job. Returns ``(job, created)``: with a known
    ``Idempotency-Key`` and the same request, the earlier job and False. ``fresh_key``:
    the caller minted the key just now (``core.jobs.submit``)."""

    def limit_budget(budget: BudgetSpec) -> BudgetSpec:
        return apply_budget(state.api, tenant, budget)

    async def admit(session: AsyncSession) -> None:
        await state.in_flight.check(state.api, session, tenant)

    submitted = await jobs.submit(
        state.sessions,
        state.pools,
        question=body.question,
        messages=body.messages,
        tools=body.tools,
        tool_choice=body.tool_choice,
        response_format=body.response_format,
        answer_kind=body.answer_kind,
        stream=body.stream,
        tool_names=state.settings.tool_names(),
        strategy=strategy_spec(body.strategy, state.settings.default_strategy),
        budget=body.budget,
        roles=body.roles,
        seed=body.seed,
        tenant=tenant,
        idempotency_key=idempotency_key,
        priority=body.priority,
        limit_budget=limit_budget,
        admit=admit,
        key_field="Idempotency-Key",
        fresh_key=fresh_key,
    )
    job = submitted.job
    if submitted.created:
        # The one line per job on the API's side: with the request id and tenant bound,
        # it ties the client's request to the job's lines in the workers.
        kind = job.strategy.get("kind")
        log.info("job %s accepted: %s, priority %s", job.id, kind, job.priority,
                 extra={"job_id": job.id})  # fmt: skip
        await _enqueue(state, job)
    elif job.status == "queued" and not submitted.concurrent:
        # A retry of a request whose job is still queued publishes it again: its first
        # publish may have failed (the client got a 503 enqueue_failed and retried). Two
        # messages for one job are harmless: the job's lease lets one run start, and a
        # worker skips a job that is running or finished.
        await _enqueue(state, job)
    return job, submitted.created


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, job_id = base64.urlsafe_b64decode(padded).decode().split("|", 1)
        when = datetime.fromisoformat(created)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("cursor is not one this API returned", field="cursor") from None
    if when.tzinfo is None or not re.fullmatch(ID_PATTERN, job_id):
        raise InvalidInput("cursor is not one this API returned", field="cursor")
    return when, job_id


def _range(low: float | None, high: float | None, field: str) -> None:
    if low is not None and high is not None and low > high:
        raise InvalidInput(f"{field} must not be below its minimum", field=field)


def _text_filter(value: str | None, field: str) -> str | None:
    # Control characters never occur in what is searched, and PostgreSQL refuses NUL.
    if value is not None and any(ord(c) < 32 for c in value):
        raise InvalidInput(f"{field} must not contain control characters", field=field)
    return value


def listing_tenant(principal: Principal, tenant: str | None) -> str | None:
    """Whose jobs a listing shows: the key's tenant; an admin may name another tenant,
    or ``*`` for every tenant (None)."""
    if tenant is None or tenant == principal.tenant:
        return principal.tenant
    if not principal.admin:
        raise Forbidden(
            "only an admin key may list another tenant's jobs; omit `tenant` to list this key's",
            field="tenant",
        )
    if tenant == ALL_TENANTS:
        return None
    if not TENANT_PATTERN.fullmatch(tenant):
        raise InvalidInput(
            "tenant must be a tenant name (letters, digits, `_.-`) or `*`", field="tenant"
        )
    return tenant


async def list_jobs(
    session: AsyncSession,
    principal: Principal,
    *,
    limit: int,
    tenant: str | None = None,
    status: JobStatusName | None = None,
    strategy: str | None = None,
    model: str | None = None,
    q: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    min_cost: float | None = None,
    max_cost: float | None = None,
    min_latency_ms: float | None = None,
    max_latency_ms: float | None = None,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    if strategy is not None and strategy not in STRATEGIES:
        valid = sorted(STRATEGIES)
        raise InvalidInput(
            f"unknown strategy {strategy!r}; valid strategies: {', '.join(valid)}",
            field="strategy",
            valid=valid,
        )
    owner = listing_tenant(principal, tenant)
    created_after = bounded_datetime(created_after, "created_after")  # no zone means UTC
    created_before = bounded_datetime(created_before, "created_before")
    if created_after and created_before and created_after >= created_before:
        raise InvalidInput("created_before must be after created_after", field="created_before")
    _range(min_cost, max_cost, "max_cost")
    _range(min_latency_ms, max_latency_ms, "max_latency_ms")
    filters = repo.JobFilters(
        status=status,
        strategy=strategy,
        model=_text_filter(model, "model"),
        q=_text_filter(q.strip() if q else None, "q") or None,
        created_after=created_after,
        created_before=created_before,
        min_cost=min_cost,
        max_cost=max_cost,
        min_latency_ms=min_latency_ms,
        max_latency_ms=max_latency_ms,
    )
    before = decode_cursor(cursor) if cursor else None
    # One extra row tells whether another page exists without a COUNT.
    rows = list(
        await repo.list_jobs(session, owner, limit=limit + 1, filters=filters, before=before)
    )
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]) if len(rows) > limit and page else None
    return page, next_cursor


async def replay(state: ApiState, tenant: str, parent_id: str, body: ReplayCreate) -> Job:
    async with state.sessions() as session:
        await get_job(session, tenant, parent_id)
    child_id = await jobs.create_replay(
        state.sessions,
        state.pools,
        parent_id,
        mode=body.mode,
        fork_from=body.fork_from,
        strategy_overrides=body.strategy,
        roles=body.roles,
        priority=body.priority,
        tool_result=body.tool_result.model_dump() if body.tool_result else None,
    )
    async with state.sessions() as session:
        child = await get_job(session, tenant, child_id)
    await _enqueue(state, child)
    return child


async def cancel(state: ApiState, tenant: str, job_id: str) -> Job:
    """Flag the job; a queued one is cancelled now, a running one by its worker shortly
    (``core.cancel``). Cancelling a finished job changes nothing and is not an error."""
    await request_cancel(state.sessions, job_id, tenant=tenant)
    async with state.sessions() as session:
        return await get_job(session, tenant, job_id)
