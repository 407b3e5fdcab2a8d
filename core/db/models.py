"""SQL schema: jobs, their spans (the trace), the journal of model calls, API keys.

Every table is written by one owner: the runner writes jobs/spans/model_calls, the
API (later) writes jobs and api_keys. Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONType, list[Any]: JSONType}


class JobStatus:
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64), default="default", index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED, index=True)
    question: Mapped[str] = mapped_column(Text)
    strategy: Mapped[dict[str, Any]] = mapped_column(JSONType)
    """The validated strategy spec, ``{"kind": ..., **params}``."""
    budget: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    roles: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    """Role overrides for this job: strategy role -> configured pool name."""
    seed: Mapped[int] = mapped_column(BigInteger, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    parent_job_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True, index=True
    )
    fork_point: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """For a fork: how many of the parent's journal entries the child was seeded with."""
    replay_mode: Mapped[str | None] = mapped_column(String(8), nullable=True)
    """``strict`` (a journal miss fails the job) or ``live`` (a miss calls the model)."""
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)

    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency"),
        Index("ix_jobs_tenant_created", "tenant", "created_at"),
    )


class Span(Base):
    """One node of a job's trace: the job, a strategy, a model call, or a decision event."""

    __tablename__ = "spans"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    parent_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    seq: Mapped[int] = mapped_column(Integer)
    """Order of opening within the job: the trace's stable order."""
    kind: Mapped[str] = mapped_column(String(16))
    """``job`` | ``strategy`` | ``span`` | ``model_call`` | ``event``."""
    name: Mapped[str] = mapped_column(String(128))
    start_ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    end_ts: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)

    __table_args__ = (UniqueConstraint("job_id", "seq", name="uq_spans_job_seq"),)


class ModelCall(Base):
    """The journal: one row per logical model call, recorded before the strategy sees it."""

    __tablename__ = "model_calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    seq: Mapped[int] = mapped_column(Integer)
    """Order of recording within the job (a fork point counts these)."""
    key: Mapped[str] = mapped_column(String(64))
    occurrence: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(64))
    request: Mapped[dict[str, Any]] = mapped_column(JSONType)
    response: Mapped[dict[str, Any]] = mapped_column(JSONType)
    """``{"model", "choices": [...], "usage": {...}, "emulated_n": bool}``."""
    endpoint: Mapped[str | None] = mapped_column(String(256), nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    source_job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """Set when this entry was copied from a parent job's journal (replay, fork)."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        UniqueConstraint("job_id", "key", "occurrence", name="uq_model_calls_key"),
        UniqueConstraint("job_id", "seq", name="uq_model_calls_seq"),
    )


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
