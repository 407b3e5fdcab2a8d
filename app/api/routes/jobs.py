"""/v1/jobs: submit, list, get, cancel, replay."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from app.api.deps import Session, State, Tenant
from app.api.inputs import Id, IsoDatetime
from app.api.schemas import JobCreate, JobOut, JobPage, JobStatusName, ReplayCreate
from app.api.services import jobs

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


@router.get("", response_model=JobPage)
async def list_jobs(
    session: Session,
    state: State,
    tenant: Tenant,
    status: JobStatusName | None = None,
    strategy: str | None = None,
    created_after: IsoDatetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> JobPage:
    """Newest first; follow `next_cursor` for older pages."""
    size = min(limit or state.api.page_size, state.api.max_page_size)
    page, next_cursor = await jobs.list_jobs(
        session,
        tenant,
        limit=size,
        status=status,
        strategy=strategy,
        created_after=created_after,
        cursor=cursor,
    )
    return JobPage(items=[JobOut.of(j) for j in page], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: Id, session: Session, tenant: Tenant) -> JobOut:
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
