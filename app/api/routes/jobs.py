"""/v1/jobs: submit, list, get, cancel, replay."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response, status

from app.api.deps import Session, State, Tenant, get_principal
from app.api.inputs import Id, IsoDatetime
from app.api.schemas import JobCreate, JobOut, JobPage, JobStatusName, ReplayCreate
from app.api.services import jobs
from core.keys import Principal

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "A retry with a known Idempotency-Key."},
        409: {"description": "The Idempotency-Key was used for a different request."},
        413: {"description": "The body is over the size limit."},
        422: {"description": "Bad input; `error.field` names the field."},
    },
)
async def submit_job(
    body: JobCreate,
    state: State,
    tenant: Tenant,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JobOut:
    """Queue a reasoning job; poll it, or follow `links.events`."""
    job, created = await jobs.submit(state, tenant, body, idempotency_key)
    if not created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.of(job)


Money = Annotated[float | None, Query(ge=0, allow_inf_nan=False)]
Millis = Annotated[float | None, Query(ge=0, allow_inf_nan=False)]


@router.get("", response_model=JobPage)
async def list_jobs(
    session: Session,
    state: State,
    principal: Annotated[Principal, Depends(get_principal)],
    status: JobStatusName | None = None,
    strategy: str | None = None,
    model: Annotated[str | None, Query(max_length=200)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    tenant: Annotated[str | None, Query(max_length=64)] = None,
    created_after: IsoDatetime | None = None,
    created_before: IsoDatetime | None = None,
    min_cost: Money = None,
    max_cost: Money = None,
    min_latency_ms: Millis = None,
    max_latency_ms: Millis = None,
    cursor: str | None = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> JobPage:
    """Newest first; follow `next_cursor` for older pages. Every filter applies to all
    the tenant's jobs, in the database: `q` matches the question, the answer or the id."""
    size = min(limit or state.api.page_size, state.api.max_page_size)
    page, next_cursor = await jobs.list_jobs(
        session,
        principal,
        limit=size,
        tenant=tenant,
        status=status,
        strategy=strategy,
        model=model,
        q=q,
        created_after=created_after,
        created_before=created_before,
        min_cost=min_cost,
        max_cost=max_cost,
        min_latency_ms=min_latency_ms,
        max_latency_ms=max_latency_ms,
        cursor=cursor,
    )
    return JobPage(items=[JobOut.of(j) for j in page], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut)
async def get_job(
    job_id: Id,
    session: Session,
    state: State,
    tenant: Tenant,
    wait: Annotated[
        float | None,
        Query(
            ge=0,
            le=jobs.MAX_WAIT_S,
            description="Long poll: answer once the job is final, or after this many "
            "seconds with the job as it is then (pushed on PostgreSQL: the answer follows "
            "the finishing commit by milliseconds).",
        ),
    ] = None,
) -> JobOut:
    if wait:
        return JobOut.of(await jobs.wait_for_job(state, tenant, job_id, wait))
    return JobOut.of(await jobs.get_job(session, tenant, job_id))


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
async def cancel_job(job_id: Id, state: State, tenant: Tenant) -> JobOut:
    """Ask a queued or running job to stop; it ends `cancelled` with its partial trace."""
    return JobOut.of(await jobs.cancel(state, tenant, job_id))


@router.post("/{job_id}/replay", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
async def replay_job(
    job_id: Id, state: State, tenant: Tenant, body: ReplayCreate | None = None
) -> JobOut:
    """A child job seeded with this job's journal: `strict` reproduces it with zero model
    calls; `live` with `fork_from` and overrides explores what-ifs."""
    return JobOut.of(await jobs.replay(state, tenant, job_id, body or ReplayCreate()))
