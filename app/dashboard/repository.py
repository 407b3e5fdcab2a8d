"""SQL for the dashboard's own reads. Functions take a session and never commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.db.models import ModelCall, Span


async def get_span(session: AsyncSession, job_id: str, span_id: str) -> Span | None:
    rows = await session.execute(select(Span).where(Span.job_id == job_id, Span.id == span_id))
    return rows.scalars().first()


async def list_span_rows(session: AsyncSession, job_id: str) -> Sequence[Row[Any]]:
    """A job's spans as plain rows, in seq order. Read-only and possibly thousands: plain
    rows skip the ORM's identity map and change tracking (about half the cost)."""
    columns = Span.__table__.c
    rows = await session.execute(
        select(*columns).where(columns.job_id == job_id).order_by(columns.seq)
    )
    return rows.all()


async def count_earlier_calls_with_key(
    session: AsyncSession, job_id: str, short_key: str, before_seq: int
) -> int:
    """How many model-call spans with this (16-digit) key the job issued before
    ``before_seq``: the call's occurrence index in the journal."""
    value = await session.scalar(
        select(func.count())
        .select_from(Span)
        .where(
            Span.job_id == job_id,
            Span.kind == "model_call",
            Span.seq < before_seq,
            Span.attributes["key"].as_string() == short_key,
        )
    )
    return int(value or 0)


async def find_call(
    session: AsyncSession, job_id: str, short_key: str, occurrence: int
) -> ModelCall | None:
    rows = await session.execute(
        select(ModelCall).where(
            ModelCall.job_id == job_id,
            ModelCall.key.startswith(short_key, autoescape=True),
            ModelCall.occurrence == occurrence,
        )
    )
    return rows.scalars().first()


async def count_calls_before(session: AsyncSession, job_id: str, seq: int) -> int:
    """Journal entries recorded before the one with ``seq``: a fork point that keeps
    exactly those and runs this call again."""
    value = await session.scalar(
        select(func.count())
        .select_from(ModelCall)
        .where(ModelCall.job_id == job_id, ModelCall.seq < seq)
    )
    return int(value or 0)
