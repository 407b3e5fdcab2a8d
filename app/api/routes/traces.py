"""/v1/jobs/{id}/trace, /events (SSE) and /v1/jobs/{a}/diff/{b}."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse

from app.api.deps import Session, State, Tenant
from app.api.inputs import Id
from app.api.schemas import DiffOut, TraceOut
from app.api.services import jobs, traces
from app.api.sse import HEADERS, job_events, parse_last_event_id

router = APIRouter(prefix="/v1/jobs", tags=["traces"])


@router.get("/{job_id}/trace", response_model=TraceOut)
async def get_trace(job_id: Id, session: Session, tenant: Tenant) -> TraceOut:
    """Every span as a typed event, in seq order, and the journal's summary."""
    return await traces.trace(session, tenant, job_id)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "SSE stream."}},
)
async def stream_events(
    job_id: Id,
    session: Session,
    state: State,
    tenant: Tenant,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Past events first, then the live tail until the job ends (`job_finished`).
    Reconnect with `Last-Event-ID` to resume after the last event received."""
    # Checked before the stream starts, so another tenant's job is a plain 404.
    await jobs.get_job(session, tenant, job_id)
    events = job_events(
        state.sessions,
        job_id,
        after=parse_last_event_id(last_event_id),
        poll_min_s=state.api.sse_poll_min_s,
        poll_max_s=state.api.sse_poll_max_s,
        live=state.live,
    )
    return StreamingResponse(events, media_type="text/event-stream", headers=HEADERS)


@router.get("/{a}/diff/{b}", response_model=DiffOut)
async def diff_jobs(a: Id, b: Id, session: Session, tenant: Tenant) -> DiffOut:
    """Call-by-call comparison: the first divergent call and what differs; deltas b - a."""
    return await traces.diff(session, tenant, a, b)
