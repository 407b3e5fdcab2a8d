"""The dashboard's reads: a job's spans without the journal, and one call's texts."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncSession

from app.api.schemas import JobOut
from app.api.services.jobs import get_job
from app.dashboard import repository
from app.dashboard.schemas import CallTextOut, ChoiceOut, SpansOut, TokenOut
from core.db.models import Job, JobStatus, ModelCall
from core.errors import NotFound
from core.events import Event, SpanRow, event_from_span, public_attempts, public_endpoint

MAX_TOKENS_SHOWN = 4096
"""Per choice: enough to read any answer's logprobs, small enough for one response."""


def trace_etag(job: Job) -> str | None:
    """A validator for a finished job's spans, from the job row alone: once a job is
    final its spans never change (a re-run resets the status first and bumps
    ``attempts``), so a browser that has them revalidates with one cheap query."""
    if job.status not in JobStatus.FINAL or job.finished_at is None:
        return None
    return f'W/"{job.id}.{job.attempts}.{job.finished_at.timestamp():.6f}"'


async def spans(session: AsyncSession, job: Job) -> SpansOut:
    rows = await repository.list_span_rows(session, job.id)
    # A row has the span's columns as attributes: what event_from_span reads.
    events: list[Event] = [event_from_span(cast(SpanRow, row)) for row in rows]
    return SpansOut(job=JobOut.of(job), events=events)


def _choice(raw: dict[str, Any]) -> ChoiceOut:
    tokens = raw.get("tokens")
    shown: list[TokenOut] | None = None
    if isinstance(tokens, list):
        shown = [
            TokenOut(
                token=str(t.get("token", "")),
                logprob=float(t.get("logprob", 0.0)),
                top=[(str(alt[0]), float(alt[1])) for alt in t.get("top") or []],
            )
            for t in tokens[:MAX_TOKENS_SHOWN]
        ]
    return ChoiceOut(
        index=int(raw.get("index", 0)),
        text=str(raw.get("text", "")),
        finish_reason=raw.get("finish_reason"),
        tokens=shown,
        tokens_truncated=isinstance(tokens, list) and len(tokens) > MAX_TOKENS_SHOWN,
    )


async def call_text(session: AsyncSession, tenant: str, job_id: str, span_id: str) -> CallTextOut:
    """The journal entry behind one model-call span.

    A span keeps the key's first 16 hex digits; the entry is the one with that key whose
    occurrence is the number of identical calls the job issued before this one (the
    journal counts occurrences in issue order, which is span order).
    """
    await get_job(session, tenant, job_id)
    span = await repository.get_span(session, job_id, span_id)
    if span is None or span.kind != "model_call":
        raise NotFound(f"model call {span_id} not found in job {job_id}")
    short_key = str((span.attributes or {}).get("key") or "")
    entry: ModelCall | None = None
    if short_key:
        occurrence = await repository.count_earlier_calls_with_key(
            session, job_id, short_key, span.seq
        )
        entry = await repository.find_call(session, job_id, short_key, occurrence)
    if entry is None:
        # A call that failed before any server answered has no journal entry.
        raise NotFound(f"model call {span_id} has no journal entry (it did not complete)")
    response = entry.response or {}
    return CallTextOut(
        span_id=span.id,
        seq=span.seq,
        role=entry.role,
        key=entry.key,
        occurrence=entry.occurrence,
        journal_seq=entry.seq,
        fork_from=await repository.count_calls_before(session, job_id, entry.seq),
        copied_from=entry.source_job_id,
        endpoint=public_endpoint(entry.endpoint),
        latency_ms=entry.latency_ms,
        attempts=public_attempts(list(entry.attempts or [])),
        request=dict(entry.request or {}),
        choices=[_choice(c) for c in response.get("choices", []) if isinstance(c, dict)],
    )
