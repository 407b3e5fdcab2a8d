"""SQL schema: jobs, their spans (the trace), the journal of model calls, API keys.

Every table is written by one owner: the runner writes jobs/spans/model_calls, the
API (later) writes jobs and api_keys. Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")

# Every constraint and index gets a deterministic name, so migrations can drop or alter
# them by name on both backends (SQLite batch mode cannot address an unnamed constraint;
# PostgreSQL would otherwise invent its own names).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that is timezone-aware UTC on every backend.

    SQLite has no time zone type: SQLAlchemy stores the wall-clock text and reads back
    naive values, so the same code would compare aware with naive datetimes on SQLite
    only. Values are converted to UTC on the way in (so SQLite's text sorts in time
    order) and marked UTC on the way out. A naive datetime is refused rather than
    guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: Ponder stores timezone-aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSONType, list[Any]: JSONType}


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
    """The question, or the text of a conversation's last user turn (for lists)."""
    conversation: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    """``strategies.protocol.Conversation`` as JSON: messages, tools, tool choice,
    response format and answer kind. None for a bare question asking for a number."""
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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    parent_job_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True, index=True
    )
    fork_point: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """For a fork: how many of the parent's journal entries the child was seeded with."""
    replay_mode: Mapped[str | None] = mapped_column(String(8), nullable=True)
    """``strict`` (a journal miss fails the job) or ``live`` (a miss calls the model)."""
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """SHA-256 of the submitted request, so a reused ``Idempotency-Key`` with a different
    body is told apart from a retry of the same one."""
    # Job control (revision 0002): which queue, who runs the job, is it alive, stop it?
    priority: Mapped[str] = mapped_column(String(8), default="default", server_default="default")
    """``high`` | ``default`` | ``low``: the queue a worker takes the job from."""
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """The worker process holding the job's lease (``host:pid:nonce``); kept after the end."""
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    """Stamped every few seconds by the worker running the job; the reaper reads it."""
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    """Set by a cancel request: a queued job is cancelled at once, a running one by its
    worker within ``worker.cancel_poll_s``."""
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    """When the reaper last published the job again (None: only the submitter's enqueue)."""

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
    start_ts: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    end_ts: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)

    __table_args__ = (UniqueConstraint("job_id", "seq", name="uq_spans_job_seq"),)


class ModelCall(Base):
    """The journal: one row per logical model or tool call, committed no later than
    anything built on it (``core.trace``)."""

    __tablename__ = "model_calls"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("job_id", "key", "occurrence", name="uq_model_calls_key"),
        UniqueConstraint("job_id", "seq", name="uq_model_calls_seq"),
    )


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    scope: Mapped[str] = mapped_column(String(16), default="tenant", server_default="tenant")
    """``tenant``: the tenant's own jobs; ``admin``: also the operator's views (pools)."""


class Preset(Base):
    """A named strategy spec a tenant runs by name (``{"preset": "name"}`` in a job's
    strategy, ``ponder/<name>`` as an OpenAI model). ``ponder calibrate`` writes them,
    with ``source`` saying which data fitted which parameter."""

    __tablename__ = "presets"
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_presets_tenant_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    description: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    # Not a column: True on the presets Ponder ships (``core.presets.shipped_presets``),
    # which every tenant sees and which are never stored.
    shipped = False


class BreakerEvent(Base):
    """A circuit breaker of some process opened or closed on a model endpoint. Workers
    write them, so ``/v1/pools`` and ``/metrics`` show what workers see, not only the API
    process's own breakers."""

    __tablename__ = "breaker_events"
    __table_args__ = (Index("ix_breaker_events_role_url_at", "role", "url", "at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    role: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(512))
    worker: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=False)


class Experiment(Base):
    """One ``ponder eval`` run (or a replay of one) stored as data: its dataset, its arms
    (``ExperimentArm``), one row per (arm, problem) (``ExperimentRow``) and a summary
    per arm computed from those rows by ``evals``. A replay points at its parent."""

    __tablename__ = "experiments"
    __table_args__ = (Index("ix_experiments_tenant_created", "tenant", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    name: Mapped[str] = mapped_column(String(256))
    dataset_name: Mapped[str] = mapped_column(Text, default="")
    dataset_sha256: Mapped[str] = mapped_column(String(64), default="")
    problems: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    parent_experiment_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("experiments.id", ondelete="SET NULL"), nullable=True
    )
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    """How it ran: backend, budget and its rule, seed, concurrency."""
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    """A replay's what-if: ``{"pairs": [[key, value]...], "by_arm": {label: changes}}``."""
    summary: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    """``{"arms": [evals Summary as JSON...], "calls": {...}, "interrupted": bool}``."""


class ExperimentArm(Base):
    __tablename__ = "experiment_arms"

    experiment_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(Text)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    """As the user wrote it; ``params`` is the validated spec with defaults filled in."""
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    roles: Mapped[list[Any]] = mapped_column(JSONType, default=list)


class ExperimentRow(Base):
    """One problem under one arm: the job that answered it and what it spent. ``data``
    keeps the rest of the eval's row (answer, expected, tokens by role, error, ...)."""

    __tablename__ = "experiment_rows"

    experiment_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    arm: Mapped[int] = mapped_column(Integer, primary_key=True)
    """The arm's ``position``."""
    problem_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    problem_id: Mapped[str] = mapped_column(String(256))
    job_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True, index=True
    )
    status: Mapped[str] = mapped_column(String(16))
    correct: Mapped[bool] = mapped_column(Boolean)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    """Completion (generated) tokens, all roles."""
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    difficulty: Mapped[float | None] = mapped_column(Float, nullable=True)
    """A per-problem difficulty signal (the small model's agreement, first-token
    entropy), when the eval recorded one."""
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
